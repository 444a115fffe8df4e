//! The protocol between the device (ioreqd's worker) and the renderer
//! process (`gpu-hostmem-renderer`), and the device's side of it.
//!
//! One connected `SOCK_SEQPACKET` socket; the device sends one request and
//! waits for its reply (one message each, fixed sizes, little endian):
//!
//! ```text
//! request (56 bytes, then data)         reply (32 bytes, then data)
//!  0 u32 magic "GHRP"                     0 u32 magic "GHRP"
//!  4 u16 version (5)                      4 u16 version (5)
//!  6 u16 op                               6 u16 op (the request's)
//!  8 u32 ctx_id                           8 i32 errno (0: done)
//! 12 u32 capset                          12 u32 map_info (MAP_BLOB),
//!                                               max_version (CAPSET_INFO)
//! 16 u32 resource_id, ring (CREATE_FENCE) 16 u64 handle (CREATE_BLOB),
//!                                               max_size (CAPSET_INFO),
//!                                               bytes of data (GET_CAPSET)
//! 20 u32 0                               24 u64 seq (the request's)
//! 24 u64 handle, generation (CREATE_FENCE) 32 .. data (GET_CAPSET only)
//! 32 u64 blob_id
//! 40 u64 size (CREATE_BLOB), window offset (MAP_BLOB),
//!        version (GET_CAPSET), bytes of data (SUBMIT) or fence id
//!        (CREATE_FENCE)
//! 48 u64 seq
//! 56 .. data (SUBMIT only)
//! ```
//!
//! SUBMIT (version 4) carries a context's command stream
//! (`VIRTIO_GPU_CMD_SUBMIT_3D`) after the request: whole dwords, at most
//! [`MAX_SUBMIT_LEN`] bytes, exactly `arg` of them; the only request with
//! data. The reply says the renderer ran (venus: queued) it.
//!
//! CREATE_FENCE (version 5) asks for a fence on a context's ring after the
//! streams submitted before it: `ctx_id`, `capset`, the ring in
//! `resource_id` (below [`crate::fence::MAX_RINGS`]), the fence id in
//! `arg`, the device's reset generation in `handle`. The reply says the
//! fence exists, not that it retired. Retirement comes later as an
//! **event**, the one message the renderer sends unasked:
//!
//! ```text
//! event (32 bytes)
//!  0 u32 magic "GHRE"
//!  4 u16 version (5)
//!  6 u16 kind (1: fence retired)
//!  8 u32 ctx_id
//! 12 u32 ring_idx
//! 16 u64 fence_id (every fence of that ring up to it)
//! 24 u64 generation (the request's `handle`)
//! ```
//!
//! Events share the socket with replies (one socket, so the supervisor,
//! the renderer's fds and the worker's filter stay as they are) and are
//! told apart by their magic: while the device waits for a reply it takes
//! the events that come before it and keeps them (at most
//! [`MAX_PENDING_EVENTS`]: more is a flood, not the protocol); between
//! requests it reads them without waiting ([`SocketRenderer`]'s
//! `poll_events`, at most [`MAX_EVENTS_PER_POLL`] at a time, so a flood
//! cannot keep the worker in one call). Replies still come one per
//! request, in order. The renderer sends a fence's event only after the
//! reply to its CREATE_FENCE, so the device never sees a retirement of a
//! fence it has not asked for, except from a renderer that lies, whose
//! events the device checks and drops ([`crate::fence`]).
//!
//! CAPSET_INFO asks the renderer's backend about `capset` (an unknown
//! capset is EINVAL). GET_CAPSET (version 3) asks for its data at a
//! version: the only reply with data, exactly as many bytes as
//! CAPSET_INFO's `max_size` said, and `handle` says how many; the device
//! receives at most that many (and never more than [`MAX_CAPSET_SIZE`]),
//! so a longer, shorter or mislabelled answer is not the protocol. The
//! first request is HELLO: a renderer that does not speak `version`
//! answers EPROTONOSUPPORT. A reply that is not the protocol, or none
//! within the timeout, breaks the connection for good: every later request
//! fails, and the device answers the guest with errors (the renderer's
//! exit revokes everything it registered).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tracing::warn;

use crate::renderer::{BlobHandle, BlobRequest, FenceRetired, MapCache, Renderer, RendererError};

/// "GHRP", little endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"GHRP");
/// "GHRE", little endian: an event.
pub const EVENT_MAGIC: u32 = u32::from_le_bytes(*b"GHRE");
/// The protocol version this side speaks.
pub const VERSION: u16 = 5;
/// Bytes of an event.
pub const EVENT_LEN: usize = 32;
/// The one kind of event: a fence retired.
pub const EVENT_FENCE_RETIRED: u16 = 1;
/// Most events the device keeps while it waits for one reply. The
/// renderer blocks when the socket is full, so what can come before a
/// reply is what the socket holds (a few hundred messages); more is a
/// renderer that is not speaking the protocol.
pub const MAX_PENDING_EVENTS: usize = 8192;
/// Most events the device reads in one `poll_events` (the rest stay in
/// the socket, which stays readable, for the next).
pub const MAX_EVENTS_PER_POLL: usize = 1024;
/// Bytes of a request.
pub const REQUEST_LEN: usize = 56;
/// Bytes of a reply without data (every reply but GET_CAPSET's).
pub const REPLY_LEN: usize = 32;
/// Most bytes of capset data either side accepts (venus's is 160 bytes,
/// virgl's `struct virgl_caps_v2` under 2 KiB).
pub const MAX_CAPSET_SIZE: u32 = 16 << 10;
/// Most bytes of one SUBMIT's command stream. One message carries a
/// request and its data, and a `SOCK_SEQPACKET` message must fit the
/// socket's send buffer (Linux's default, `net.core.wmem_default`, is
/// 208 KiB); venus sends its bulk through a ring in a blob, so its
/// submissions are small.
pub const MAX_SUBMIT_LEN: usize = 128 << 10;

/// True for a command stream SUBMIT may carry: whole dwords, 1 to
/// [`MAX_SUBMIT_LEN`] bytes (both ends check it).
pub fn is_submittable(cmds: &[u8]) -> bool {
    !cmds.is_empty() && cmds.len() % 4 == 0 && cmds.len() <= MAX_SUBMIT_LEN
}

/// Operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Version check; first on a connection.
    Hello = 1,
    /// [`Renderer::create_context`].
    CreateContext = 2,
    /// [`Renderer::destroy_context`].
    DestroyContext = 3,
    /// [`Renderer::create_blob`].
    CreateBlob = 4,
    /// [`Renderer::map_blob`].
    MapBlob = 5,
    /// [`Renderer::unmap_blob`].
    UnmapBlob = 6,
    /// [`Renderer::destroy_blob`].
    DestroyBlob = 7,
    /// [`SocketRenderer::capset_info`].
    CapsetInfo = 8,
    /// [`Renderer::capset`]: the reply carries data.
    GetCapset = 9,
    /// [`Renderer::submit`]: the request carries data.
    Submit = 10,
    /// [`Renderer::create_fence`] (version 5).
    CreateFence = 11,
}

impl Op {
    /// From its number.
    pub fn from_u16(v: u16) -> Option<Op> {
        Some(match v {
            1 => Op::Hello,
            2 => Op::CreateContext,
            3 => Op::DestroyContext,
            4 => Op::CreateBlob,
            5 => Op::MapBlob,
            6 => Op::UnmapBlob,
            7 => Op::DestroyBlob,
            8 => Op::CapsetInfo,
            9 => Op::GetCapset,
            10 => Op::Submit,
            11 => Op::CreateFence,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::CreateContext => "create_context",
            Op::DestroyContext => "destroy_context",
            Op::CreateBlob => "create_blob",
            Op::MapBlob => "map_blob",
            Op::UnmapBlob => "unmap_blob",
            Op::DestroyBlob => "destroy_blob",
            Op::CapsetInfo => "capset_info",
            Op::GetCapset => "get_capset",
            Op::Submit => "submit",
            Op::CreateFence => "create_fence",
        }
    }
}

/// A request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Version the sender speaks.
    pub version: u16,
    /// What to do.
    pub op: Op,
    /// Context.
    pub ctx_id: u32,
    /// Capset of the context.
    pub capset: u32,
    /// The guest's resource id.
    pub resource_id: u32,
    /// A blob handle the renderer gave.
    pub handle: u64,
    /// What the context says the blob is.
    pub blob_id: u64,
    /// Size (CREATE_BLOB), window offset (MAP_BLOB), version
    /// (GET_CAPSET) or bytes of data (SUBMIT).
    pub arg: u64,
    /// Sequence number, echoed.
    pub seq: u64,
}

/// Why bytes are not a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Wrong length.
    #[error("message of {0} bytes")]
    Length(usize),
    /// Not our magic.
    #[error("bad magic {0:#x}")]
    Magic(u32),
    /// Unknown operation.
    #[error("unknown op {0}")]
    Op(u16),
    /// An event of another version or an unknown kind.
    #[error("event of version {version}, kind {kind}")]
    Event {
        /// Its version.
        version: u16,
        /// Its kind.
        kind: u16,
    },
    /// A message's data is not as long as it says.
    #[error("message says {said} bytes of data and carries {got}")]
    DataLength {
        /// What `handle` said.
        said: u64,
        /// What came.
        got: usize,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl Request {
    /// A request of this build's version for `op`, numbered `seq`, every
    /// other field 0.
    pub fn new(op: Op, seq: u64) -> Self {
        Request {
            version: VERSION,
            op,
            ctx_id: 0,
            capset: 0,
            resource_id: 0,
            handle: 0,
            blob_id: 0,
            arg: 0,
            seq,
        }
    }

    /// The wire form.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&(self.op as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.ctx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.capset.to_le_bytes());
        b[16..20].copy_from_slice(&self.resource_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.handle.to_le_bytes());
        b[32..40].copy_from_slice(&self.blob_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.arg.to_le_bytes());
        b[48..56].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    /// The wire form of a SUBMIT-like request followed by `data`; `arg` is
    /// set to its length.
    pub fn encode_with_data(&self, data: &[u8]) -> Vec<u8> {
        let r = Request {
            arg: data.len() as u64,
            ..*self
        };
        let mut b = r.encode().to_vec();
        b.extend_from_slice(data);
        b
    }

    /// From the wire form of a request and its data: SUBMIT's must be
    /// exactly `arg` bytes, at most [`MAX_SUBMIT_LEN`]; any other request
    /// carries none.
    pub fn decode_with_data(b: &[u8]) -> Result<(Request, &[u8]), DecodeError> {
        if b.len() < REQUEST_LEN {
            return Err(DecodeError::Length(b.len()));
        }
        let (head, data) = b.split_at(REQUEST_LEN);
        let r = Self::decode(head)?;
        let said = if r.op == Op::Submit { r.arg } else { 0 };
        if said != data.len() as u64 || data.len() > MAX_SUBMIT_LEN {
            return Err(DecodeError::DataLength {
                said,
                got: data.len(),
            });
        }
        Ok((r, data))
    }

    /// From the wire form of a request without its data (the version is
    /// not checked here).
    pub fn decode(b: &[u8]) -> Result<Request, DecodeError> {
        if b.len() != REQUEST_LEN {
            return Err(DecodeError::Length(b.len()));
        }
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(DecodeError::Magic(magic));
        }
        let op = u16_at(b, 6);
        Ok(Request {
            version: u16_at(b, 4),
            op: Op::from_u16(op).ok_or(DecodeError::Op(op))?,
            ctx_id: u32_at(b, 8),
            capset: u32_at(b, 12),
            resource_id: u32_at(b, 16),
            handle: u64_at(b, 24),
            blob_id: u64_at(b, 32),
            arg: u64_at(b, 40),
            seq: u64_at(b, 48),
        })
    }
}

/// A reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Version the renderer speaks.
    pub version: u16,
    /// The request's op.
    pub op: Op,
    /// 0, or why not.
    pub errno: i32,
    /// `VIRTIO_GPU_MAP_CACHE_*` for MAP_BLOB.
    pub map_info: u32,
    /// The new blob's handle for CREATE_BLOB, `max_size` for CAPSET_INFO,
    /// the bytes of data after the reply for GET_CAPSET.
    pub handle: u64,
    /// The request's sequence number.
    pub seq: u64,
}

impl Reply {
    /// The wire form.
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&(self.op as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.errno.to_le_bytes());
        b[12..16].copy_from_slice(&self.map_info.to_le_bytes());
        b[16..24].copy_from_slice(&self.handle.to_le_bytes());
        b[24..32].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    /// The wire form of a reply followed by `data` (GET_CAPSET); `handle`
    /// is set to its length.
    pub fn encode_with_data(&self, data: &[u8]) -> Vec<u8> {
        let r = Reply {
            handle: data.len() as u64,
            ..*self
        };
        let mut b = r.encode().to_vec();
        b.extend_from_slice(data);
        b
    }

    /// From the wire form of a reply that carries no data.
    pub fn decode(b: &[u8]) -> Result<Reply, DecodeError> {
        if b.len() != REPLY_LEN {
            return Err(DecodeError::Length(b.len()));
        }
        Self::decode_header(b)
    }

    /// From the wire form of a reply followed by data: the reply and its
    /// data, which must be exactly `handle` bytes (refused otherwise).
    pub fn decode_with_data(b: &[u8]) -> Result<(Reply, &[u8]), DecodeError> {
        if b.len() < REPLY_LEN {
            return Err(DecodeError::Length(b.len()));
        }
        let r = Self::decode_header(b)?;
        let data = &b[REPLY_LEN..];
        if r.handle != data.len() as u64 {
            return Err(DecodeError::DataLength {
                said: r.handle,
                got: data.len(),
            });
        }
        Ok((r, data))
    }

    fn decode_header(b: &[u8]) -> Result<Reply, DecodeError> {
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(DecodeError::Magic(magic));
        }
        let op = u16_at(b, 6);
        Ok(Reply {
            version: u16_at(b, 4),
            op: Op::from_u16(op).ok_or(DecodeError::Op(op))?,
            errno: u32_at(b, 8) as i32,
            map_info: u32_at(b, 12),
            handle: u64_at(b, 16),
            seq: u64_at(b, 24),
        })
    }
}

/// The wire form of a fence-retired event of this build's version.
pub fn encode_event(e: &FenceRetired) -> [u8; EVENT_LEN] {
    let mut b = [0u8; EVENT_LEN];
    b[0..4].copy_from_slice(&EVENT_MAGIC.to_le_bytes());
    b[4..6].copy_from_slice(&VERSION.to_le_bytes());
    b[6..8].copy_from_slice(&EVENT_FENCE_RETIRED.to_le_bytes());
    b[8..12].copy_from_slice(&e.ctx_id.to_le_bytes());
    b[12..16].copy_from_slice(&e.ring_idx.to_le_bytes());
    b[16..24].copy_from_slice(&e.fence_id.to_le_bytes());
    b[24..32].copy_from_slice(&e.generation.to_le_bytes());
    b
}

/// True if `b` starts like an event (its magic), so it is not a reply.
pub fn is_event(b: &[u8]) -> bool {
    b.len() >= 4 && u32_at(b, 0) == EVENT_MAGIC
}

/// From the wire form of an event: exactly [`EVENT_LEN`] bytes, this
/// build's version, a known kind.
pub fn decode_event(b: &[u8]) -> Result<FenceRetired, DecodeError> {
    if b.len() != EVENT_LEN {
        return Err(DecodeError::Length(b.len()));
    }
    let magic = u32_at(b, 0);
    if magic != EVENT_MAGIC {
        return Err(DecodeError::Magic(magic));
    }
    let (version, kind) = (u16_at(b, 4), u16_at(b, 6));
    if version != VERSION || kind != EVENT_FENCE_RETIRED {
        return Err(DecodeError::Event { version, kind });
    }
    Ok(FenceRetired {
        ctx_id: u32_at(b, 8),
        ring_idx: u32_at(b, 12),
        fence_id: u64_at(b, 16),
        generation: u64_at(b, 24),
    })
}

/// How long the device waits for a reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The device's side: [`Renderer`] over a connected `SOCK_SEQPACKET`
/// socket (std's [`UnixDatagram`] does the sends and receives; the socket
/// type is the caller's).
#[derive(Debug)]
pub struct SocketRenderer {
    sock: UnixDatagram,
    seq: u64,
    broken: bool,
    /// Events that came before a reply, for the next `poll_events`.
    events: Vec<FenceRetired>,
}

/// `f` again while it fails with EINTR: a signal, or a stop and continue,
/// ends a send or receive on a socket with a timeout in EINTR even under
/// SA_RESTART (signal(7)); that is no answer from the other side.
pub fn retry_interrupted<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

fn io_err(op: &'static str, kind: io::ErrorKind, what: String) -> RendererError {
    RendererError::Io {
        op,
        source: io::Error::new(kind, what),
    }
}

impl SocketRenderer {
    /// Connects over `sock` (already connected) and checks the version.
    /// Sets the reply timeout first, so call it before a seccomp filter
    /// that would refuse `setsockopt`.
    pub fn connect(sock: UnixDatagram) -> Result<Self, RendererError> {
        sock.set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| sock.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|source| RendererError::Io {
                op: "hello",
                source,
            })?;
        let mut r = SocketRenderer {
            sock,
            seq: 0,
            broken: false,
            events: Vec::new(),
        };
        r.call(Op::Hello, |_| {})?;
        Ok(r)
    }

    /// The renderer's `(max_version, max_size)` of `capset`
    /// (`VIRTIO_GPU_CMD_GET_CAPSET_INFO`); refused (EINVAL) for a capset its
    /// backend does not serve.
    /// A size of 0 or above [`MAX_CAPSET_SIZE`] is not the protocol.
    pub fn capset_info(&mut self, capset: u32) -> Result<(u32, u32), RendererError> {
        let reply = self.call(Op::CapsetInfo, |r| r.capset = capset)?;
        match u32::try_from(reply.handle) {
            Ok(n) if (1..=MAX_CAPSET_SIZE).contains(&n) => Ok((reply.map_info, n)),
            _ => {
                self.broken = true;
                Err(io_err(
                    "capset_info",
                    io::ErrorKind::InvalidData,
                    format!("capset size {}", reply.handle),
                ))
            }
        }
    }

    /// True once a reply went wrong: nothing more is sent.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Reads the events waiting in the socket without blocking (at most
    /// [`MAX_EVENTS_PER_POLL`]); the end of the connection, a reply nobody
    /// asked for or anything that is not an event breaks it for good.
    fn drain_events(&mut self) {
        if self.broken {
            return;
        }
        if let Err(e) = self.sock.set_nonblocking(true) {
            warn!(%e, "renderer socket: cannot read events without blocking");
            return;
        }
        let mut buf = [0u8; EVENT_LEN + 1];
        let mut why = None;
        for _ in 0..MAX_EVENTS_PER_POLL {
            match self.sock.recv(&mut buf) {
                Ok(0) => {
                    why = Some("renderer closed the connection".to_string());
                    break;
                }
                Ok(n) => match decode_event(&buf[..n]) {
                    Ok(e) => self.events.push(e),
                    Err(e) => {
                        why = Some(format!("unasked message: {e}"));
                        break;
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    why = Some(e.to_string());
                    break;
                }
            }
        }
        if let Err(e) = self.sock.set_nonblocking(false) {
            why.get_or_insert(format!("cannot make the socket blocking again: {e}"));
        }
        if let Some(why) = why {
            warn!(%why, "renderer connection broken");
            self.broken = true;
        }
    }

    fn call(&mut self, op: Op, fill: impl FnOnce(&mut Request)) -> Result<Reply, RendererError> {
        self.call_with_data(op, fill, &[], None).map(|(r, _)| r)
    }

    /// One exchange; `out`: the request's data (SUBMIT's); `data`: the
    /// exact number of bytes of data the reply must carry if it says it
    /// succeeded (None: a reply without data).
    fn call_with_data(
        &mut self,
        op: Op,
        fill: impl FnOnce(&mut Request),
        out: &[u8],
        data: Option<u32>,
    ) -> Result<(Reply, Vec<u8>), RendererError> {
        let name = op.name();
        if self.broken {
            return Err(io_err(
                name,
                io::ErrorKind::NotConnected,
                "connection to the renderer broken earlier".into(),
            ));
        }
        self.seq += 1;
        let mut req = Request::new(op, self.seq);
        fill(&mut req);
        let r = self.exchange(name, &req, out, data);
        if let Err(e) = &r {
            if matches!(e, RendererError::Io { .. }) {
                warn!(%e, "renderer connection broken");
                self.broken = true;
            }
        }
        r
    }

    fn exchange(
        &mut self,
        name: &'static str,
        req: &Request,
        out: &[u8],
        data: Option<u32>,
    ) -> Result<(Reply, Vec<u8>), RendererError> {
        let io = |source| RendererError::Io { op: name, source };
        let msg = if req.op == Op::Submit {
            req.encode_with_data(out)
        } else {
            req.encode().to_vec()
        };
        let n = retry_interrupted(|| self.sock.send(&msg)).map_err(io)?;
        if n != msg.len() {
            return Err(io_err(
                name,
                io::ErrorKind::WriteZero,
                format!("sent {n} bytes"),
            ));
        }
        // One byte more than the longest reply allowed: a longer message
        // is noticed (SOCK_SEQPACKET truncates it to the buffer).
        let expect = data.map_or(0, |d| d.min(MAX_CAPSET_SIZE) as usize);
        let mut buf = vec![0u8; REPLY_LEN.max(EVENT_LEN) + expect + 1];
        let bad = |e: DecodeError| io_err(name, io::ErrorKind::InvalidData, e.to_string());
        // Events that come first are kept for `poll_events`; the whole
        // wait stays bounded (each recv by the socket's timeout, all of
        // them by the deadline), however the renderer trickles events.
        let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
        let n = loop {
            if std::time::Instant::now() > deadline {
                return Err(io_err(
                    name,
                    io::ErrorKind::TimedOut,
                    "no reply within the timeout, only events".into(),
                ));
            }
            // A signal, or a stop and continue, ends a wait on a socket
            // with a timeout in EINTR even under SA_RESTART (signal(7)):
            // wait again, within the deadline.
            let n = match self.sock.recv(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r.map_err(io)?,
            };
            if n == 0 {
                return Err(io_err(
                    name,
                    io::ErrorKind::UnexpectedEof,
                    "renderer closed the connection".into(),
                ));
            }
            if !is_event(&buf[..n]) {
                break n;
            }
            if self.events.len() >= MAX_PENDING_EVENTS {
                return Err(io_err(
                    name,
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_PENDING_EVENTS} events before a reply"),
                ));
            }
            self.events.push(decode_event(&buf[..n]).map_err(bad)?);
        };
        let (reply, body) = if data.is_some() {
            Reply::decode_with_data(&buf[..n]).map_err(bad)?
        } else {
            (Reply::decode(&buf[..n]).map_err(bad)?, &[][..])
        };
        if reply.op != req.op || reply.seq != req.seq || reply.version != VERSION {
            return Err(io_err(
                name,
                io::ErrorKind::InvalidData,
                format!(
                    "reply {:?} seq {} version {} to {:?} seq {}",
                    reply.op, reply.seq, reply.version, req.op, req.seq
                ),
            ));
        }
        if reply.errno != 0 {
            // A refusal carries no data.
            if !body.is_empty() {
                return Err(io_err(
                    name,
                    io::ErrorKind::InvalidData,
                    format!("refusal with {} bytes of data", body.len()),
                ));
            }
            return Err(RendererError::Refused {
                op: name,
                errno: reply.errno,
            });
        }
        if body.len() != expect {
            return Err(io_err(
                name,
                io::ErrorKind::InvalidData,
                format!("{} bytes of data, {expect} expected", body.len()),
            ));
        }
        Ok((reply, body.to_vec()))
    }
}

impl Renderer for SocketRenderer {
    fn create_context(&mut self, ctx_id: u32, capset: u32) -> Result<(), RendererError> {
        self.call(Op::CreateContext, |r| {
            r.ctx_id = ctx_id;
            r.capset = capset;
        })
        .map(|_| ())
    }

    fn destroy_context(&mut self, ctx_id: u32) -> Result<(), RendererError> {
        self.call(Op::DestroyContext, |r| r.ctx_id = ctx_id)
            .map(|_| ())
    }

    fn create_blob(&mut self, b: BlobRequest) -> Result<BlobHandle, RendererError> {
        self.call(Op::CreateBlob, |r| {
            r.ctx_id = b.ctx_id;
            r.capset = b.capset;
            r.resource_id = b.resource_id;
            r.blob_id = b.blob_id;
            r.arg = b.size;
        })
        .map(|r| BlobHandle(r.handle))
    }

    fn map_blob(&mut self, blob: BlobHandle, offset: u64) -> Result<MapCache, RendererError> {
        let reply = self.call(Op::MapBlob, |r| {
            r.handle = blob.0;
            r.arg = offset;
        })?;
        MapCache::from_map_info(reply.map_info).ok_or_else(|| {
            // Mapped, but with a caching the guest cannot be told: the
            // renderer is not speaking the protocol.
            self.broken = true;
            io_err(
                "map_blob",
                io::ErrorKind::InvalidData,
                format!("map_info {:#x}", reply.map_info),
            )
        })
    }

    fn unmap_blob(&mut self, blob: BlobHandle) -> Result<(), RendererError> {
        self.call(Op::UnmapBlob, |r| r.handle = blob.0).map(|_| ())
    }

    fn destroy_blob(&mut self, blob: BlobHandle) -> Result<(), RendererError> {
        self.call(Op::DestroyBlob, |r| r.handle = blob.0)
            .map(|_| ())
    }

    fn capset(&mut self, capset: u32, version: u32, size: u32) -> Result<Vec<u8>, RendererError> {
        if size == 0 || size > MAX_CAPSET_SIZE {
            // Never asked: the device offers no such capset.
            return Err(RendererError::Refused {
                op: "get_capset",
                errno: EINVAL,
            });
        }
        self.call_with_data(
            Op::GetCapset,
            |r| {
                r.capset = capset;
                r.arg = u64::from(version);
            },
            &[],
            Some(size),
        )
        .map(|(_, d)| d)
    }

    fn submit(&mut self, ctx_id: u32, capset: u32, cmds: &[u8]) -> Result<(), RendererError> {
        if !is_submittable(cmds) {
            // Never asked: the device checks the stream first.
            return Err(RendererError::Refused {
                op: "submit",
                errno: EINVAL,
            });
        }
        self.call_with_data(
            Op::Submit,
            |r| {
                r.ctx_id = ctx_id;
                r.capset = capset;
            },
            cmds,
            None,
        )
        .map(|_| ())
    }

    fn create_fence(
        &mut self,
        ctx_id: u32,
        capset: u32,
        ring_idx: u32,
        fence_id: u64,
        generation: u64,
    ) -> Result<(), RendererError> {
        self.call(Op::CreateFence, |r| {
            r.ctx_id = ctx_id;
            r.capset = capset;
            r.resource_id = ring_idx;
            r.arg = fence_id;
            r.handle = generation;
        })
        .map(|_| ())
    }

    fn poll_events(&mut self) -> Vec<FenceRetired> {
        self.drain_events();
        std::mem::take(&mut self.events)
    }

    fn is_lost(&self) -> bool {
        self.broken
    }
}

const EINVAL: i32 = 22;

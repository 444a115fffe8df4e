//! `gpu-hostmem-renderer`: the per-guest renderer process of the
//! virtio-gpu device (docs/virtio-gpu.md, "Decision"). It answers the
//! device's requests ([`gpu_hostmem_virtio_gpu::renderer_proto`]) over one
//! `SOCK_SEQPACKET` socket, holds the blobs' memory, and registers a blob
//! in the window at the offset the guest maps it
//! (`IOCTL_PRIVCMD_HOSTMEM_REGISTER` on a privcmd file restricted to the
//! guest and narrowed to a backend's rights, as `gpu-hostmem backend`
//! hands it over); unmapping or destroying a blob unregisters it first
//! (the kernel revokes every page lent from it), and so does this
//! process's exit.
//!
//! Two backends ([`backend`]), chosen by `--backend` (the supervisor
//! passes `virtio_gpu.backend`): `test` serves the test-only capset
//! ([`gpu_hostmem_virtio_gpu::blob::TEST_CAPSET_ID`]), whose blobs (blob_id
//! 0) are memfds filled with [`pattern`]; when a blob is unmapped or
//! destroyed the renderer counts the pages whose first word the guest
//! stamped with `!pattern` and logs it, so a test sees that the host got
//! the guest's writes. `venus` serves capset 4 through libvirglrenderer
//! ([`virgl`]), loaded and initialised before the seccomp filter
//! ([`sandbox`]).
//!
//! The renderer checks again what the device already checked (its own
//! limits, known handles, one mapping per blob), so a confused or
//! compromised worker cannot make it register over itself.
//!
//! Fences (protocol version 5): CREATE_FENCE asks the backend for a fence
//! on a context's ring; what the backend retires goes to the device as
//! events on the same socket, after the reply to the request being served
//! and whenever a context's fence fd (venus: the eventfd of
//! `virgl_renderer_context_get_poll_fd`) becomes readable. The one thread
//! waits for the socket and those fds at once ([`serve`]); while fences
//! are outstanding it also polls every [`FENCE_POLL_MS`] ms, which is how
//! virglrenderer notices a render worker that died (it retires that
//! context's fences after 100 polls without progress).

pub mod backend;
pub mod memfd;
pub mod sandbox;
pub mod virgl;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use tracing::{debug, info, warn};

use gpu_hostmem_virtio_gpu::renderer::FenceRetired;
use gpu_hostmem_virtio_gpu::renderer_proto::{
    encode_event, is_submittable, retry_interrupted, DecodeError, Op, Reply, Request,
    MAX_CAPSET_SIZE, MAX_SUBMIT_LEN, REQUEST_LEN, VERSION,
};
use gpu_hostmem_xen::privcmd::HostmemRegister;
use gpu_hostmem_xen::Privcmd;

use backend::{Backend, BackendBlob, BlobArgs, BlobLookup, TestBackend};

/// An OS call of the renderer failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed: {source}")]
pub struct RendererOsError {
    /// The call.
    pub op: &'static str,
    /// Its error (errno inside).
    #[source]
    pub source: io::Error,
}

impl RendererOsError {
    /// The errno (EIO if none).
    pub fn errno(&self) -> i32 {
        self.source.raw_os_error().unwrap_or(libc::EIO)
    }
}

/// Word `i` of a fresh blob of resource `resource_id`.
pub fn pattern(resource_id: u32, i: u64) -> u32 {
    (i as u32).wrapping_mul(2_654_435_761) ^ resource_id
}

/// Where blobs are registered: privcmd on Xen, a fake in tests.
pub trait Registrar {
    /// Registers `size` bytes at `addr` of this process at window
    /// `offset` under `id`.
    fn register(
        &mut self,
        id: u32,
        addr: usize,
        size: u64,
        offset: u64,
    ) -> Result<(), RendererOsError>;
    /// Unregisters `id` (the kernel revokes what was lent from it).
    fn unregister(&mut self, id: u32) -> Result<(), RendererOsError>;
}

/// The registrar on Xen: a privcmd file restricted to the guest.
#[derive(Debug)]
pub struct PrivcmdRegistrar {
    privcmd: Privcmd,
    dom: u16,
    unique_id: u64,
}

impl PrivcmdRegistrar {
    /// Registrations for instance `unique_id` of domain `dom` through
    /// `privcmd`.
    pub fn new(privcmd: Privcmd, dom: u16, unique_id: u64) -> Self {
        PrivcmdRegistrar {
            privcmd,
            dom,
            unique_id,
        }
    }
}

fn xen_err(e: gpu_hostmem_xen::XenError) -> RendererOsError {
    RendererOsError {
        op: e.op(),
        source: io::Error::from_raw_os_error(e.as_errno()),
    }
}

impl Registrar for PrivcmdRegistrar {
    fn register(
        &mut self,
        id: u32,
        addr: usize,
        size: u64,
        offset: u64,
    ) -> Result<(), RendererOsError> {
        self.privcmd
            .hostmem_register(HostmemRegister {
                addr: addr as u64,
                size,
                offset,
                id,
                dom: self.dom,
                flags: 0,
                unique_id: self.unique_id,
                reserved: [0],
            })
            .map_err(xen_err)
    }

    fn unregister(&mut self, id: u32) -> Result<(), RendererOsError> {
        self.privcmd
            .hostmem_unregister(self.dom, id)
            .map_err(xen_err)
    }
}

/// Limits of one renderer.
#[derive(Clone, Copy, Debug)]
pub struct RendererLimits {
    /// Bytes of blobs at a time.
    pub bytes: u64,
    /// Blobs at a time.
    pub blobs: usize,
    /// Contexts at a time.
    pub contexts: usize,
}

impl Default for RendererLimits {
    /// 256 MiB of blobs: the test capset's blobs are host memory the
    /// renderer fills (so commits) at creation, which a guest controls.
    fn default() -> Self {
        RendererLimits {
            bytes: 256 << 20,
            blobs: 4096,
            contexts: 64,
        }
    }
}

#[derive(Debug)]
struct Blob<B> {
    mem: B,
    resource_id: u32,
    /// Registration id and window offset while mapped.
    mapped: Option<(u32, u64)>,
}

/// What happened, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RendererStats {
    /// Blobs alive.
    pub blobs: usize,
    /// Of which registered in the window.
    pub mapped: usize,
    /// Registrations made.
    pub registered: u64,
    /// Registrations undone.
    pub unregistered: u64,
    /// Pages the guest stamped, counted at unmap/destroy.
    pub stamped_pages: u64,
    /// Command streams run.
    pub submits: u64,
    /// Fences created.
    pub fences: u64,
    /// Fence-retired events sent.
    pub fence_events: u64,
    /// Requests refused.
    pub refused: u64,
}

/// How often the serving loop polls the contexts while fences are
/// outstanding, in milliseconds.
pub const FENCE_POLL_MS: i32 = 10;

/// What the renderer asked and retired on one ring of a context.
#[derive(Clone, Copy, Debug, Default)]
struct RingFences {
    asked: u64,
    retired: u64,
}

/// The renderer's state: contexts and blobs of backend `B` (the test
/// capset's by default), registered through `G`.
#[derive(Debug)]
pub struct RendererState<G: Registrar, B: Backend = TestBackend> {
    reg: G,
    backend: B,
    limits: RendererLimits,
    /// Capset and the backend's context, by context id.
    contexts: HashMap<u32, (u32, B::Context)>,
    blobs: HashMap<u64, Blob<B::Blob>>,
    next: u64,
    bytes: u64,
    /// Fences per (context, ring) of live contexts.
    rings: BTreeMap<(u32, u32), RingFences>,
    /// The device's reset generation each context's fences were asked in.
    generations: HashMap<u32, u64>,
    stats: RendererStats,
}

impl<G: Registrar> RendererState<G, TestBackend> {
    /// The test capset's backend; no contexts, no blobs.
    pub fn new(reg: G, limits: RendererLimits) -> Self {
        RendererState::with_backend(reg, TestBackend, limits)
    }
}

impl<G: Registrar, B: Backend> RendererState<G, B> {
    /// No contexts, no blobs, served by `backend`.
    pub fn with_backend(reg: G, backend: B, limits: RendererLimits) -> Self {
        RendererState {
            reg,
            backend,
            limits,
            contexts: HashMap::new(),
            blobs: HashMap::new(),
            next: 0,
            bytes: 0,
            rings: BTreeMap::new(),
            generations: HashMap::new(),
            stats: RendererStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> RendererStats {
        RendererStats {
            blobs: self.blobs.len(),
            mapped: self.blobs.values().filter(|b| b.mapped.is_some()).count(),
            ..self.stats
        }
    }

    /// The registrar (tests look at the fake).
    pub fn registrar(&self) -> &G {
        &self.reg
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Word `i` of blob `handle` as this process sees it (where the
    /// backend can tell).
    pub fn blob_word(&self, handle: u64, i: usize) -> Option<u32> {
        self.blobs.get(&handle).and_then(|b| b.mem.read_word(i))
    }

    /// Answers one request that carries no data in its reply (any but
    /// GET_CAPSET, whose data this drops: see
    /// [`RendererState::handle_with_data`]) nor in itself (a SUBMIT here
    /// has an empty stream: refused).
    pub fn handle(&mut self, req: &Request) -> Reply {
        self.handle_with_data(req, &[]).0
    }

    /// Answers one request and its data (`cmds`, SUBMIT's command stream;
    /// empty for every other request): the reply, and the data that
    /// follows it on the wire (GET_CAPSET's; empty for every other reply
    /// and every refusal).
    pub fn handle_with_data(&mut self, req: &Request, cmds: &[u8]) -> (Reply, Vec<u8>) {
        let mut data = Vec::new();
        let mut reply = Reply {
            version: VERSION,
            op: req.op,
            errno: 0,
            map_info: 0,
            handle: 0,
            seq: req.seq,
        };
        let r = if req.version != VERSION {
            Err(libc::EPROTONOSUPPORT)
        } else {
            match req.op {
                Op::Hello => Ok(()),
                Op::CreateContext => self.create_context(req.ctx_id, req.capset),
                Op::DestroyContext => self.destroy_context(req.ctx_id),
                Op::CreateBlob => self.create_blob(req).map(|h| reply.handle = h),
                Op::MapBlob => self
                    .map_blob(req.handle, req.arg)
                    .map(|info| reply.map_info = info),
                Op::UnmapBlob => self.unmap_blob(req.handle),
                Op::DestroyBlob => self.destroy_blob(req.handle),
                Op::CapsetInfo => self.capset_info(req.capset).map(|c| {
                    reply.map_info = c.max_version;
                    reply.handle = u64::from(c.max_size);
                }),
                Op::GetCapset => self.capset(req.capset, req.arg).map(|d| {
                    reply.handle = d.len() as u64;
                    data = d;
                }),
                Op::Submit => self.submit(req.ctx_id, req.capset, cmds),
                Op::CreateFence => self.create_fence(req),
            }
        };
        if let Err(errno) = r {
            self.stats.refused += 1;
            debug!(op = ?req.op, errno, "refused");
            reply.errno = errno;
        }
        (reply, data)
    }

    /// The backend's info of `capset`, if the protocol can carry its data.
    fn capset_info(&self, capset: u32) -> Result<backend::CapsetInfo, i32> {
        let c = self.backend.capset_info(capset).ok_or(libc::EINVAL)?;
        if c.max_size == 0 || c.max_size > MAX_CAPSET_SIZE {
            warn!(
                capset,
                size = c.max_size,
                "capset size the device cannot take"
            );
            return Err(libc::EIO);
        }
        Ok(c)
    }

    /// The data of `capset` at `version`: exactly the size its info says.
    fn capset(&self, capset: u32, version: u64) -> Result<Vec<u8>, i32> {
        let c = self.capset_info(capset)?;
        let version = u32::try_from(version).map_err(|_| libc::EINVAL)?;
        if version > c.max_version {
            return Err(libc::EINVAL);
        }
        let d = self.backend.capset(capset, version)?;
        if d.len() != c.max_size as usize {
            warn!(
                capset,
                version,
                bytes = d.len(),
                size = c.max_size,
                "the backend's capset data is not the size its info says"
            );
            return Err(libc::EIO);
        }
        Ok(d)
    }

    fn create_context(&mut self, ctx: u32, capset: u32) -> Result<(), i32> {
        if self.backend.capset_info(capset).is_none() {
            return Err(libc::EINVAL);
        }
        if self.contexts.contains_key(&ctx) {
            return Err(libc::EEXIST);
        }
        if self.contexts.len() >= self.limits.contexts {
            return Err(libc::ENOMEM);
        }
        let c = self.backend.create_context(ctx, capset)?;
        self.contexts.insert(ctx, (capset, c));
        info!(ctx, capset, "context created");
        Ok(())
    }

    /// Runs a context's command stream (the device checked it too: whole
    /// dwords, 1 to [`MAX_SUBMIT_LEN`] bytes, a live context of `capset`).
    fn submit(&mut self, ctx: u32, capset: u32, cmds: &[u8]) -> Result<(), i32> {
        let c = match self.contexts.get_mut(&ctx) {
            Some((cs, c)) if *cs == capset => c,
            _ => return Err(libc::EINVAL),
        };
        if !is_submittable(cmds) {
            return Err(libc::EINVAL);
        }
        self.backend
            .submit(c, cmds, &mut ByResource::new(&mut self.blobs))?;
        self.stats.submits += 1;
        debug!(ctx, bytes = cmds.len(), "command stream run");
        Ok(())
    }

    fn destroy_context(&mut self, ctx: u32) -> Result<(), i32> {
        // The backend's context goes with it (its drop), and its fences
        // unreported: the device finishes them itself.
        self.rings.retain(|&(c, _), _| c != ctx);
        self.generations.remove(&ctx);
        self.contexts.remove(&ctx).map(|_| ()).ok_or(libc::ENOENT)
    }

    /// CREATE_FENCE: a live context of the request's capset, a ring below
    /// [`backend::MAX_RINGS`], an id above the last one of that ring.
    fn create_fence(&mut self, req: &Request) -> Result<(), i32> {
        let (ctx, ring, id) = (req.ctx_id, req.resource_id, req.arg);
        let c = match self.contexts.get_mut(&ctx) {
            Some((cs, c)) if *cs == req.capset => c,
            _ => return Err(libc::EINVAL),
        };
        if ring >= backend::MAX_RINGS {
            return Err(libc::EINVAL);
        }
        if self.rings.get(&(ctx, ring)).is_some_and(|r| id <= r.asked) {
            return Err(libc::EINVAL);
        }
        self.backend.create_fence(c, ring, id)?;
        self.rings.entry((ctx, ring)).or_default().asked = id;
        self.generations.insert(ctx, req.handle);
        self.stats.fences += 1;
        debug!(ctx, ring, fence = id, "fence created");
        Ok(())
    }

    /// What the backend retired since the last call, one event per
    /// (context, ring) with the newest id, tagged with the generation its
    /// fences were asked in. Only ids this renderer asked for go out.
    pub fn take_events(&mut self) -> Vec<FenceRetired> {
        let mut newest: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        for (&ctx, (_, c)) in self.contexts.iter_mut() {
            for (ring, id) in self.backend.retired_fences(c) {
                let e = newest.entry((ctx, ring)).or_default();
                *e = (*e).max(id);
            }
        }
        let mut out = Vec::new();
        for ((ctx, ring), id) in newest {
            let Some(r) = self.rings.get_mut(&(ctx, ring)) else {
                continue;
            };
            if id > r.asked || id <= r.retired {
                warn!(
                    ctx,
                    ring,
                    fence = id,
                    "backend retired a fence not outstanding"
                );
                continue;
            }
            r.retired = id;
            out.push(FenceRetired {
                ctx_id: ctx,
                ring_idx: ring,
                fence_id: id,
                generation: self.generations.get(&ctx).copied().unwrap_or(0),
            });
        }
        out
    }

    /// True while some fence was asked for and not retired yet.
    pub fn fences_outstanding(&self) -> bool {
        self.rings.values().any(|r| r.retired < r.asked)
    }

    /// The contexts' fence fds (the backend's).
    pub fn poll_fds(&self) -> Vec<RawFd> {
        self.contexts
            .values()
            .filter_map(|(_, c)| self.backend.poll_fd(c))
            .collect()
    }

    fn create_blob(&mut self, req: &Request) -> Result<u64, i32> {
        let ctx = match self.contexts.get(&req.ctx_id) {
            Some((capset, c)) if *capset == req.capset => c,
            _ => return Err(libc::EINVAL),
        };
        if req.arg == 0 || req.arg % 4096 != 0 {
            return Err(libc::EINVAL);
        }
        if self.blobs.len() >= self.limits.blobs
            || self
                .bytes
                .checked_add(req.arg)
                .map_or(true, |b| b > self.limits.bytes)
        {
            return Err(libc::ENOMEM);
        }
        // Handles are also registration ids: keep them within u32.
        if self.next >= u64::from(u32::MAX) {
            return Err(libc::ENOSPC);
        }
        let mem = self.backend.create_blob(
            ctx,
            &BlobArgs {
                ctx_id: req.ctx_id,
                resource_id: req.resource_id,
                blob_id: req.blob_id,
                size: req.arg,
            },
        )?;
        self.next += 1;
        let h = self.next;
        self.bytes += req.arg;
        self.blobs.insert(
            h,
            Blob {
                mem,
                resource_id: req.resource_id,
                mapped: None,
            },
        );
        info!(
            resource = req.resource_id,
            handle = h,
            size = req.arg,
            "blob created"
        );
        Ok(h)
    }

    /// Registers blob `h` at window `offset`; its `map_info`.
    fn map_blob(&mut self, h: u64, offset: u64) -> Result<u32, i32> {
        let b = self.blobs.get_mut(&h).ok_or(libc::ENOENT)?;
        if b.mapped.is_some() {
            return Err(libc::EBUSY);
        }
        if offset % 4096 != 0 {
            return Err(libc::EINVAL);
        }
        let id = u32::try_from(h).map_err(|_| libc::EINVAL)?;
        let m = self.backend.map_blob(&mut b.mem)?;
        // The backend's word on where the memory is, checked: exactly the
        // blob, whole pages.
        if m.len != b.mem.size() || m.addr % 4096 != 0 {
            warn!(
                resource = b.resource_id,
                addr = format_args!("{:#x}", m.addr),
                len = m.len,
                size = b.mem.size(),
                "the backend mapped something else than the blob"
            );
            self.backend.unmap_blob(&mut b.mem);
            return Err(libc::EINVAL);
        }
        if let Err(e) = self.reg.register(id, m.addr, m.len, offset) {
            warn!(%e, resource = b.resource_id, offset, "register");
            self.backend.unmap_blob(&mut b.mem);
            return Err(e.errno());
        }
        b.mapped = Some((id, offset));
        self.stats.registered += 1;
        info!(
            resource = b.resource_id,
            offset = format_args!("{offset:#x}"),
            size = m.len,
            "blob registered in the window"
        );
        Ok(m.map_info)
    }

    fn unmap_blob(&mut self, h: u64) -> Result<(), i32> {
        let b = self.blobs.get_mut(&h).ok_or(libc::ENOENT)?;
        let Some((id, offset)) = b.mapped else {
            return Err(libc::EINVAL);
        };
        self.reg.unregister(id).map_err(|e| {
            warn!(%e, resource = b.resource_id, "unregister");
            e.errno()
        })?;
        b.mapped = None;
        self.stats.unregistered += 1;
        let stamped = b.mem.guest_stamps();
        self.backend.unmap_blob(&mut b.mem);
        self.stats.stamped_pages += stamped;
        info!(
            resource = b.resource_id,
            offset = format_args!("{offset:#x}"),
            stamped,
            pages = b.mem.size() / 4096,
            "blob unregistered; pages the guest stamped"
        );
        Ok(())
    }

    fn destroy_blob(&mut self, h: u64) -> Result<(), i32> {
        if !self.blobs.contains_key(&h) {
            return Err(libc::ENOENT);
        }
        // Unregistered before the memory goes (munmap would revoke too,
        // through the notifier; this keeps the registration table clean).
        let mapped = self.blobs.get(&h).is_some_and(|b| b.mapped.is_some());
        if mapped {
            // A failed unregister still frees the memory below: the
            // munmap revokes through the kernel's notifier.
            let _ = self.unmap_blob(h);
        }
        if let Some(b) = self.blobs.remove(&h) {
            self.bytes -= b.mem.size();
            info!(resource = b.resource_id, handle = h, "blob destroyed");
        }
        Ok(())
    }

    /// Everything goes (the device disconnected).
    pub fn clear(&mut self) {
        let hs: Vec<u64> = self.blobs.keys().copied().collect();
        for h in hs {
            let _ = self.destroy_blob(h);
        }
        self.rings.clear();
        self.generations.clear();
        self.contexts.clear();
    }
}

/// The renderer's blobs, found by the guest's resource id (indexed on the
/// first lookup: a stream may name blobs thousands of times).
struct ByResource<'a, B> {
    blobs: &'a mut HashMap<u64, Blob<B>>,
    index: Option<HashMap<u32, u64>>,
}

impl<'a, B> ByResource<'a, B> {
    fn new(blobs: &'a mut HashMap<u64, Blob<B>>) -> Self {
        ByResource { blobs, index: None }
    }
}

impl<B> BlobLookup<B> for ByResource<'_, B> {
    fn by_resource(&mut self, resource_id: u32) -> Option<&mut B> {
        let blobs = &*self.blobs;
        let index = self
            .index
            .get_or_insert_with(|| blobs.iter().map(|(h, b)| (b.resource_id, *h)).collect());
        let h = *index.get(&resource_id)?;
        self.blobs.get_mut(&h).map(|b| &mut b.mem)
    }
}

impl<G: Registrar, B: Backend> Drop for RendererState<G, B> {
    /// Blobs (unregistered first), then contexts, then the backend.
    fn drop(&mut self) {
        self.clear();
    }
}

/// Why [`serve`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket failed.
    #[error("{op} on the device socket: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// Its error.
        #[source]
        source: io::Error,
    },
    /// The device sent something that is not the protocol.
    #[error("the device sent a bad message: {0}")]
    Protocol(#[from] DecodeError),
}

/// Serves the device on `sock` until it disconnects (Ok) or breaks the
/// protocol (Err); either way every blob is unregistered and freed before
/// returning.
pub fn serve<G: Registrar, B: Backend>(
    sock: &UnixDatagram,
    state: &mut RendererState<G, B>,
) -> Result<(), ServeError> {
    let r = serve_loop(sock, state);
    state.clear();
    r
}

fn serve_loop<G: Registrar, B: Backend>(
    sock: &UnixDatagram,
    state: &mut RendererState<G, B>,
) -> Result<(), ServeError> {
    let mut buf = recv_buffer();
    loop {
        send_events(sock, state)?;
        let timeout = if state.fences_outstanding() {
            FENCE_POLL_MS
        } else {
            -1
        };
        let mut fds = vec![sock.as_raw_fd()];
        fds.extend(state.poll_fds());
        let ready = wait_readable(&fds, timeout).map_err(|source| ServeError::Io {
            op: "ppoll",
            source,
        })?;
        // The contexts' fds are read by the backend when asked for its
        // retired fences (`send_events`, next round).
        if ready.first().copied().unwrap_or(false) && !serve_one_into(sock, state, &mut buf)? {
            return Ok(());
        }
    }
}

/// Sends the device what the backend retired.
fn send_events<G: Registrar, B: Backend>(
    sock: &UnixDatagram,
    state: &mut RendererState<G, B>,
) -> Result<(), ServeError> {
    for e in state.take_events() {
        retry_interrupted(|| sock.send(&encode_event(&e))).map_err(|source| ServeError::Io {
            op: "send event",
            source,
        })?;
        state.stats.fence_events += 1;
    }
    Ok(())
}

/// Waits until one of `fds` is readable, hung up or failed, or
/// `timeout_ms` passed (-1: no timeout); which ones. EINTR is no fd ready.
fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: libc::time_t::from(timeout_ms.max(0) / 1000),
        tv_nsec: libc::c_long::from(timeout_ms.max(0) % 1000) * 1_000_000,
    };
    let tsp: *const libc::timespec = if timeout_ms < 0 {
        std::ptr::null()
    } else {
        &ts
    };
    // SAFETY: `p` is a live array of `p.len()` pollfd structs, `tsp` null
    // or a live timespec, no signal mask; the fds are the caller's and
    // stay open for the call.
    let rc = unsafe {
        libc::ppoll(
            p.as_mut_ptr(),
            p.len() as libc::nfds_t,
            tsp,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// One byte more than the longest request: a longer one is noticed
/// (SOCK_SEQPACKET truncates it to the buffer).
fn recv_buffer() -> Vec<u8> {
    vec![0u8; REQUEST_LEN + MAX_SUBMIT_LEN + 1]
}

/// Answers the device's next request on `sock`: true if one was answered,
/// false if the device closed the connection. Nothing is cleared (see
/// [`serve`]).
pub fn serve_one<G: Registrar, B: Backend>(
    sock: &UnixDatagram,
    state: &mut RendererState<G, B>,
) -> Result<bool, ServeError> {
    serve_one_into(sock, state, &mut recv_buffer())
}

/// [`serve_one`] receiving into `buf` ([`recv_buffer`]'s size), which the
/// serving loop keeps across requests.
fn serve_one_into<G: Registrar, B: Backend>(
    sock: &UnixDatagram,
    state: &mut RendererState<G, B>,
    buf: &mut [u8],
) -> Result<bool, ServeError> {
    let n = loop {
        match sock.recv(buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ServeError::Io { op: "recv", source }),
        }
    };
    if n == 0 {
        info!("the device closed the connection");
        return Ok(false);
    }
    let (req, cmds) = Request::decode_with_data(&buf[..n])?;
    let (reply, data) = state.handle_with_data(&req, cmds);
    let msg = if req.op == Op::GetCapset {
        reply.encode_with_data(&data)
    } else {
        reply.encode().to_vec()
    };
    retry_interrupted(|| sock.send(&msg))
        .map_err(|source| ServeError::Io { op: "send", source })?;
    // What the request retired goes out after its reply (the device asks
    // for a fence before it can see it retired).
    send_events(sock, state)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::backend::{BlobMapping, CapsetInfo};
    use super::*;

    /// A backend whose mapping is `len` bytes at `addr`, counting unmaps.
    #[derive(Debug, Default)]
    struct Lying {
        addr: usize,
        len: u64,
        unmaps: u32,
        /// Bytes of capset data it gives (its info says 160).
        caps: usize,
    }

    #[derive(Debug)]
    struct LyingBlob(u64);

    impl BackendBlob for LyingBlob {
        fn size(&self) -> u64 {
            self.0
        }
    }

    impl Backend for Lying {
        type Context = ();
        type Blob = LyingBlob;
        fn capset_info(&self, capset: u32) -> Option<CapsetInfo> {
            (capset == 4).then_some(CapsetInfo {
                max_version: 0,
                max_size: 160,
            })
        }
        fn capset(&self, _: u32, _: u32) -> Result<Vec<u8>, i32> {
            Ok(vec![0x11; self.caps])
        }
        fn create_context(&mut self, _: u32, _: u32) -> Result<(), i32> {
            Ok(())
        }
        fn create_blob(&mut self, _: &(), a: &BlobArgs) -> Result<LyingBlob, i32> {
            Ok(LyingBlob(a.size))
        }
        fn map_blob(&mut self, _: &mut LyingBlob) -> Result<BlobMapping, i32> {
            Ok(BlobMapping {
                addr: self.addr,
                len: self.len,
                map_info: 1,
            })
        }
        fn unmap_blob(&mut self, _: &mut LyingBlob) {
            self.unmaps += 1;
        }
        fn submit(
            &mut self,
            _: &mut (),
            _: &[u8],
            _: &mut dyn BlobLookup<LyingBlob>,
        ) -> Result<(), i32> {
            Ok(())
        }
    }

    /// Registers nothing; refuses with `fail` when set.
    #[derive(Debug, Default)]
    struct Reg {
        fail: Option<i32>,
        n: u32,
    }

    impl Registrar for Reg {
        fn register(&mut self, _: u32, _: usize, _: u64, _: u64) -> Result<(), RendererOsError> {
            if let Some(e) = self.fail {
                return Err(RendererOsError {
                    op: "IOCTL_PRIVCMD_HOSTMEM_REGISTER",
                    source: io::Error::from_raw_os_error(e),
                });
            }
            self.n += 1;
            Ok(())
        }
        fn unregister(&mut self, _: u32) -> Result<(), RendererOsError> {
            self.n -= 1;
            Ok(())
        }
    }

    fn map_one(backend: Lying, reg: Reg) -> (Reply, RendererState<Reg, Lying>) {
        let mut st = RendererState::with_backend(reg, backend, RendererLimits::default());
        let req = |op, seq| Request {
            ctx_id: 1,
            capset: 4,
            resource_id: 9,
            blob_id: 3,
            arg: 1 << 16,
            ..Request::new(op, seq)
        };
        assert_eq!(st.handle(&req(Op::CreateContext, 1)).errno, 0);
        let h = st.handle(&req(Op::CreateBlob, 2)).handle;
        let r = st.handle(&Request {
            handle: h,
            arg: 0x1000,
            ..req(Op::MapBlob, 3)
        });
        (r, st)
    }

    #[test]
    fn a_backend_mapping_of_another_size_or_unaligned_is_not_registered() {
        for (addr, len) in [
            (0x10_0000, 1 << 12),
            (0x10_0000, 1 << 17),
            (0x10_0800, 1 << 16),
        ] {
            let b = Lying {
                addr,
                len,
                ..Lying::default()
            };
            let (r, st) = map_one(b, Reg::default());
            assert_eq!(r.errno, libc::EINVAL, "{addr:#x}+{len:#x}");
            assert_eq!(st.registrar().n, 0);
            assert_eq!(st.backend().unmaps, 1, "the backend's mapping undone");
        }
        let ok = Lying {
            addr: 0x10_0000,
            len: 1 << 16,
            ..Lying::default()
        };
        let (r, st) = map_one(ok, Reg::default());
        assert_eq!((r.errno, r.map_info), (0, 1));
        assert_eq!(st.registrar().n, 1);
    }

    #[test]
    fn capset_data_goes_out_only_at_the_size_the_info_says() {
        let get = |caps: usize, capset: u32, version: u64| {
            let mut st = RendererState::with_backend(
                Reg::default(),
                Lying {
                    caps,
                    ..Lying::default()
                },
                RendererLimits::default(),
            );
            st.handle_with_data(
                &Request {
                    capset,
                    arg: version,
                    ..Request::new(Op::GetCapset, 1)
                },
                &[],
            )
        };
        let (r, d) = get(160, 4, 0);
        assert_eq!((r.errno, r.handle, d), (0, 160, vec![0x11; 160]));
        // A backend giving more or less than its info said.
        for n in [0, 159, 161, 4096] {
            let (r, d) = get(n, 4, 0);
            assert_eq!((r.errno, r.handle, d.len()), (libc::EIO, 0, 0), "{n} bytes");
        }
        // A version above the newest or beyond u32, a capset not served.
        for (capset, version) in [(4, 1), (4, 1 << 32), (4, u64::MAX), (30, 0)] {
            let (r, d) = get(160, capset, version);
            assert_eq!((r.errno, d.len()), (libc::EINVAL, 0), "{capset} {version}");
        }
        // `handle` drops the data (and says so by name).
        let mut st = RendererState::with_backend(
            Reg::default(),
            Lying {
                caps: 160,
                ..Lying::default()
            },
            RendererLimits::default(),
        );
        assert_eq!(
            st.handle(&Request {
                capset: 4,
                ..Request::new(Op::GetCapset, 2)
            })
            .handle,
            160
        );
    }

    #[test]
    fn a_refused_registration_undoes_the_backend_mapping() {
        let b = Lying {
            addr: 0x10_0000,
            len: 1 << 16,
            ..Lying::default()
        };
        let (r, st) = map_one(
            b,
            Reg {
                fail: Some(libc::EACCES),
                n: 0,
            },
        );
        assert_eq!(r.errno, libc::EACCES);
        assert_eq!(st.backend().unmaps, 1);
        assert_eq!(st.stats().mapped, 0);
    }
}

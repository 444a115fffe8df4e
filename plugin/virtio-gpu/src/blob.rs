//! Contexts, capsets and host-visible blobs (virtio 1.2, 5.7.6.8-5.7.6.10):
//! the commands stage 2 adds to the control queue (docs/virtio-gpu.md).
//!
//! The device keeps the table a hostile driver is checked against: which
//! contexts exist and with which capset, which blobs exist, how big, and
//! where in the window each mapped one is. Only what passes goes to the
//! [`Renderer`]. A blob is mapped at a page-aligned offset inside the
//! window, overlapping no other mapped blob, at most once; unmapping or
//! unreferencing it takes it out of the window before anything else, so
//! the renderer unregisters it (and the kernel revokes what was lent)
//! before the offset can be given to another blob.
//!
//! Capsets: the device offers none unless configured, and then those the
//! renderer described at start (`CAPSET_INFO` over the renderer protocol:
//! id, newest version, size). GET_CAPSET_INFO is answered from that
//! description; GET_CAPSET asks the renderer for the data of an offered
//! capset at a version up to the newest and passes on exactly the size it
//! described, nothing else. Two capsets exist today: venus (4, through
//! virglrenderer) and [`TEST_CAPSET_ID`], a test-only context type whose
//! `HOST3D` blobs are plain renderer memory (memfds) with a known pattern:
//! virglrenderer 1.1 accepts only capsets 1, 2, 4 and 6, so a test that
//! uses only the DRM uAPI needs a context type of ours.

use std::collections::{BTreeMap, HashMap};

use tracing::{debug, info, warn};
use virtio_bindings::virtio_gpu as g;

use crate::gpu2d::HDR_LEN;
use crate::renderer::{BlobHandle, BlobRequest, FenceRetired, Renderer, RendererError};
use crate::renderer_proto::{MAX_CAPSET_SIZE, MAX_SUBMIT_LEN};

/// The test-only capset (off by default): a context type served by
/// `gpu-hostmem-renderer` itself, whose blobs are memfds. Linux's uAPI names
/// ids 1 to 6; the driver keeps capset ids in a mask built with an `int`
/// shift (`1 << id`, `virtgpu_kms.c`), so an id of ours must stay below 31.
pub const TEST_CAPSET_ID: u32 = 30;
/// Its only version.
pub const TEST_CAPSET_VERSION: u32 = 1;
/// What GET_CAPSET answers for it.
pub const TEST_CAPSET_DATA: [u8; 16] = *b"gpu-hostmem-test";
/// The test capset as the device offers it.
pub const TEST_CAPSET: CapsetOffer = CapsetOffer {
    id: TEST_CAPSET_ID,
    max_version: TEST_CAPSET_VERSION,
    max_size: TEST_CAPSET_DATA.len() as u32,
};
/// `VIRTIO_GPU_CAPSET_VENUS`.
pub const VENUS_CAPSET_ID: u32 = 4;
/// Most capsets offered.
pub const MAX_CAPSETS: usize = 8;

/// A capset the device offers, as the renderer described it
/// (`VIRTIO_GPU_CMD_GET_CAPSET_INFO`'s answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsetOffer {
    /// Capset id (`VIRTIO_GPU_CAPSET_*`).
    pub id: u32,
    /// Newest version (0 is a version: virglrenderer 1.1 says 0 for
    /// venus).
    pub max_version: u32,
    /// Bytes of its data.
    pub max_size: u32,
}

impl CapsetOffer {
    /// True if a guest may be offered it: an id Linux can hold (it keeps
    /// capset ids in an `int` mask, `1 << id`), 1 to 30, and a size of 1
    /// to [`MAX_CAPSET_SIZE`] bytes.
    pub fn is_valid(&self) -> bool {
        (1..31).contains(&self.id) && (1..=MAX_CAPSET_SIZE).contains(&self.max_size)
    }
}

/// Most contexts at a time (Linux makes one per open DRM file).
pub const MAX_CONTEXTS: usize = 64;
/// Most blobs at a time.
pub const MAX_BLOBS: usize = 4096;
/// Page size of the window (x86 and arm64 guests with 4 KiB pages).
pub const PAGE: u64 = 4096;

/// Response types this module adds.
pub mod resp {
    use virtio_bindings::virtio_gpu as g;
    /// Capset info follows.
    pub const OK_CAPSET_INFO: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_CAPSET_INFO;
    /// Capset data follows.
    pub const OK_CAPSET: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_CAPSET;
    /// Map info follows.
    pub const OK_MAP_INFO: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_MAP_INFO;
    /// No such context, or it exists already.
    pub const ERR_INVALID_CONTEXT_ID: u32 =
        g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID;
}

use crate::gpu2d::resp::{
    ERR_INVALID_PARAMETER, ERR_INVALID_RESOURCE_ID, ERR_OUT_OF_MEMORY, ERR_UNSPEC, OK_NODATA,
};

const GET_CAPSET_INFO: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_CAPSET_INFO;
const GET_CAPSET: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_CAPSET;
const RESOURCE_CREATE_BLOB: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB;
const CTX_CREATE: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_CREATE;
const CTX_DESTROY: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DESTROY;
const CTX_ATTACH_RESOURCE: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE;
const CTX_DETACH_RESOURCE: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE;
const RESOURCE_MAP_BLOB: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB;
const RESOURCE_UNMAP_BLOB: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB;
const SUBMIT_3D: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SUBMIT_3D;

/// Offset of `ctx_id` in `struct virtio_gpu_ctrl_hdr`.
const HDR_CTX_ID: usize = 16;
/// `struct virtio_gpu_resource_create_blob` without its entries.
const CREATE_BLOB_LEN: usize = HDR_LEN + 32;
/// `struct virtio_gpu_cmd_submit` (`size`, `padding`) before the stream.
const SUBMIT_LEN: usize = HDR_LEN + 8;
/// `VIRTIO_GPU_BLOB_FLAG_USE_*` the device knows.
const BLOB_FLAGS: u32 = g::VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE
    | g::VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE
    | g::VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE;

/// True for the commands [`Blobs::handle`] answers.
pub fn is_blob_command(cmd: u32) -> bool {
    matches!(
        cmd,
        GET_CAPSET_INFO
            | GET_CAPSET
            | RESOURCE_CREATE_BLOB
            | CTX_CREATE
            | CTX_DESTROY
            | CTX_ATTACH_RESOURCE
            | CTX_DETACH_RESOURCE
            | RESOURCE_MAP_BLOB
            | RESOURCE_UNMAP_BLOB
            | SUBMIT_3D
    )
}

fn u32_at(req: &[u8], at: usize) -> u32 {
    req.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(req: &[u8], at: usize) -> u64 {
    req.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

#[derive(Clone, Copy, Debug)]
struct Blob {
    handle: BlobHandle,
    size: u64,
    mappable: bool,
    /// Window offset while mapped.
    mapped: Option<u64>,
}

/// Counters for status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobStats {
    /// Contexts alive.
    pub contexts: usize,
    /// Blobs alive.
    pub blobs: usize,
    /// Of which mapped in the window.
    pub mapped: usize,
    /// Bytes of blobs alive.
    pub bytes: u64,
    /// Bytes of blobs mapped.
    pub mapped_bytes: u64,
    /// Requests the renderer refused or did not answer.
    pub renderer_errors: u64,
    /// Command streams (SUBMIT_3D) the renderer took.
    pub submits: u64,
    /// Their bytes.
    pub submitted_bytes: u64,
}

/// Contexts and blobs of one device.
#[derive(Debug)]
pub struct Blobs {
    renderer: Box<dyn Renderer>,
    capsets: Vec<CapsetOffer>,
    window: u64,
    limit: u64,
    contexts: HashMap<u32, u32>,
    blobs: HashMap<u32, Blob>,
    /// Mapped blobs by window offset.
    by_offset: BTreeMap<u64, u32>,
    bytes: u64,
    renderer_errors: u64,
    submits: u64,
    submitted_bytes: u64,
}

impl Blobs {
    /// A table for a window of `window` bytes offering `capsets` (those
    /// [`CapsetOffer::is_valid`] accepts, the first of each id, at most
    /// [`MAX_CAPSETS`]; the others are dropped with a warning), with at
    /// most `limit` bytes of blobs, served by `renderer`.
    pub fn new(
        renderer: Box<dyn Renderer>,
        capsets: &[CapsetOffer],
        window: u64,
        limit: u64,
    ) -> Self {
        let mut offered: Vec<CapsetOffer> = Vec::new();
        for c in capsets {
            if c.is_valid() && !offered.iter().any(|o| o.id == c.id) && offered.len() < MAX_CAPSETS
            {
                offered.push(*c);
            } else {
                warn!(?c, "capset not offered");
            }
        }
        Blobs {
            renderer,
            capsets: offered,
            window,
            limit,
            contexts: HashMap::new(),
            blobs: HashMap::new(),
            by_offset: BTreeMap::new(),
            bytes: 0,
            renderer_errors: 0,
            submits: 0,
            submitted_bytes: 0,
        }
    }

    /// The capsets offered (`num_capsets` is their number).
    pub fn capsets(&self) -> &[CapsetOffer] {
        &self.capsets
    }

    /// True if context `ctx` exists.
    pub fn has_context(&self, ctx: u32) -> bool {
        self.contexts.contains_key(&ctx)
    }

    /// Asks the renderer for fence `fence_id` on ring `ring` of live
    /// context `ctx`, after what was submitted to it
    /// ([`Renderer::create_fence`]); true if it made it (a refusal is
    /// counted as a renderer error).
    pub fn create_fence(&mut self, ctx: u32, ring: u32, fence_id: u64, generation: u64) -> bool {
        let Some(&capset) = self.contexts.get(&ctx) else {
            return false;
        };
        let r = self
            .renderer
            .create_fence(ctx, capset, ring, fence_id, generation);
        self.note(r, "create_fence").is_some()
    }

    /// The renderer's fence reports since the last call.
    pub fn poll_events(&mut self) -> Vec<FenceRetired> {
        self.renderer.poll_events()
    }

    /// True once the renderer is gone for good.
    pub fn renderer_lost(&self) -> bool {
        self.renderer.is_lost()
    }

    /// True if `id` is a blob.
    pub fn contains(&self, id: u32) -> bool {
        self.blobs.contains_key(&id)
    }

    /// Window offset of blob `id` if mapped.
    pub fn mapped_at(&self, id: u32) -> Option<u64> {
        self.blobs.get(&id).and_then(|b| b.mapped)
    }

    /// Counters.
    pub fn stats(&self) -> BlobStats {
        let mapped: Vec<&Blob> = self.blobs.values().filter(|b| b.mapped.is_some()).collect();
        BlobStats {
            contexts: self.contexts.len(),
            blobs: self.blobs.len(),
            mapped: mapped.len(),
            bytes: self.bytes,
            mapped_bytes: mapped.iter().map(|b| b.size).sum(),
            renderer_errors: self.renderer_errors,
            submits: self.submits,
            submitted_bytes: self.submitted_bytes,
        }
    }

    /// The device was reset: every blob unmapped and destroyed, every
    /// context destroyed.
    pub fn reset(&mut self) {
        let mut ids: Vec<u32> = self.blobs.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.unref(id);
        }
        let mut ctxs: Vec<u32> = self.contexts.keys().copied().collect();
        ctxs.sort_unstable();
        for c in ctxs {
            self.contexts.remove(&c);
            let r = self.renderer.destroy_context(c);
            self.note(r, "destroy_context");
        }
    }

    fn note<T>(&mut self, r: Result<T, RendererError>, what: &str) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.renderer_errors += 1;
                warn!(%e, errno = e.errno(), what, "renderer");
                None
            }
        }
    }

    /// Answers one of the commands [`is_blob_command`] names: the response
    /// type and the bytes after the header. `is_2d` says whether a
    /// resource id is taken by a 2D resource.
    pub fn handle(&mut self, req: &[u8], is_2d: impl Fn(u32) -> bool) -> (u32, Vec<u8>) {
        if req.len() < HDR_LEN {
            return (ERR_UNSPEC, Vec::new());
        }
        let none = |t: u32| (t, Vec::new());
        match u32_at(req, 0) {
            GET_CAPSET_INFO => self.capset_info(req),
            GET_CAPSET => self.capset(req),
            CTX_CREATE => none(self.ctx_create(req)),
            CTX_DESTROY => none(self.ctx_destroy(req)),
            CTX_ATTACH_RESOURCE | CTX_DETACH_RESOURCE => none(self.ctx_resource(req, is_2d)),
            RESOURCE_CREATE_BLOB => none(self.create_blob(req, is_2d)),
            RESOURCE_MAP_BLOB => self.map_blob(req),
            RESOURCE_UNMAP_BLOB => none(self.unmap_blob(req)),
            SUBMIT_3D => none(self.submit(req)),
            _ => none(ERR_UNSPEC),
        }
    }

    /// GET_CAPSET_INFO: the offer at `capset_index`, from the table.
    fn capset_info(&self, req: &[u8]) -> (u32, Vec<u8>) {
        if req.len() < HDR_LEN + 8 {
            return (ERR_INVALID_PARAMETER, Vec::new());
        }
        let Some(c) = usize::try_from(u32_at(req, HDR_LEN))
            .ok()
            .and_then(|i| self.capsets.get(i))
        else {
            return (ERR_INVALID_PARAMETER, Vec::new());
        };
        let mut body = Vec::with_capacity(16);
        for w in [c.id, c.max_version, c.max_size, 0] {
            body.extend_from_slice(&w.to_le_bytes());
        }
        (resp::OK_CAPSET_INFO, body)
    }

    /// GET_CAPSET: an offered capset at a version up to its newest, the
    /// renderer's data, exactly the size offered (the guest's buffer is
    /// that size: Linux copies `max_size` bytes out of the response).
    fn capset(&mut self, req: &[u8]) -> (u32, Vec<u8>) {
        if req.len() < HDR_LEN + 8 {
            return (ERR_INVALID_PARAMETER, Vec::new());
        }
        let (id, version) = (u32_at(req, HDR_LEN), u32_at(req, HDR_LEN + 4));
        let Some(c) = self.capsets.iter().find(|c| c.id == id).copied() else {
            return (ERR_INVALID_PARAMETER, Vec::new());
        };
        if version > c.max_version {
            return (ERR_INVALID_PARAMETER, Vec::new());
        }
        match self.renderer.capset(id, version, c.max_size) {
            Ok(data) if data.len() == c.max_size as usize => (resp::OK_CAPSET, data),
            Ok(data) => {
                self.renderer_errors += 1;
                warn!(
                    capset = id,
                    version,
                    bytes = data.len(),
                    offered = c.max_size,
                    "renderer: capset data of another size than offered"
                );
                (ERR_UNSPEC, Vec::new())
            }
            Err(e) => {
                let t = renderer_answer(&e);
                self.note::<()>(Err(e), "get_capset");
                (t, Vec::new())
            }
        }
    }

    /// CTX_CREATE: `ctx_id` in the header, then `nlen`, `context_init`
    /// (capset id in the low byte, nothing else) and the debug name.
    fn ctx_create(&mut self, req: &[u8]) -> u32 {
        if req.len() < HDR_LEN + 8 {
            return ERR_INVALID_PARAMETER;
        }
        let ctx = u32_at(req, HDR_CTX_ID);
        let (nlen, init) = (u32_at(req, HDR_LEN), u32_at(req, HDR_LEN + 4));
        if ctx == 0 || self.contexts.contains_key(&ctx) {
            return resp::ERR_INVALID_CONTEXT_ID;
        }
        let capset = init & g::VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK;
        // context_init 0 asks for a virgl context: not served.
        if init & !g::VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK != 0
            || !self.capsets.iter().any(|c| c.id == capset)
            || nlen > 64
        {
            return ERR_INVALID_PARAMETER;
        }
        if self.contexts.len() >= MAX_CONTEXTS {
            return ERR_OUT_OF_MEMORY;
        }
        let r = self.renderer.create_context(ctx, capset);
        if let Err(e) = r {
            let t = renderer_answer(&e);
            self.note::<()>(Err(e), "create_context");
            return t;
        }
        self.contexts.insert(ctx, capset);
        debug!(ctx, capset, "context created");
        OK_NODATA
    }

    fn ctx_destroy(&mut self, req: &[u8]) -> u32 {
        let ctx = u32_at(req, HDR_CTX_ID);
        if self.contexts.remove(&ctx).is_none() {
            return resp::ERR_INVALID_CONTEXT_ID;
        }
        let r = self.renderer.destroy_context(ctx);
        self.note(r, "destroy_context");
        OK_NODATA
    }

    /// SUBMIT_3D: `size` bytes of command stream after the command, for a
    /// live context, in whole dwords (virglrenderer counts dwords; QEMU
    /// drops a partial one, this device refuses it), at most
    /// [`MAX_SUBMIT_LEN`] bytes, all of them in the request (a stream cut
    /// short by the descriptors is refused, never passed on in part). An
    /// empty stream is done. What the stream means is the capset's: the
    /// renderer's context runs it. The answer says the renderer took it;
    /// a fence asked for is the engine's to keep ([`crate::fence`]).
    fn submit(&mut self, req: &[u8]) -> u32 {
        if req.len() < SUBMIT_LEN {
            return ERR_INVALID_PARAMETER;
        }
        let ctx = u32_at(req, HDR_CTX_ID);
        let Some(&capset) = self.contexts.get(&ctx) else {
            return resp::ERR_INVALID_CONTEXT_ID;
        };
        let size = u32_at(req, HDR_LEN) as usize;
        let cmds = match req.get(SUBMIT_LEN..SUBMIT_LEN.saturating_add(size)) {
            Some(c) if size % 4 == 0 && size <= MAX_SUBMIT_LEN => c,
            _ => return ERR_INVALID_PARAMETER,
        };
        if cmds.is_empty() {
            return OK_NODATA;
        }
        let r = self.renderer.submit(ctx, capset, cmds);
        if let Err(e) = r {
            let t = renderer_answer(&e);
            self.note::<()>(Err(e), "submit");
            return t;
        }
        self.submits += 1;
        self.submitted_bytes += size as u64;
        OK_NODATA
    }

    /// CTX_ATTACH/DETACH_RESOURCE: resources are global here (as in
    /// virglrenderer), so only the ids are checked.
    fn ctx_resource(&mut self, req: &[u8], is_2d: impl Fn(u32) -> bool) -> u32 {
        if req.len() < HDR_LEN + 8 {
            return ERR_INVALID_PARAMETER;
        }
        let (ctx, id) = (u32_at(req, HDR_CTX_ID), u32_at(req, HDR_LEN));
        if !self.contexts.contains_key(&ctx) {
            return resp::ERR_INVALID_CONTEXT_ID;
        }
        if !self.blobs.contains_key(&id) && !is_2d(id) {
            return ERR_INVALID_RESOURCE_ID;
        }
        OK_NODATA
    }

    /// RESOURCE_CREATE_BLOB: only `HOST3D` blobs of a live context, with no
    /// guest entries, a page-aligned size and known flags (not
    /// CROSS_DEVICE: no ASSIGN_UUID offered).
    fn create_blob(&mut self, req: &[u8], is_2d: impl Fn(u32) -> bool) -> u32 {
        if req.len() < CREATE_BLOB_LEN {
            return ERR_INVALID_PARAMETER;
        }
        let ctx = u32_at(req, HDR_CTX_ID);
        let id = u32_at(req, HDR_LEN);
        let (mem, flags, entries) = (
            u32_at(req, HDR_LEN + 4),
            u32_at(req, HDR_LEN + 8),
            u32_at(req, HDR_LEN + 12),
        );
        let (blob_id, size) = (u64_at(req, HDR_LEN + 16), u64_at(req, HDR_LEN + 24));
        if id == 0 || self.blobs.contains_key(&id) || is_2d(id) {
            return ERR_INVALID_RESOURCE_ID;
        }
        let Some(&capset) = self.contexts.get(&ctx) else {
            return resp::ERR_INVALID_CONTEXT_ID;
        };
        if mem != g::VIRTIO_GPU_BLOB_MEM_HOST3D
            || entries != 0
            || flags & !BLOB_FLAGS != 0
            || flags & g::VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE != 0
            || size == 0
            || size % PAGE != 0
        {
            return ERR_INVALID_PARAMETER;
        }
        if self.blobs.len() >= MAX_BLOBS
            || self
                .bytes
                .checked_add(size)
                .map_or(true, |b| b > self.limit)
        {
            return ERR_OUT_OF_MEMORY;
        }
        let r = self.renderer.create_blob(BlobRequest {
            ctx_id: ctx,
            capset,
            resource_id: id,
            blob_id,
            size,
        });
        let handle = match r {
            Ok(h) => h,
            Err(e) => {
                let t = renderer_answer(&e);
                self.note::<()>(Err(e), "create_blob");
                return t;
            }
        };
        self.blobs.insert(
            id,
            Blob {
                handle,
                size,
                mappable: flags & g::VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE != 0,
                mapped: None,
            },
        );
        self.bytes += size;
        debug!(id, ctx, size, "blob created");
        OK_NODATA
    }

    /// RESOURCE_MAP_BLOB: a mappable blob, not mapped yet, at a page-aligned
    /// offset with the whole blob inside the window and clear of every
    /// other mapped blob.
    fn map_blob(&mut self, req: &[u8]) -> (u32, Vec<u8>) {
        let none = |t: u32| (t, Vec::new());
        if req.len() < HDR_LEN + 16 {
            return none(ERR_INVALID_PARAMETER);
        }
        let (id, offset) = (u32_at(req, HDR_LEN), u64_at(req, HDR_LEN + 8));
        let Some(b) = self.blobs.get(&id).copied() else {
            return none(ERR_INVALID_RESOURCE_ID);
        };
        let Some(end) = offset.checked_add(b.size) else {
            return none(ERR_INVALID_PARAMETER);
        };
        if !b.mappable || b.mapped.is_some() || offset % PAGE != 0 || end > self.window {
            return none(ERR_INVALID_PARAMETER);
        }
        // The mapped blob starting last before `end` is the only one that
        // can overlap (mapped blobs do not overlap each other).
        if let Some((&o, &other)) = self.by_offset.range(..end).next_back() {
            let other_end = o + self.blobs.get(&other).map_or(0, |x| x.size);
            if other_end > offset {
                return none(ERR_INVALID_PARAMETER);
            }
        }
        let r = self.renderer.map_blob(b.handle, offset);
        let cache = match r {
            Ok(c) => c,
            Err(e) => {
                let t = renderer_answer(&e);
                self.note::<()>(Err(e), "map_blob");
                return none(t);
            }
        };
        if let Some(x) = self.blobs.get_mut(&id) {
            x.mapped = Some(offset);
        }
        self.by_offset.insert(offset, id);
        info!(
            resource = id,
            offset = format_args!("{offset:#x}"),
            size = b.size,
            "blob mapped in the window"
        );
        let mut body = cache.map_info().to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        (resp::OK_MAP_INFO, body)
    }

    fn unmap_blob(&mut self, req: &[u8]) -> u32 {
        if req.len() < HDR_LEN + 8 {
            return ERR_INVALID_PARAMETER;
        }
        let id = u32_at(req, HDR_LEN);
        match self.blobs.get(&id) {
            None => ERR_INVALID_RESOURCE_ID,
            Some(b) if b.mapped.is_none() => ERR_INVALID_PARAMETER,
            Some(_) => {
                if self.unmap(id) {
                    OK_NODATA
                } else {
                    ERR_UNSPEC
                }
            }
        }
    }

    /// Takes blob `id` out of the window. The offset is free again only
    /// if the renderer confirmed; otherwise the blob stays mapped in the
    /// table, so nothing else can be mapped over a registration that may
    /// still exist.
    fn unmap(&mut self, id: u32) -> bool {
        let Some(b) = self.blobs.get(&id).copied() else {
            return false;
        };
        let Some(offset) = b.mapped else {
            return true;
        };
        let r = self.renderer.unmap_blob(b.handle);
        if self.note(r, "unmap_blob").is_none() {
            return false;
        }
        self.by_offset.remove(&offset);
        if let Some(x) = self.blobs.get_mut(&id) {
            x.mapped = None;
        }
        info!(
            resource = id,
            offset = format_args!("{offset:#x}"),
            "blob unmapped"
        );
        true
    }

    /// RESOURCE_UNREF of blob `id`: unmapped first, then destroyed. The
    /// table forgets it even if the renderer failed: destroying the blob
    /// in the renderer unregisters it too, and a renderer that is gone
    /// revoked everything by exiting.
    pub fn unref(&mut self, id: u32) -> u32 {
        let Some(b) = self.blobs.get(&id).copied() else {
            return ERR_INVALID_RESOURCE_ID;
        };
        self.unmap(id);
        let r = self.renderer.destroy_blob(b.handle);
        self.note(r, "destroy_blob");
        if let Some(offset) = b.mapped {
            if self.by_offset.get(&offset) == Some(&id) {
                self.by_offset.remove(&offset);
            }
        }
        self.blobs.remove(&id);
        self.bytes -= b.size;
        debug!(id, "blob destroyed");
        OK_NODATA
    }
}

/// The response for a renderer's refusal.
fn renderer_answer(e: &RendererError) -> u32 {
    match e {
        RendererError::Refused { errno: 12, .. } => ERR_OUT_OF_MEMORY,
        RendererError::Refused { .. } => ERR_INVALID_PARAMETER,
        RendererError::Io { .. } => ERR_UNSPEC,
    }
}

//! What the device asks of the renderer process (docs/virtio-gpu.md,
//! "Decision"): contexts, host-visible blobs, and mapping a blob at an
//! offset of the window (the renderer registers its memory there with
//! `IOCTL_PRIVCMD_HOSTMEM_REGISTER`; the server then lends it on faults).
//!
//! The device keeps the guest-facing table (ids, sizes, offsets) and checks
//! every request against it before the renderer sees it; the renderer only
//! ever gets requests the device accepted. [`NoRenderer`] refuses
//! everything (a device offering no capset); `gpu-hostmem-renderer`'s
//! client implements this over a socket; tests use a fake.

use std::fmt::Debug;

use virtio_bindings::virtio_gpu as g;

/// A blob as the renderer knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHandle(pub u64);

/// How the guest may cache a mapped blob (`VIRTIO_GPU_MAP_CACHE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapCache {
    /// Write-back.
    Cached,
    /// Uncached.
    Uncached,
    /// Write-combining.
    WriteCombine,
}

impl MapCache {
    /// The `map_info` value of `RESP_OK_MAP_INFO`.
    pub fn map_info(self) -> u32 {
        match self {
            MapCache::Cached => g::VIRTIO_GPU_MAP_CACHE_CACHED,
            MapCache::Uncached => g::VIRTIO_GPU_MAP_CACHE_UNCACHED,
            MapCache::WriteCombine => g::VIRTIO_GPU_MAP_CACHE_WC,
        }
    }

    /// From a `map_info` value; `None` for anything else.
    pub fn from_map_info(v: u32) -> Option<Self> {
        match v {
            g::VIRTIO_GPU_MAP_CACHE_CACHED => Some(MapCache::Cached),
            g::VIRTIO_GPU_MAP_CACHE_UNCACHED => Some(MapCache::Uncached),
            g::VIRTIO_GPU_MAP_CACHE_WC => Some(MapCache::WriteCombine),
            _ => None,
        }
    }
}

/// A blob the device asks for (already checked against its table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobRequest {
    /// The context it belongs to.
    pub ctx_id: u32,
    /// The context's capset.
    pub capset: u32,
    /// The guest's resource id (for logs).
    pub resource_id: u32,
    /// What the context says the blob is (0: plain memory).
    pub blob_id: u64,
    /// Bytes, page aligned, not 0.
    pub size: u64,
}

/// Why the renderer did not do something.
#[derive(Debug, thiserror::Error)]
pub enum RendererError {
    /// It refused (`errno` says why, e.g. ENOMEM, EINVAL).
    #[error("the renderer refused {op}: errno {errno}")]
    Refused {
        /// The request.
        op: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// It cannot be reached or answered something that is not the protocol.
    #[error("no usable answer from the renderer to {op}: {source}")]
    Io {
        /// The request.
        op: &'static str,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

impl RendererError {
    /// The errno the error carries (EIO when the renderer is unreachable).
    pub fn errno(&self) -> i32 {
        match self {
            RendererError::Refused { errno, .. } => *errno,
            RendererError::Io { source, .. } => source.raw_os_error().unwrap_or(5),
        }
    }
}

/// The renderer retired a fence: every fence of context `ctx_id`'s ring
/// `ring_idx` up to `fence_id` is done (the commands before it ran, or
/// the renderer gave up on them: retiring says nothing about success).
/// `generation` is the one the device named when it asked for the fence
/// ([`Renderer::create_fence`]), so that an event from before a device
/// reset is not taken for a fence of the same ids after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceRetired {
    /// The context.
    pub ctx_id: u32,
    /// Its ring (0 for the global timeline's fences).
    pub ring_idx: u32,
    /// The newest fence retired on that ring.
    pub fence_id: u64,
    /// The device's reset generation the fence was asked in.
    pub generation: u64,
}

/// The renderer process, as the device drives it.
pub trait Renderer: Debug {
    /// The guest made context `ctx_id` of `capset` (a capset the device
    /// offered).
    fn create_context(&mut self, ctx_id: u32, capset: u32) -> Result<(), RendererError>;
    /// The context is gone (its blobs stay until unreferenced).
    fn destroy_context(&mut self, ctx_id: u32) -> Result<(), RendererError>;
    /// Allocates a blob.
    fn create_blob(&mut self, req: BlobRequest) -> Result<BlobHandle, RendererError>;
    /// Makes the blob's memory the window's at `offset` (page aligned,
    /// inside the window, overlapping no other mapped blob: the device
    /// checked). Returns how the guest may cache it.
    fn map_blob(&mut self, blob: BlobHandle, offset: u64) -> Result<MapCache, RendererError>;
    /// Takes the blob's memory out of the window (revoking what was lent).
    fn unmap_blob(&mut self, blob: BlobHandle) -> Result<(), RendererError>;
    /// Frees the blob (unmapped first by the device).
    fn destroy_blob(&mut self, blob: BlobHandle) -> Result<(), RendererError>;
    /// The data of `capset` at `version` (`VIRTIO_GPU_CMD_GET_CAPSET`), an
    /// offered capset whose info said `size` bytes and a version up to its
    /// `max_version` (the device checked). Anything but exactly `size`
    /// bytes is the renderer's error; the device checks that again.
    fn capset(&mut self, capset: u32, version: u32, size: u32) -> Result<Vec<u8>, RendererError>;
    /// Runs `cmds`, a command stream of context `ctx_id` of `capset`
    /// (`VIRTIO_GPU_CMD_SUBMIT_3D`): whole dwords, 1 to
    /// [`crate::renderer_proto::MAX_SUBMIT_LEN`] bytes, of a live context
    /// (the device checked). What the stream means is the capset's.
    fn submit(&mut self, ctx_id: u32, capset: u32, cmds: &[u8]) -> Result<(), RendererError>;

    /// Asks for fence `fence_id` on ring `ring_idx` (below
    /// [`crate::fence::MAX_RINGS`]) of live context `ctx_id` of `capset`,
    /// after the command streams submitted before it; the renderer
    /// reports it retired later ([`Renderer::poll_events`]), tagged with
    /// `generation`. Fence ids grow on each ring (the device checked).
    /// A renderer without fences refuses (EOPNOTSUPP).
    fn create_fence(
        &mut self,
        ctx_id: u32,
        capset: u32,
        ring_idx: u32,
        fence_id: u64,
        generation: u64,
    ) -> Result<(), RendererError> {
        let _ = (ctx_id, capset, ring_idx, fence_id, generation);
        Err(RendererError::Refused {
            op: "create_fence",
            errno: EOPNOTSUPP,
        })
    }

    /// The fences retired since the last call, without waiting (the
    /// renderer's reports, as it sent them: the device checks each).
    fn poll_events(&mut self) -> Vec<FenceRetired> {
        Vec::new()
    }

    /// True once the renderer is gone for good (its connection broke):
    /// no fence it was asked for will be reported.
    fn is_lost(&self) -> bool {
        false
    }
}

/// No renderer: every request refused with EOPNOTSUPP. The device offers
/// no capset then, so a driver that follows the rules never asks.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRenderer;

const EOPNOTSUPP: i32 = 95;

impl Renderer for NoRenderer {
    fn create_context(&mut self, _: u32, _: u32) -> Result<(), RendererError> {
        Err(RendererError::Refused {
            op: "create_context",
            errno: EOPNOTSUPP,
        })
    }
    fn destroy_context(&mut self, _: u32) -> Result<(), RendererError> {
        Err(RendererError::Refused {
            op: "destroy_context",
            errno: EOPNOTSUPP,
        })
    }
    fn create_blob(&mut self, _: BlobRequest) -> Result<BlobHandle, RendererError> {
        Err(RendererError::Refused {
            op: "create_blob",
            errno: EOPNOTSUPP,
        })
    }
    fn map_blob(&mut self, _: BlobHandle, _: u64) -> Result<MapCache, RendererError> {
        Err(RendererError::Refused {
            op: "map_blob",
            errno: EOPNOTSUPP,
        })
    }
    fn unmap_blob(&mut self, _: BlobHandle) -> Result<(), RendererError> {
        Err(RendererError::Refused {
            op: "unmap_blob",
            errno: EOPNOTSUPP,
        })
    }
    fn destroy_blob(&mut self, _: BlobHandle) -> Result<(), RendererError> {
        Err(RendererError::Refused {
            op: "destroy_blob",
            errno: EOPNOTSUPP,
        })
    }
    fn capset(&mut self, _: u32, _: u32, _: u32) -> Result<Vec<u8>, RendererError> {
        Err(RendererError::Refused {
            op: "get_capset",
            errno: EOPNOTSUPP,
        })
    }
    fn submit(&mut self, _: u32, _: u32, _: &[u8]) -> Result<(), RendererError> {
        Err(RendererError::Refused {
            op: "submit",
            errno: EOPNOTSUPP,
        })
    }
}

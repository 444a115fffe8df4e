//! What makes a blob's memory: a renderer backend. The protocol loop
//! ([`crate::RendererState`]) keeps the guest's handles, the limits and the
//! registrations; a backend answers capsets, makes contexts and blobs and
//! says where a mapped blob's memory is in this process. Two backends:
//! [`TestBackend`] (the test-only capset, memfds of ours) and
//! [`crate::virgl::VirglBackend`] (venus through libvirglrenderer, loaded
//! at run time).

use std::ffi::CString;
use std::os::fd::RawFd;

use tracing::warn;

use gpu_hostmem_virtio_gpu::blob::{TEST_CAPSET_DATA, TEST_CAPSET_ID, TEST_CAPSET_VERSION};

use crate::memfd::MemfdBlob;
use crate::pattern;

/// `VIRTIO_GPU_MAP_CACHE_CACHED`.
pub const MAP_CACHE_CACHED: u32 = 1;

/// What `VIRTIO_GPU_CMD_GET_CAPSET_INFO` answers for a capset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsetInfo {
    /// Newest version.
    pub max_version: u32,
    /// Bytes of its data.
    pub max_size: u32,
}

/// A blob the guest asked for, already checked against the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobArgs {
    /// Its context.
    pub ctx_id: u32,
    /// The guest's resource id.
    pub resource_id: u32,
    /// What the context says the blob is.
    pub blob_id: u64,
    /// Bytes.
    pub size: u64,
}

/// Where a mapped blob's memory is in this process: the range to register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobMapping {
    /// Page-aligned address.
    pub addr: usize,
    /// Bytes (page multiple, the blob's size).
    pub len: u64,
    /// `VIRTIO_GPU_MAP_CACHE_*`.
    pub map_info: u32,
}

/// A blob of a backend; dropping it frees it (after
/// [`Backend::unmap_blob`] if it was mapped).
pub trait BackendBlob {
    /// Bytes, as created.
    fn size(&self) -> u64;
    /// Word `i` as this process sees it, where the backend can tell.
    fn read_word(&self, _i: usize) -> Option<u32> {
        None
    }
    /// Pages whose first word the guest stamped (the test capset's check
    /// that the host sees the guest's writes); 0 where that means nothing.
    fn guest_stamps(&self) -> u64 {
        0
    }
}

/// The blobs a command stream may name, by the guest's resource id.
pub trait BlobLookup<B> {
    /// The blob of resource `resource_id`, if there is one.
    fn by_resource(&mut self, resource_id: u32) -> Option<&mut B>;
}

/// A command stream as dwords (little endian on the wire, as virtio is),
/// `None` unless it is whole dwords.
pub fn dwords(cmds: &[u8]) -> Option<Vec<u32>> {
    (cmds.len() % 4 == 0).then(|| {
        cmds.chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect()
    })
}

/// A test capset command: store `value` at 32-bit word `word` of the blob
/// of resource `resource_id` (four dwords: the command, `resource_id`,
/// `word`, `value`).
pub const TEST_CMD_STORE: u32 = 1;
/// A test capset command: hold back the retirement of the fences created
/// on ring `ring` of this context from now on (four dwords: the command,
/// `ring`, 0, 0), so that a test sees the device keep their responses. A
/// test-only knob, as the capset is.
pub const TEST_CMD_HOLD: u32 = 2;
/// A test capset command: retire the fences held on ring `ring`, in order,
/// and stop holding (four dwords: the command, `ring`, 0, 0).
pub const TEST_CMD_RELEASE: u32 = 3;
/// Dwords of a test capset command.
pub const TEST_CMD_DWORDS: usize = 4;
/// Rings a context has (as the device's `fence::MAX_RINGS`).
pub const MAX_RINGS: u32 = gpu_hostmem_virtio_gpu::fence::MAX_RINGS;
/// Most fences a test context holds back.
pub const TEST_MAX_HELD: usize = 1024;

/// A renderer backend. Errors are errnos for the device's reply.
pub trait Backend {
    /// A context, destroyed on drop.
    type Context;
    /// A blob, freed on drop.
    type Blob: BackendBlob;

    /// The capset's info, `None` for a capset this backend does not serve.
    fn capset_info(&self, capset: u32) -> Option<CapsetInfo>;
    /// The capset's data at `version`.
    fn capset(&self, capset: u32, version: u32) -> Result<Vec<u8>, i32>;
    /// A context `ctx_id` of `capset`.
    fn create_context(&mut self, ctx_id: u32, capset: u32) -> Result<Self::Context, i32>;
    /// A blob in `ctx`.
    fn create_blob(&mut self, ctx: &Self::Context, args: &BlobArgs) -> Result<Self::Blob, i32>;
    /// Maps `blob` in this process (if it is not yet) and says where.
    fn map_blob(&mut self, blob: &mut Self::Blob) -> Result<BlobMapping, i32>;
    /// Undoes [`Backend::map_blob`] (the caller unregistered it first).
    fn unmap_blob(&mut self, blob: &mut Self::Blob);
    /// Runs `cmds`, a command stream of `ctx` (whole dwords, not empty,
    /// checked by the caller); `blobs` finds blobs by resource id for a
    /// backend that keeps none of its own.
    fn submit(
        &mut self,
        ctx: &mut Self::Context,
        cmds: &[u8],
        blobs: &mut dyn BlobLookup<Self::Blob>,
    ) -> Result<(), i32>;

    /// Fence `fence_id` on ring `ring` (below [`MAX_RINGS`]) of `ctx`,
    /// retired after the streams submitted before it; ids grow on each
    /// ring (the caller checked). Reported by
    /// [`Backend::retired_fences`]. A backend without fences refuses.
    fn create_fence(
        &mut self,
        _ctx: &mut Self::Context,
        _ring: u32,
        _fence_id: u64,
    ) -> Result<(), i32> {
        Err(libc::EOPNOTSUPP)
    }

    /// The fences of `ctx` retired since the last call, as (ring, fence id),
    /// in order on each ring (a later id retires the earlier ones).
    fn retired_fences(&mut self, _ctx: &mut Self::Context) -> Vec<(u32, u64)> {
        Vec::new()
    }

    /// An fd that becomes readable when `ctx` may have fences to retire
    /// (owned by the backend, valid while `ctx` lives).
    fn poll_fd(&self, _ctx: &Self::Context) -> Option<RawFd> {
        None
    }
}

/// The test-only capset ([`TEST_CAPSET_ID`]): blob_id 0 blobs are memfds
/// of ours filled with [`pattern`], mapped for their whole life.
#[derive(Debug, Default)]
pub struct TestBackend;

/// A context of the test capset: its fences. Its commands run when
/// submitted, so a fence retires at once, unless a HOLD of its ring holds
/// it back until a RELEASE.
#[derive(Debug, Default)]
pub struct TestContext {
    /// Rings whose fences are held (bit per ring).
    held: u64,
    /// Fences held, in creation order: (ring, id).
    waiting: Vec<(u32, u64)>,
    /// Fences retired, not reported yet.
    retired: Vec<(u32, u64)>,
}

/// A blob of the test capset.
#[derive(Debug)]
pub struct TestBlob {
    mem: MemfdBlob,
    resource_id: u32,
}

impl BackendBlob for TestBlob {
    fn size(&self) -> u64 {
        self.mem.len() as u64
    }

    fn read_word(&self, i: usize) -> Option<u32> {
        self.mem.read(i)
    }

    fn guest_stamps(&self) -> u64 {
        let pages = self.mem.len() / 4096;
        (0..pages)
            .filter(|&p| {
                let i = p * 1024;
                self.mem.read(i) == Some(!pattern(self.resource_id, i as u64))
            })
            .count() as u64
    }
}

impl Backend for TestBackend {
    type Context = TestContext;
    type Blob = TestBlob;

    fn capset_info(&self, capset: u32) -> Option<CapsetInfo> {
        (capset == TEST_CAPSET_ID).then_some(CapsetInfo {
            max_version: TEST_CAPSET_VERSION,
            max_size: TEST_CAPSET_DATA.len() as u32,
        })
    }

    fn capset(&self, capset: u32, version: u32) -> Result<Vec<u8>, i32> {
        if capset != TEST_CAPSET_ID || version == 0 || version > TEST_CAPSET_VERSION {
            return Err(libc::EINVAL);
        }
        Ok(TEST_CAPSET_DATA.to_vec())
    }

    fn create_context(&mut self, _ctx_id: u32, capset: u32) -> Result<TestContext, i32> {
        if capset != TEST_CAPSET_ID {
            return Err(libc::EINVAL);
        }
        Ok(TestContext::default())
    }

    fn create_blob(&mut self, _ctx: &TestContext, args: &BlobArgs) -> Result<TestBlob, i32> {
        // The test context knows one kind of blob: plain memory.
        if args.blob_id != 0 || args.size == 0 || args.size % 4096 != 0 {
            return Err(libc::EINVAL);
        }
        let len = usize::try_from(args.size).map_err(|_| libc::ENOMEM)?;
        let name = CString::new(format!("gpu-hostmem-blob-{}", args.resource_id))
            .map_err(|_| libc::EINVAL)?;
        let mem = MemfdBlob::new(&name, len).map_err(|e| {
            warn!(%e, "blob memory");
            e.errno()
        })?;
        for i in 0..mem.words() {
            mem.write(i, pattern(args.resource_id, i as u64));
        }
        Ok(TestBlob {
            mem,
            resource_id: args.resource_id,
        })
    }

    fn map_blob(&mut self, blob: &mut TestBlob) -> Result<BlobMapping, i32> {
        Ok(BlobMapping {
            addr: blob.mem.addr(),
            len: blob.mem.len() as u64,
            map_info: MAP_CACHE_CACHED,
        })
    }

    fn unmap_blob(&mut self, _blob: &mut TestBlob) {}

    /// [`TEST_CMD_STORE`], [`TEST_CMD_HOLD`] and [`TEST_CMD_RELEASE`]
    /// commands, checked all before any runs: a stream that is not whole
    /// commands, an unknown command, resource, word or ring is refused
    /// (EINVAL) and changes nothing.
    fn submit(
        &mut self,
        ctx: &mut TestContext,
        cmds: &[u8],
        blobs: &mut dyn BlobLookup<TestBlob>,
    ) -> Result<(), i32> {
        let words = dwords(cmds).ok_or(libc::EINVAL)?;
        if words.is_empty() || words.len() % TEST_CMD_DWORDS != 0 {
            return Err(libc::EINVAL);
        }
        let commands = words.chunks_exact(TEST_CMD_DWORDS);
        for c in commands.clone() {
            let ok = match c[0] {
                TEST_CMD_STORE => blobs
                    .by_resource(c[1])
                    .is_some_and(|b| (c[2] as usize) < b.mem.words()),
                TEST_CMD_HOLD | TEST_CMD_RELEASE => c[1] < MAX_RINGS && c[2] == 0 && c[3] == 0,
                _ => false,
            };
            if !ok {
                return Err(libc::EINVAL);
            }
        }
        for c in commands {
            match c[0] {
                TEST_CMD_HOLD => ctx.held |= 1 << c[1],
                TEST_CMD_RELEASE => {
                    ctx.held &= !(1 << c[1]);
                    let (now, still): (Vec<_>, Vec<_>) = std::mem::take(&mut ctx.waiting)
                        .into_iter()
                        .partition(|(r, _)| *r == c[1]);
                    ctx.waiting = still;
                    ctx.retired.extend(now);
                }
                _ => {
                    if let Some(b) = blobs.by_resource(c[1]) {
                        b.mem.write(c[2] as usize, c[3]);
                    }
                }
            }
        }
        Ok(())
    }

    /// Retired at once (the commands before it ran when submitted), or
    /// held while its ring is.
    fn create_fence(&mut self, ctx: &mut TestContext, ring: u32, fence_id: u64) -> Result<(), i32> {
        if ring >= MAX_RINGS {
            return Err(libc::EINVAL);
        }
        if ctx.held & (1 << ring) != 0 {
            if ctx.waiting.len() >= TEST_MAX_HELD {
                return Err(libc::ENOMEM);
            }
            ctx.waiting.push((ring, fence_id));
        } else {
            ctx.retired.push((ring, fence_id));
        }
        Ok(())
    }

    fn retired_fences(&mut self, ctx: &mut TestContext) -> Vec<(u32, u64)> {
        std::mem::take(&mut ctx.retired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_backend_serves_only_the_test_capset() {
        let mut b = TestBackend;
        assert_eq!(
            b.capset_info(TEST_CAPSET_ID),
            Some(CapsetInfo {
                max_version: 1,
                max_size: 16
            })
        );
        assert_eq!(b.capset_info(4), None);
        assert_eq!(b.capset(TEST_CAPSET_ID, 1), Ok(TEST_CAPSET_DATA.to_vec()));
        assert_eq!(b.capset(TEST_CAPSET_ID, 2), Err(libc::EINVAL));
        assert!(b.create_context(1, 4).is_err());
    }

    struct NoBlobs;
    impl BlobLookup<TestBlob> for NoBlobs {
        fn by_resource(&mut self, _: u32) -> Option<&mut TestBlob> {
            None
        }
    }

    fn cmd(c: [u32; 4]) -> Vec<u8> {
        c.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn test_fences_retire_at_once_unless_their_ring_is_held() {
        let mut b = TestBackend;
        let mut c = b.create_context(1, TEST_CAPSET_ID).expect("context");
        b.create_fence(&mut c, 0, 1).expect("fence");
        assert_eq!(b.retired_fences(&mut c), [(0, 1)]);
        b.submit(&mut c, &cmd([TEST_CMD_HOLD, 2, 0, 0]), &mut NoBlobs)
            .expect("hold");
        b.create_fence(&mut c, 2, 2).expect("fence");
        b.create_fence(&mut c, 0, 3).expect("fence");
        b.create_fence(&mut c, 2, 4).expect("fence");
        assert_eq!(b.retired_fences(&mut c), [(0, 3)], "ring 2 held");
        b.submit(&mut c, &cmd([TEST_CMD_RELEASE, 2, 0, 0]), &mut NoBlobs)
            .expect("release");
        assert_eq!(b.retired_fences(&mut c), [(2, 2), (2, 4)]);
        // A ring out of range, or junk in the other words, runs nothing.
        for bad in [
            [TEST_CMD_HOLD, 64, 0, 0],
            [TEST_CMD_RELEASE, 0, 1, 0],
            [9, 0, 0, 0],
        ] {
            assert_eq!(b.submit(&mut c, &cmd(bad), &mut NoBlobs), Err(libc::EINVAL));
        }
        assert_eq!(b.create_fence(&mut c, 64, 5), Err(libc::EINVAL));
    }
}

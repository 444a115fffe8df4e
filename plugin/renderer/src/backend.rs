//! What makes a blob's memory: a renderer backend. The protocol loop
//! ([`crate::RendererState`]) keeps the guest's handles, the limits and the
//! registrations; a backend answers capsets, makes contexts and blobs and
//! says where a mapped blob's memory is in this process. Two backends:
//! [`TestBackend`] (the test-only capset, memfds of ours) and
//! [`crate::virgl::VirglBackend`] (venus through libvirglrenderer, loaded
//! at run time).

use std::ffi::CString;

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

/// The test capset's one command: store `value` at 32-bit word `word` of
/// the blob of resource `resource_id` (four dwords: the command,
/// `resource_id`, `word`, `value`).
pub const TEST_CMD_STORE: u32 = 1;
/// Dwords of a test capset command.
pub const TEST_CMD_DWORDS: usize = 4;

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
}

/// The test-only capset ([`TEST_CAPSET_ID`]): blob_id 0 blobs are memfds
/// of ours filled with [`pattern`], mapped for their whole life.
#[derive(Debug, Default)]
pub struct TestBackend;

/// A context of the test capset (nothing to hold).
#[derive(Debug)]
pub struct TestContext;

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
        Ok(TestContext)
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

    /// [`TEST_CMD_STORE`] commands, checked all before any runs: a stream
    /// that is not whole commands, an unknown command, resource or word
    /// is refused (EINVAL) and changes nothing.
    fn submit(
        &mut self,
        _ctx: &mut TestContext,
        cmds: &[u8],
        blobs: &mut dyn BlobLookup<TestBlob>,
    ) -> Result<(), i32> {
        let words = dwords(cmds).ok_or(libc::EINVAL)?;
        if words.is_empty() || words.len() % TEST_CMD_DWORDS != 0 {
            return Err(libc::EINVAL);
        }
        let commands = words.chunks_exact(TEST_CMD_DWORDS);
        for c in commands.clone() {
            let fits = blobs
                .by_resource(c[1])
                .is_some_and(|b| (c[2] as usize) < b.mem.words());
            if c[0] != TEST_CMD_STORE || !fits {
                return Err(libc::EINVAL);
            }
        }
        for c in commands {
            if let Some(b) = blobs.by_resource(c[1]) {
                b.mem.write(c[2] as usize, c[3]);
            }
        }
        Ok(())
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
}

//! The virtio-gpu device as the transport sees it: its feature bits, its
//! two queues and `struct virtio_gpu_config`. Commands on the queues come
//! in a later stage (docs/virtio-gpu.md).

use virtio_bindings::virtio_gpu::{
    VIRTIO_GPU_F_CONTEXT_INIT, VIRTIO_GPU_F_RESOURCE_BLOB, VIRTIO_GPU_F_VIRGL,
};

use crate::blob::{CapsetOffer, TEST_CAPSET};
use crate::transport::{VirtioDevice, F_VERSION_1};

/// Index of the control queue.
pub const CONTROL_QUEUE: u16 = 0;
/// Index of the cursor queue.
pub const CURSOR_QUEUE: u16 = 1;
/// Largest control queue (QEMU's size).
pub const CONTROL_QUEUE_SIZE: u16 = 256;
/// Largest cursor queue (QEMU's size).
pub const CURSOR_QUEUE_SIZE: u16 = 16;

/// `sizeof(struct virtio_gpu_config)`.
pub const CONFIG_LEN: u64 =
    std::mem::size_of::<virtio_bindings::virtio_gpu::virtio_gpu_config>() as u64;
const EVENTS_READ: u64 = 0;
const EVENTS_CLEAR: u64 = 4;
const NUM_SCANOUTS: u64 = 8;
const NUM_CAPSETS: u64 = 12;

/// Feature bit `VIRTIO_GPU_F_RESOURCE_BLOB`.
pub const F_RESOURCE_BLOB: u64 = 1 << VIRTIO_GPU_F_RESOURCE_BLOB;
/// Feature bit `VIRTIO_GPU_F_CONTEXT_INIT`.
pub const F_CONTEXT_INIT: u64 = 1 << VIRTIO_GPU_F_CONTEXT_INIT;
/// Feature bit `VIRTIO_GPU_F_VIRGL` (3D commands; Linux also requires it
/// for `VIRTGPU_BLOB_MEM_HOST3D` blobs, `verify_blob()`).
pub const F_VIRGL: u64 = 1 << VIRTIO_GPU_F_VIRGL;

/// What the device offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuConfig {
    /// Device feature bits besides `VIRTIO_F_VERSION_1`.
    pub features: u64,
    /// `num_scanouts` (0: no display; Linux then disables KMS and keeps
    /// the render node).
    pub num_scanouts: u32,
    /// The capsets offered, as the renderer described them (the device
    /// keeps the valid ones, `blob::Blobs::new`; `num_capsets` is their
    /// number). None by default.
    pub capsets: Vec<CapsetOffer>,
}

impl GpuConfig {
    /// Offers `capsets`, and VIRGL with them (Linux refuses `HOST3D`
    /// blobs and CONTEXT_INIT without VIRGL). Nothing changes for an
    /// empty list.
    pub fn with_capsets(self, capsets: &[CapsetOffer]) -> Self {
        if capsets.is_empty() {
            return self;
        }
        GpuConfig {
            features: self.features | F_VIRGL,
            capsets: capsets.to_vec(),
            ..self
        }
    }

    /// Stage 2's test configuration: the test-only capset
    /// ([`TEST_CAPSET`]). Never the default: the capset is ours and only
    /// for tests.
    pub fn with_test_capset(self) -> Self {
        self.with_capsets(&[TEST_CAPSET])
    }
}

impl Default for GpuConfig {
    /// Stage 1: blobs and context init offered, no renderer yet (so no
    /// VIRGL and no capsets), no display.
    fn default() -> Self {
        GpuConfig {
            features: F_RESOURCE_BLOB | F_CONTEXT_INIT,
            num_scanouts: 0,
            capsets: Vec::new(),
        }
    }
}

/// The virtio-gpu device's configuration state.
#[derive(Clone, Debug)]
pub struct GpuDevice {
    cfg: GpuConfig,
    events_read: u32,
    resets: u64,
}

impl GpuDevice {
    /// A device offering `cfg`.
    pub fn new(cfg: GpuConfig) -> Self {
        GpuDevice {
            cfg,
            events_read: 0,
            resets: 0,
        }
    }

    /// Raise device events (`VIRTIO_GPU_EVENT_DISPLAY`); the caller then
    /// signals a configuration change.
    pub fn raise_events(&mut self, events: u32) {
        self.events_read |= events;
    }

    /// How many times the driver reset the device.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN as usize] {
        let mut b = [0u8; CONFIG_LEN as usize];
        let mut put = |at: u64, v: u32| {
            let at = at as usize;
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };
        put(EVENTS_READ, self.events_read);
        put(EVENTS_CLEAR, 0);
        put(NUM_SCANOUTS, self.cfg.num_scanouts);
        put(NUM_CAPSETS, self.cfg.capsets.len() as u32);
        b
    }
}

impl VirtioDevice for GpuDevice {
    fn features(&self) -> u64 {
        self.cfg.features | F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[CONTROL_QUEUE_SIZE, CURSOR_QUEUE_SIZE]
    }

    fn config_len(&self) -> u64 {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let b = self.config_bytes();
        let start = offset as usize;
        if let Some(src) = b.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only events_clear is writable: each 1 clears that event.
        if offset == EVENTS_CLEAR && data.len() == 4 {
            let mut v = [0u8; 4];
            v.copy_from_slice(data);
            self.events_read &= !u32::from_le_bytes(v);
        }
    }

    fn reset(&mut self) {
        self.events_read = 0;
        self.resets += 1;
    }
}

//! The virtio-gpu device as the IOREQ server's [`FunctionModel`]: the
//! [`VirtioGpu`] engine over the guest's memory `M` (foreign mappings on
//! Xen, the simulator's RAM in tests). Config cycles and BAR2 accesses go
//! to the engine; the window BAR stays the server's. On a reset of the
//! device, and when the server stops, the memory's mappings are dropped.

use std::ops::Range;

use tracing::info;

use gpu_hostmem_core::model::{Background, FunctionModel, MmioAnswer, ModelChange};
use gpu_hostmem_core::pci::{PciError, PciFunction};

use crate::device::GpuConfig;
use crate::engine::VirtioGpu;
use crate::memory::GuestMemory;
use crate::renderer::Renderer;
use crate::{Action, RestoreError};

/// Bytes of 2D resources a guest may have at a time (stage 1 keeps them
/// in the server; they move to the renderer with stage 2).
pub const RESOURCE_LIMIT: u64 = 64 << 20;

/// The virtio-gpu device over guest memory `M`.
#[derive(Debug)]
pub struct GpuModel<M> {
    dev: VirtioGpu,
    mem: M,
    activations: u64,
    resets: u64,
}

impl<M: GuestMemory> GpuModel<M> {
    /// The stage-1 device (2D, no renderer) with a window of `window_size`
    /// bytes, reading the guest's rings through `mem`.
    pub fn new(window_size: u64, subsystem: u16, mem: M) -> Result<Self, PciError> {
        Ok(GpuModel {
            dev: VirtioGpu::new(window_size, subsystem, GpuConfig::default(), RESOURCE_LIMIT)?,
            mem,
            activations: 0,
            resets: 0,
        })
    }

    /// A device offering `cfg` whose contexts and blobs `renderer` serves
    /// (stage 2: the capsets `cfg` offers).
    pub fn with_renderer(
        window_size: u64,
        subsystem: u16,
        mem: M,
        cfg: GpuConfig,
        renderer: Box<dyn Renderer>,
    ) -> Result<Self, PciError> {
        Ok(GpuModel {
            dev: VirtioGpu::with_renderer(window_size, subsystem, cfg, RESOURCE_LIMIT, renderer)?,
            mem,
            activations: 0,
            resets: 0,
        })
    }

    /// The engine.
    pub fn device(&self) -> &VirtioGpu {
        &self.dev
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    fn note(&mut self, a: &Action) {
        if a.reset {
            self.resets += 1;
            self.mem.forget_mappings();
        }
        if a.activated {
            self.activations += 1;
            // The driver can reset and start the device at will: the
            // first start is logged, the others are counted in status.
            if self.activations == 1 {
                info!(
                    features =
                        format_args!("{:#x}", self.dev.pci().transport().negotiated_features()),
                    running = self.dev.is_running(),
                    "virtio-gpu: the driver started the device (DRIVER_OK)"
                );
            }
        }
    }
}

impl<M: GuestMemory> FunctionModel for GpuModel<M> {
    type RestoreError = RestoreError;

    fn window(&self) -> &PciFunction {
        self.dev.pci().config().inner()
    }

    fn config_read(&self, reg: u32, size: u32) -> u32 {
        self.dev.config_read(reg, size)
    }

    fn config_write(&mut self, reg: u32, size: u32, value: u32) -> ModelChange {
        let (change, action) = self.dev.config_write(reg, size, value);
        ModelChange {
            window: change.window,
            regs: change.regs,
            intx: action.intx,
        }
    }

    fn saved(&self) -> String {
        self.dev.saved()
    }

    fn restore(&mut self, saved: &str) -> Result<bool, RestoreError> {
        self.dev.restore(saved)?;
        self.mem.forget_mappings();
        Ok(self.dev.pci().intx_level())
    }

    fn regs(&self) -> Option<Range<u64>> {
        self.dev.pci().config().active_regs()
    }

    fn mmio(&mut self, addr: u64, size: u32, write: Option<u64>) -> Option<MmioAnswer> {
        let (data, action) = match write {
            None => self.dev.mmio_read(addr, size)?,
            Some(v) => (0, self.dev.mmio_write(&mut self.mem, addr, size, v)?),
        };
        self.note(&action);
        Some(MmioAnswer {
            data,
            intx: action.intx,
        })
    }

    fn background(&mut self) -> Background {
        // What the saved line holds that this can change: the ring
        // positions (one more answered per used entry), the ISR and the
        // status (NEEDS_RESET on a broken ring). Cheaper than comparing
        // saved lines at every wake-up of the server.
        let state = |d: &VirtioGpu| {
            let t = d.pci().transport();
            (d.served(), t.isr(), t.status())
        };
        let before = state(&self.dev);
        let a = self.dev.poll_renderer(&mut self.mem);
        self.note(&a);
        let after = state(&self.dev);
        Background {
            changed: before != after,
            intx: a.intx,
        }
    }

    fn release(&mut self) {
        self.mem.forget_mappings();
    }

    fn summary(&self) -> Option<String> {
        let t = self.dev.pci().transport();
        let b = self.dev.blobs().stats();
        let f = self.dev.fence_stats();
        let blobs = if self.dev.blobs().capsets().is_empty() {
            String::new()
        } else {
            format!(
                ", contexts {}, blobs {} ({} bytes), mapped {} ({} bytes), submits {} ({} bytes), renderer errors {}, fences kept {} (waiting {}, answered {}, ended {}, events ignored {})",
                b.contexts,
                b.blobs,
                b.bytes,
                b.mapped,
                b.mapped_bytes,
                b.submits,
                b.submitted_bytes,
                b.renderer_errors,
                f.kept,
                f.waiting,
                f.answered,
                f.ended,
                f.ignored_events
            )
        };
        Some(format!(
            "virtio-gpu status {:#04x}{}, requests answered {}, 2D resource bytes {}, started {}, resets {}, INTA {}{blobs}",
            t.status(),
            if self.dev.is_running() { " (running)" } else { "" },
            self.dev.served(),
            self.dev.gpu().bytes(),
            self.activations,
            self.resets,
            if self.dev.pci().intx_level() { "high" } else { "low" },
        ))
    }
}

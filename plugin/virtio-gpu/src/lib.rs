//! gpu-hostmem as a virtio-gpu device model, as pure logic (no `unsafe`, no
//! Xen): the first stage of issue 18, described in `docs/virtio-gpu.md`.
//!
//! - [`layout`]: the virtio-pci capabilities and the register BAR layout.
//! - [`config_space`]: the PCI function's configuration space, today's
//!   window BAR0/BAR1 plus the virtio layer (BAR2, capabilities).
//! - [`transport`]: the virtio-pci modern registers and the device status
//!   state machine.
//! - [`device`]: the virtio-gpu device's features, queues and config.
//! - [`engine`]: all of it as the IOREQ server drives it: queues built at
//!   DRIVER_OK, served on notification, dropped on reset.
//! - [`gpu2d`]: the 2D commands of the control queue.
//! - [`blob`]: contexts, capsets and host-visible blobs (stage 2).
//! - [`fence`]: the responses of fenced commands, kept until their fence
//!   is done.
//! - [`renderer`]: what the device asks of the renderer process.
//! - [`renderer_proto`]: the socket protocol to that process, and the
//!   device's side of it.
//! - [`memory`]: guest memory as fallible copies ([`memory::SimMemory`]
//!   for tests and the simulator).
//! - [`model`]: the device as the IOREQ server's `FunctionModel`.
//! - [`queue`]: the device side of a split virtqueue, checked against a
//!   hostile driver.
//!
//! [`VirtioGpuPci`] puts them together behind the calls an IOREQ server
//! makes (config cycles, MMIO to BAR2) and answers with what to do (BAR
//! ranges to route, the INTx level, a queue to service).
//! [`model::GpuModel`] is what `gpu-hostmem-ioreqd` serves with
//! `device: virtio-gpu`; with `device: hostmem` (the default) nothing here
//! is used.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blob;
pub mod config_space;
pub mod device;
pub mod engine;
pub mod fence;
pub mod gpu2d;
pub mod layout;
pub mod memory;
pub mod model;
pub mod queue;
pub mod renderer;
pub mod renderer_proto;
pub mod transport;

use tracing::debug;

use gpu_hostmem_core::pci::PciError;

pub use config_space::{ConfigChange, VirtioGpuFunction, VirtioGpuFunctionState};

/// Why a saved state is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The PCI part.
    #[error("PCI state: {0}")]
    Pci(#[from] PciError),
    /// The transport part.
    #[error("transport state: {0}")]
    Transport(#[from] transport::StateError),
    /// The text does not parse.
    #[error("saved state {0:?} is malformed")]
    Malformed(String),
}
pub use transport::{Effect, Transport, VirtioDevice};

/// What the IOREQ server must do after an access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Action {
    /// Set the function's INTA to this level (`XEN_DMOP_set_pci_intx_level`).
    pub intx: Option<bool>,
    /// Service this queue (the driver notified it, the device is live and
    /// may master the bus).
    pub notify: Option<u16>,
    /// The device went live.
    pub activated: bool,
    /// The device was reset: stop using its queues.
    pub reset: bool,
}

/// The virtio-gpu PCI function: configuration space and transport.
#[derive(Debug)]
pub struct VirtioGpuPci<D> {
    config: VirtioGpuFunction,
    transport: Transport<D>,
    line: bool,
}

impl<D: VirtioDevice> VirtioGpuPci<D> {
    /// The function with a window of `window_size` bytes in front of
    /// `device`.
    pub fn new(window_size: u64, subsystem: u16, device: D) -> Result<Self, PciError> {
        let config = VirtioGpuFunction::new(
            VirtioGpuFunction::ids(subsystem),
            window_size,
            device.config_len(),
        )?;
        Ok(VirtioGpuPci {
            config,
            transport: Transport::new(device),
            line: false,
        })
    }

    /// Configuration space.
    pub fn config(&self) -> &VirtioGpuFunction {
        &self.config
    }

    /// The transport.
    pub fn transport(&self) -> &Transport<D> {
        &self.transport
    }

    /// The transport, mutably (for the device's side).
    pub fn transport_mut(&mut self) -> &mut Transport<D> {
        &mut self.transport
    }

    /// The level INTA is at, as last reported.
    pub fn intx_level(&self) -> bool {
        self.line
    }

    /// A config read.
    pub fn config_read(&self, reg: u32, size: u32) -> u32 {
        self.config.read(reg, size)
    }

    /// A config write: the BAR changes, and INTA if INTX_DISABLE changed.
    pub fn config_write(&mut self, reg: u32, size: u32, value: u32) -> (ConfigChange, Action) {
        let change = self.config.write(reg, size, value);
        let action = self.finish(Effect::default());
        (change, action)
    }

    /// Offset in BAR2 of guest-physical `addr`, if BAR2 decodes it.
    fn regs_offset(&self, addr: u64, size: u32) -> Option<u64> {
        let r = self.config.active_regs()?;
        let end = addr.checked_add(u64::from(size))?;
        (addr >= r.start && end <= r.end).then(|| addr - r.start)
    }

    /// An MMIO read; `None` if `addr` is not in the register BAR.
    pub fn mmio_read(&mut self, addr: u64, size: u32) -> Option<(u64, Action)> {
        let off = self.regs_offset(addr, size)?;
        let (v, effect) = self.transport.read(off, size);
        Some((v, self.finish(effect)))
    }

    /// An MMIO write; `None` if `addr` is not in the register BAR.
    pub fn mmio_write(&mut self, addr: u64, size: u32, value: u64) -> Option<Action> {
        let off = self.regs_offset(addr, size)?;
        let effect = self.transport.write(off, size, value);
        Some(self.finish(effect))
    }

    /// The device put buffers in a used ring: interrupt the driver.
    pub fn signal_used(&mut self) -> Action {
        let e = self.transport.signal_used();
        self.finish(e)
    }

    /// The device configuration changed: interrupt the driver.
    pub fn signal_config_change(&mut self) -> Action {
        let e = self.transport.signal_config_change();
        self.finish(e)
    }

    /// The function's driver-written state and the transport's, for a
    /// restarted server.
    pub fn state(&self) -> (VirtioGpuFunctionState, transport::TransportState) {
        (self.config.state(), self.transport.state())
    }

    /// Takes a saved state (nothing changes if either part is refused);
    /// the action re-asserts INTA if the ISR says it was raised.
    pub fn restore(
        &mut self,
        function: &VirtioGpuFunctionState,
        transport: &transport::TransportState,
    ) -> Result<Action, RestoreError> {
        let mut config = self.config.clone();
        config.restore(function)?;
        self.transport.restore(transport)?;
        self.config = config;
        self.line = false;
        Ok(self.finish(Effect::default()))
    }

    /// A queue broke a rule (or its memory is unreachable): NEEDS_RESET
    /// and a configuration interrupt; the caller stops using the queues.
    pub fn device_error(&mut self) -> Action {
        let e = self.transport.set_needs_reset();
        self.finish(e)
    }

    /// Turns a transport effect into an action: the notification only if
    /// the device may master the bus, INTA from the ISR and INTX_DISABLE.
    fn finish(&mut self, e: Effect) -> Action {
        let notify = match e.notify {
            Some(q) if !self.config.bus_master() => {
                debug!(
                    queue = q,
                    "notification while bus mastering is off: ignored"
                );
                None
            }
            n => n,
        };
        let want = self.transport.isr() != 0 && !self.config.intx_disabled();
        let intx = (want != self.line).then_some(want);
        self.line = want;
        Action {
            intx,
            notify,
            activated: e.activated,
            reset: e.reset,
        }
    }
}

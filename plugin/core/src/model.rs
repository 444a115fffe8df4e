//! The device the server's PCI function presents to the guest.
//!
//! The window BAR is always [`PciFunction`]'s, lent page by page by
//! [`crate::server`]. A [`FunctionModel`] decides everything else: what
//! config reads return, and whether the function has a register BAR of
//! its own, emulated access by access (virtio-gpu's BAR2, in
//! `gpu-hostmem-virtio-gpu`). [`PciFunction`] itself is the plain model:
//! the window and nothing more (`device: hostmem`).

use std::ops::Range;

use crate::pci::{BarChange, PciError, PciFunction};

/// What a config write changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelChange {
    /// The window BAR.
    pub window: BarChange,
    /// The register BAR (emulated MMIO, never lent).
    pub regs: BarChange,
    /// Set the function's INTA to this level.
    pub intx: Option<bool>,
}

/// The answer to an access to the register BAR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmioAnswer {
    /// Data for a read.
    pub data: u64,
    /// Set the function's INTA to this level.
    pub intx: Option<bool>,
}

/// What the device's own work between accesses did
/// ([`FunctionModel::background`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Background {
    /// Its state changed (the server saves it).
    pub changed: bool,
    /// Set the function's INTA to this level.
    pub intx: Option<bool>,
}

/// The device behind the server's PCI function. Every method takes what
/// the guest wrote and never fails on it: a value the device refuses ends
/// in an error status of the device, not in an error of the server.
pub trait FunctionModel {
    /// Why a saved state is refused.
    type RestoreError: std::error::Error + Send + Sync + 'static;

    /// The function that owns the window BAR.
    fn window(&self) -> &PciFunction;

    /// A config read of `size` (1, 2 or 4) bytes at `reg`.
    fn config_read(&self, reg: u32, size: u32) -> u32;

    /// A config write.
    fn config_write(&mut self, reg: u32, size: u32, value: u32) -> ModelChange;

    /// The guest-written state, one line of a fixed length for a given
    /// model, for a restarted server.
    fn saved(&self) -> String;

    /// Takes what [`FunctionModel::saved`] wrote; nothing changes if it is
    /// refused. Returns the INTA level the device has after it.
    fn restore(&mut self, saved: &str) -> Result<bool, Self::RestoreError>;

    /// The register BAR's range while it decodes.
    fn regs(&self) -> Option<Range<u64>> {
        None
    }

    /// An access of `size` bytes at `addr` (a read when `write` is
    /// `None`); `None` if `addr` is not in the register BAR. The state
    /// may have changed after it: the server saves it.
    fn mmio(&mut self, addr: u64, size: u32, write: Option<u64>) -> Option<MmioAnswer> {
        let _ = (addr, size, write);
        None
    }

    /// Work the device does on its own between the guest's accesses (the
    /// virtio-gpu device answers fenced commands whose fences its renderer
    /// retired). The server calls it after every wake-up, so it must not
    /// block and should cost little when there is nothing to do: whether
    /// its state changed (the server then saves it) and INTA's level.
    fn background(&mut self) -> Background {
        Background::default()
    }

    /// The device was detached from the guest's memory (the server
    /// stops): drop what maps it.
    fn release(&mut self) {}

    /// One line for `gpu-hostmem status`, for a model with state beyond
    /// the window.
    fn summary(&self) -> Option<String> {
        None
    }
}

impl FunctionModel for PciFunction {
    type RestoreError = PciError;

    fn window(&self) -> &PciFunction {
        self
    }

    fn config_read(&self, reg: u32, size: u32) -> u32 {
        self.read(reg, size)
    }

    fn config_write(&mut self, reg: u32, size: u32, value: u32) -> ModelChange {
        ModelChange {
            window: self.write(reg, size, value),
            ..ModelChange::default()
        }
    }

    fn saved(&self) -> String {
        PciFunction::saved(self)
    }

    fn restore(&mut self, saved: &str) -> Result<bool, PciError> {
        PciFunction::restore(self, saved).map(|()| false)
    }
}

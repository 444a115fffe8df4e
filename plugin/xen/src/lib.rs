//! gpu-hostmem-xen: the Xen and privcmd bindings, the crate with the
//! `unsafe` FFI, and the core's platform traits implemented on them
//! ([`platform`]). What the host programs build on top (the xenstore
//! record, the control socket, process handling, teardown) is in
//! `gpu-hostmem-host`.
//!
//! The Xen tool libraries are loaded at run time with libloading (nothing of
//! Xen is needed to build), one struct per library holding every symbol,
//! resolved once; a missing library or symbol is an error at start. Every
//! Xen resource is an RAII handle borrowing its library (or parent handle),
//! not `Clone`, released in reverse order of creation by `Drop`, which never
//! panics. Errors carry the operation and the errno.

pub mod devicemodel;
pub mod error;
pub mod evtchn;
pub mod foreignmemory;
pub mod guest_memory;
pub mod ioreq;
mod loader;
pub mod platform;
pub mod privcmd;
pub mod testenv;
pub mod xenctrl;
pub mod xenstore;

pub use devicemodel::{DeviceModel, DeviceModelLib, Instance, IoreqServer};
pub use error::{Result, XenError};
pub use evtchn::{BoundPort, EventChannels, EvtchnLib};
pub use foreignmemory::{ForeignMemory, ForeignMemoryLib, GuestPages, IoreqPage};
pub use ioreq::IoreqSlots;
pub use privcmd::Privcmd;
pub use xenctrl::{DomainInfo, Xenctrl, XenctrlLib};
pub use xenstore::{Transaction, Watch, Xenstore, XenstoreLib};

/// Every Xen library the IOREQ server needs, loaded together.
#[derive(Debug)]
pub struct XenLibs {
    pub devicemodel: DeviceModelLib,
    pub foreignmemory: ForeignMemoryLib,
    pub evtchn: EvtchnLib,
    pub xenstore: XenstoreLib,
    pub xenctrl: XenctrlLib,
}

impl XenLibs {
    /// Loads all five libraries; the first failure names what is missing.
    pub fn load() -> Result<Self> {
        Ok(Self {
            devicemodel: DeviceModelLib::load()?,
            foreignmemory: ForeignMemoryLib::load()?,
            evtchn: EvtchnLib::load()?,
            xenstore: XenstoreLib::load()?,
            xenctrl: XenctrlLib::load()?,
        })
    }
}

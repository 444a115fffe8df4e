//! gpu-hostmem core: the pure logic of the IOREQ server, with no `unsafe`
//! and no Xen dependency. Each module is one piece of the architecture:
//!
//! - [`platform`]: the traits a real Xen backend and the simulator implement.
//! - [`ioreq`]: the 32-byte `ioreq_t`, its types and states.
//! - [`pci`]: config space of the emulated function and its 64-bit BAR.
//! - [`registry`]: BAR offset -> backend registration.
//! - [`fault_around`]: which pages to lend for one fault.
//! - [`ledger`]: what was lent where to the guest served.
//! - [`limits`]: fault rate, lent-page cap, the paging memory of a BAR.
//! - [`server`]: the IOREQ handling loop, setup stages and teardown.
//! - [`retry_stats`]: watching Xen's counters of our RETRY answers.
//! - [`config`]: the YAML configuration file.
//! - [`status`]: the snapshot `gpu-hostmem status` prints.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod fault_around;
pub mod ioreq;
pub mod ledger;
pub mod limits;
pub mod model;
pub mod pci;
pub mod platform;
pub mod registry;
pub mod retry_stats;
pub mod server;
pub mod status;

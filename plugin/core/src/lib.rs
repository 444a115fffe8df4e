//! gpu-hostmem core: the pure logic of the IOREQ server, with no `unsafe`
//! and no Xen dependency.
//!
//! - [`platform`]: the traits a real Xen backend and the simulator implement.
//! - [`ioreq`]: the 32-byte `ioreq_t` and its states.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ioreq;
pub mod platform;

//! The libxl plugin of gpu-hostmem (`libgpu_hostmem_plugin.so`).
//!
//! libxl dlopens it from a fixed path and calls exactly the three symbols of
//! `plugin/include/gpu_hostmem_plugin.h`: [`abi`] holds that C boundary
//! (the `#[repr(C)]` mirror of `struct gpu_hostmem_domain`, argument
//! checks, `catch_unwind`, the error buffer); [`hooks`] is the safe logic:
//! create spawns `gpu-hostmem-ioreqd` detached and waits (bounded) for
//! `state = running` in xenstore, destroy runs the shared teardown of
//! `gpu_hostmem_host::teardown`.
//!
//! The only `unsafe` here is the C boundary itself (reading the caller's
//! struct, writing its error buffer, exporting unmangled symbols); every
//! Xen call goes through `gpu-hostmem-xen`.

pub mod abi;
pub mod hooks;

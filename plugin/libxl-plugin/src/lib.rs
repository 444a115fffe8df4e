//! The libxl plugin of gpu-hostmem (`libgpu_hostmem_plugin.so`).
//!
//! libxl dlopens it from a fixed path and calls exactly the three symbols of
//! `plugin/include/gpu_hostmem_plugin.h` (ABI version 2): [`abi`] holds that
//! C boundary (the `#[repr(C)]` mirrors of `struct gpu_hostmem_domain` and
//! `struct gpu_hostmem_server`, argument checks, `catch_unwind`, the error
//! buffer); [`hooks`] is the safe logic: create clears stale state, records
//! the calling process and describes `gpu-hostmem-ioreqd`, which libxl then
//! execs in that process and waits for (libxl__spawn_spawn); destroy runs
//! the shared teardown of `gpu_hostmem_host::teardown`.
//!
//! The only `unsafe` here is the C boundary itself (reading the caller's
//! struct, writing its error buffer, exporting unmangled symbols); every
//! Xen call goes through `gpu-hostmem-xen`.

pub mod abi;
pub mod hooks;

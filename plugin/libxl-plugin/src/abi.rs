//! The C ABI of `plugin/include/gpu_hostmem_plugin.h` (version 1).

use crate::hooks::{self, Domain, HookError};
use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `GPU_HOSTMEM_PLUGIN_ABI_VERSION`
pub const GPU_HOSTMEM_PLUGIN_ABI_VERSION: u32 = 1;

/// Mirror of `struct gpu_hostmem_domain` (checked against the header by
/// `tests/abi_layout.rs`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuHostmemDomain {
    /// `GPU_HOSTMEM_PLUGIN_ABI_VERSION` of the caller.
    pub abi_version: u32,
    /// Guest domid.
    pub domid: u32,
    /// libxl domain handle (`c_info->uuid`).
    pub uuid: [u8; 16],
    /// `gpu_hostmem_size` from xl.cfg; 0: plugin default.
    pub bar_size_mib: u64,
    /// Number of vCPUs.
    pub max_vcpus: u32,
    /// Must be 0.
    pub flags: u32,
}

/// `uint32_t gpu_hostmem_plugin_abi_version(void)`
#[no_mangle]
pub extern "C" fn gpu_hostmem_plugin_abi_version() -> u32 {
    GPU_HOSTMEM_PLUGIN_ABI_VERSION
}

/// `int gpu_hostmem_plugin_create(const struct gpu_hostmem_domain *, char *, size_t)`
///
/// # Safety
/// `dom` must be NULL or point to a `struct gpu_hostmem_domain`; `err` must
/// be NULL or point to `errlen` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn gpu_hostmem_plugin_create(
    dom: *const GpuHostmemDomain,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    // SAFETY: forwarded from this function's contract.
    unsafe { boundary(dom, err, errlen, hooks::create) }
}

/// `int gpu_hostmem_plugin_destroy(const struct gpu_hostmem_domain *, char *, size_t)`
///
/// # Safety
/// As [`gpu_hostmem_plugin_create`].
#[no_mangle]
pub unsafe extern "C" fn gpu_hostmem_plugin_destroy(
    dom: *const GpuHostmemDomain,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    // SAFETY: forwarded from this function's contract.
    unsafe { boundary(dom, err, errlen, hooks::destroy) }
}

/// Reads and checks the caller's struct, runs `hook` with panics caught,
/// and reports: 0, or a negative errno with the reason in `err`.
///
/// # Safety
/// As [`gpu_hostmem_plugin_create`].
unsafe fn boundary(
    dom: *const GpuHostmemDomain,
    err: *mut c_char,
    errlen: usize,
    hook: fn(&Domain) -> Result<(), HookError>,
) -> c_int {
    let raw = if dom.is_null() {
        None
    } else {
        // SAFETY: non-NULL, and the caller guarantees it points to the
        // struct; it is plain old data, copied out.
        Some(unsafe { dom.read() })
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let d = Domain::from_raw(raw.as_ref())?;
        hook(&d)
    }));
    let (rc, msg) = match result {
        Ok(Ok(())) => (0, String::new()),
        Ok(Err(e)) => (-e.errno.abs().max(1), e.to_string()),
        Err(_) => (
            -libc::EIO,
            "internal error (panic) in the gpu-hostmem plugin".to_owned(),
        ),
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { write_err(err, errlen, &msg) };
    rc
}

/// The bytes written to an error buffer of `errlen` bytes: `msg` cut at a
/// character boundary to fit, NULs removed, then the terminating NUL.
pub fn err_bytes(msg: &str, errlen: usize) -> Vec<u8> {
    if errlen == 0 {
        return Vec::new();
    }
    let mut cut = msg.len().min(errlen - 1);
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut v: Vec<u8> = msg.as_bytes()[..cut]
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    v.push(0);
    v
}

/// # Safety
/// `err` must be NULL or point to `errlen` writable bytes.
unsafe fn write_err(err: *mut c_char, errlen: usize, msg: &str) {
    if err.is_null() {
        return;
    }
    let bytes = err_bytes(msg, errlen);
    // SAFETY: `bytes.len() <= errlen` and `err` points to `errlen`
    // writable bytes; the regions cannot overlap (ours is fresh).
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), err.cast::<u8>(), bytes.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        f: unsafe extern "C" fn(*const GpuHostmemDomain, *mut c_char, usize) -> c_int,
        dom: Option<&GpuHostmemDomain>,
        errlen: usize,
    ) -> (c_int, String) {
        let mut buf = vec![b'x' as c_char; errlen.max(1)];
        let p = dom.map_or(std::ptr::null(), |d| d as *const _);
        // SAFETY: `p` is NULL or a live struct; `buf` has `errlen` bytes.
        let rc = unsafe { f(p, buf.as_mut_ptr(), errlen) };
        let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
        let end = bytes.iter().position(|&b| b == 0).expect("NUL-terminated");
        (rc, String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    fn good() -> GpuHostmemDomain {
        GpuHostmemDomain {
            abi_version: GPU_HOSTMEM_PLUGIN_ABI_VERSION,
            domid: 5,
            uuid: [7; 16],
            bar_size_mib: 64,
            max_vcpus: 2,
            flags: 0,
        }
    }

    #[test]
    fn abi_version_is_the_headers() {
        assert_eq!(gpu_hostmem_plugin_abi_version(), 1);
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        for f in [gpu_hostmem_plugin_create, gpu_hostmem_plugin_destroy] {
            let (rc, msg) = call(f, None, 256);
            assert_eq!(rc, -libc::EINVAL);
            assert!(msg.contains("NULL"), "{msg}");
            let d = GpuHostmemDomain {
                abi_version: 2,
                ..good()
            };
            let (rc, msg) = call(f, Some(&d), 256);
            assert_eq!(rc, -libc::EINVAL);
            assert!(msg.contains("ABI version 2"), "{msg}");
            let d = GpuHostmemDomain { flags: 1, ..good() };
            assert_eq!(call(f, Some(&d), 256).0, -libc::EINVAL);
            let d = GpuHostmemDomain { domid: 0, ..good() };
            assert_eq!(call(f, Some(&d), 256).0, -libc::EINVAL);
            let d = GpuHostmemDomain {
                domid: 0x7ff0,
                ..good()
            };
            assert_eq!(call(f, Some(&d), 256).0, -libc::EINVAL);
        }
        let d = GpuHostmemDomain {
            bar_size_mib: 3,
            ..good()
        };
        let (rc, msg) = call(gpu_hostmem_plugin_create, Some(&d), 256);
        assert_eq!(rc, -libc::EINVAL);
        assert!(msg.contains("bar_size_mib"), "{msg}");
    }

    #[test]
    fn without_xen_the_hooks_fail_cleanly_naming_the_library() {
        // This machine has no Xen tools: create and destroy must fail with
        // a reason, never crash.
        if gpu_hostmem_xen::XenstoreLib::load().is_ok() {
            return;
        }
        for f in [gpu_hostmem_plugin_create, gpu_hostmem_plugin_destroy] {
            let (rc, msg) = call(f, Some(&good()), 512);
            assert!(rc < 0, "{rc}");
            assert!(msg.contains("libxen"), "{msg}");
        }
    }

    #[test]
    fn error_buffer_is_truncated_and_terminated() {
        assert_eq!(err_bytes("hello", 0), b"");
        assert_eq!(err_bytes("hello", 1), b"\0");
        assert_eq!(err_bytes("hello", 4), b"hel\0");
        assert_eq!(err_bytes("hello", 64), b"hello\0");
        assert_eq!(err_bytes("a\0b", 64), b"a b\0");
        // Never cut inside a UTF-8 character.
        assert_eq!(err_bytes("aé", 3), b"a\0");
        let (rc, msg) = call(gpu_hostmem_plugin_create, None, 5);
        assert_eq!(rc, -libc::EINVAL);
        assert_eq!(msg.len(), 4);
        // A NULL buffer is fine.
        // SAFETY: NULL dom and NULL buffer are allowed by the contract.
        let rc = unsafe { gpu_hostmem_plugin_create(std::ptr::null(), std::ptr::null_mut(), 100) };
        assert_eq!(rc, -libc::EINVAL);
    }
}

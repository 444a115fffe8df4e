//! The C ABI of `plugin/include/gpu_hostmem_plugin.h` (version 2).

use crate::hooks::{self, Domain, HookError, Server};
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

/// `GPU_HOSTMEM_PLUGIN_ABI_VERSION`
pub const GPU_HOSTMEM_PLUGIN_ABI_VERSION: u32 = 2;

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

/// Mirror of `struct gpu_hostmem_server` (checked against the header by
/// `tests/abi.rs`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuHostmemServer {
    /// Absolute path of the program.
    pub path: *const c_char,
    /// Its arguments, `argv[0]` first, NULL-terminated.
    pub argv: *const *const c_char,
    /// The file for its stdout and stderr.
    pub log_path: *const c_char,
}

/// The C strings a `struct gpu_hostmem_server` points into.
struct Exported {
    path: CString,
    args: Vec<CString>,
    /// Pointers into `args`, then NULL.
    argv: Vec<*const c_char>,
    log_path: CString,
}

// SAFETY: the raw pointers point into the `CString`s of the same value
// (heap buffers that do not move with it) and are only read by the C side.
unsafe impl Send for Exported {}

impl Exported {
    fn new(s: &Server) -> Result<Self, HookError> {
        let c = |v: String| {
            CString::new(v).map_err(|e| HookError {
                errno: libc::EINVAL,
                msg: format!("NUL byte in a server argument: {e}"),
            })
        };
        let args = s
            .argv
            .iter()
            .cloned()
            .map(c)
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        Ok(Exported {
            path: c(s.path.display().to_string())?,
            args,
            argv,
            log_path: c(s.log.display().to_string())?,
        })
    }

    fn server(&self) -> GpuHostmemServer {
        debug_assert_eq!(self.argv.len(), self.args.len() + 1);
        GpuHostmemServer {
            path: self.path.as_ptr(),
            argv: self.argv.as_ptr(),
            log_path: self.log_path.as_ptr(),
        }
    }
}

/// What the last create call described: the header has the strings stay
/// valid until the process execs or exits (libxl execs the server right
/// after the call); a later call replaces them.
static EXPORTED: Mutex<Option<Exported>> = Mutex::new(None);

/// `uint32_t gpu_hostmem_plugin_abi_version(void)`
#[no_mangle]
pub extern "C" fn gpu_hostmem_plugin_abi_version() -> u32 {
    GPU_HOSTMEM_PLUGIN_ABI_VERSION
}

/// `int gpu_hostmem_plugin_create(const struct gpu_hostmem_domain *,
/// const char *ready_path, struct gpu_hostmem_server *, char *, size_t)`
///
/// # Safety
/// `dom` must be NULL or point to a `struct gpu_hostmem_domain`;
/// `ready_path` NULL or a NUL-terminated string; `srv` NULL or point to a
/// writable `struct gpu_hostmem_server`; `err` NULL or point to `errlen`
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn gpu_hostmem_plugin_create(
    dom: *const GpuHostmemDomain,
    ready_path: *const c_char,
    srv: *mut GpuHostmemServer,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    let ready = if ready_path.is_null() {
        None
    } else {
        // SAFETY: non-NULL, and the caller guarantees a NUL-terminated
        // string; it is copied out.
        Some(
            unsafe { CStr::from_ptr(ready_path) }
                .to_string_lossy()
                .into_owned(),
        )
    };
    let hook = |d: &Domain| -> Result<(), HookError> {
        let ready = ready.as_deref().ok_or_else(|| HookError {
            errno: libc::EINVAL,
            msg: "NULL ready path".into(),
        })?;
        if srv.is_null() {
            return Err(HookError {
                errno: libc::EINVAL,
                msg: "NULL struct gpu_hostmem_server".into(),
            });
        }
        let exported = Exported::new(&hooks::create(d, ready)?)?;
        let out = exported.server();
        // A poisoned lock only means an earlier call panicked: its value
        // is replaced whole.
        let mut slot = EXPORTED.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(exported);
        // SAFETY: non-NULL and, by the contract, writable; the pointers in
        // `out` stay valid while `EXPORTED` holds them (until the next
        // call).
        unsafe { srv.write(out) };
        Ok(())
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { boundary(dom, err, errlen, hook) }
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
    hook: impl FnOnce(&Domain) -> Result<(), HookError>,
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

    /// The create hook with a valid ready path and server struct, in the
    /// shape of the destroy hook.
    unsafe extern "C" fn create(
        dom: *const GpuHostmemDomain,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int {
        let mut srv = GpuHostmemServer {
            path: std::ptr::null(),
            argv: std::ptr::null(),
            log_path: std::ptr::null(),
        };
        // SAFETY: forwarded from the caller; a valid path and struct.
        unsafe {
            gpu_hostmem_plugin_create(
                dom,
                c"/libxl/5/gpu-hostmem/state".as_ptr(),
                &mut srv,
                err,
                errlen,
            )
        }
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
        assert_eq!(gpu_hostmem_plugin_abi_version(), 2);
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        for f in [create, gpu_hostmem_plugin_destroy] {
            let (rc, msg) = call(f, None, 256);
            assert_eq!(rc, -libc::EINVAL);
            assert!(msg.contains("NULL"), "{msg}");
            let d = GpuHostmemDomain {
                abi_version: 1,
                ..good()
            };
            let (rc, msg) = call(f, Some(&d), 256);
            assert_eq!(rc, -libc::EINVAL);
            assert!(msg.contains("ABI version 1"), "{msg}");
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
        let (rc, msg) = call(create, Some(&d), 256);
        assert_eq!(rc, -libc::EINVAL);
        assert!(msg.contains("bar_size_mib"), "{msg}");
    }

    #[test]
    fn create_needs_a_ready_path_and_a_server_struct() {
        let mut err = [0 as c_char; 128];
        let mut srv = GpuHostmemServer {
            path: std::ptr::null(),
            argv: std::ptr::null(),
            log_path: std::ptr::null(),
        };
        let read = |err: &[c_char]| -> String {
            let b: Vec<u8> = err
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&b).into_owned()
        };
        // SAFETY: a live struct, NULL ready path, a live server struct.
        let rc = unsafe {
            gpu_hostmem_plugin_create(
                &good(),
                std::ptr::null(),
                &mut srv,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        assert_eq!(rc, -libc::EINVAL);
        assert!(read(&err).contains("NULL ready path"), "{}", read(&err));
        // SAFETY: a live struct and path, NULL server struct.
        let rc = unsafe {
            gpu_hostmem_plugin_create(
                &good(),
                c"/x".as_ptr(),
                std::ptr::null_mut(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        assert_eq!(rc, -libc::EINVAL);
        assert!(
            read(&err).contains("NULL struct gpu_hostmem_server"),
            "{}",
            read(&err)
        );
        // SAFETY: a live struct and server struct; a relative path.
        let rc = unsafe {
            gpu_hostmem_plugin_create(
                &good(),
                c"x".as_ptr(),
                &mut srv,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        assert_eq!(rc, -libc::EINVAL);
        assert!(read(&err).contains("absolute"), "{}", read(&err));
        assert!(srv.path.is_null(), "nothing described on failure");
    }

    #[test]
    fn the_described_server_is_a_null_terminated_argv() {
        let s = Server {
            path: "/bin/x".into(),
            argv: vec!["/bin/x".into(), "--a".into(), "b".into()],
            log: "/tmp/l".into(),
        };
        let e = Exported::new(&s).expect("exported");
        let out = e.server();
        // SAFETY: the pointers point into `e`, alive here.
        let strs: Vec<String> = (0..)
            .map(|i| unsafe { *out.argv.add(i) })
            .take_while(|p| !p.is_null())
            .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect();
        assert_eq!(strs, s.argv);
        // SAFETY: as above.
        assert_eq!(unsafe { CStr::from_ptr(out.path) }, c"/bin/x");
        // SAFETY: as above.
        assert_eq!(unsafe { CStr::from_ptr(out.log_path) }, c"/tmp/l");
        let bad = Server {
            argv: vec!["a\0b".into()],
            ..s
        };
        assert_eq!(
            Exported::new(&bad).map(|_| ()).map_err(|e| e.errno),
            Err(libc::EINVAL)
        );
    }

    #[test]
    fn without_xen_the_hooks_fail_cleanly_naming_the_library() {
        // This machine has no Xen tools: create and destroy must fail with
        // a reason, never crash.
        if gpu_hostmem_xen::XenstoreLib::load().is_ok() {
            return;
        }
        for f in [create, gpu_hostmem_plugin_destroy] {
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
        let (rc, msg) = call(create, None, 5);
        assert_eq!(rc, -libc::EINVAL);
        assert_eq!(msg.len(), 4);
        // A NULL buffer is fine.
        // SAFETY: NULL dom and NULL buffer are allowed by the contract.
        let rc = unsafe { gpu_hostmem_plugin_destroy(std::ptr::null(), std::ptr::null_mut(), 100) };
        assert_eq!(rc, -libc::EINVAL);
    }
}

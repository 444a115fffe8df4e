//! libxenstore.so.4: state keys, watches and transactions.

use crate::error::{Result, XenError};
use crate::loader::{self, library};
use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr, CString};
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

/// Opaque `struct xs_handle`.
#[repr(C)]
pub struct XsHandle {
    _opaque: [u8; 0],
}

/// `XBT_NULL`: outside any transaction.
const XBT_NULL: u32 = 0;
/// `XS_WATCH_PATH` / `XS_WATCH_TOKEN` indices of a fired watch.
const XS_WATCH_PATH: usize = 0;
const XS_WATCH_TOKEN: usize = 1;

library! {
    /// libxenstore.so.4 and every symbol we use from it.
    pub struct XenstoreLib {
        xs_open: fn(c_ulong) -> *mut XsHandle;
        xs_close: fn(*mut XsHandle);
        xs_read: fn(*mut XsHandle, u32, *const c_char, *mut c_uint) -> *mut c_void;
        xs_write: fn(*mut XsHandle, u32, *const c_char, *const c_void, c_uint) -> bool;
        xs_rm: fn(*mut XsHandle, u32, *const c_char) -> bool;
        xs_directory: fn(*mut XsHandle, u32, *const c_char, *mut c_uint) -> *mut *mut c_char;
        xs_watch: fn(*mut XsHandle, *const c_char, *const c_char) -> bool;
        xs_unwatch: fn(*mut XsHandle, *const c_char, *const c_char) -> bool;
        xs_fileno: fn(*mut XsHandle) -> c_int;
        xs_check_watch: fn(*mut XsHandle) -> *mut *mut c_char;
        xs_transaction_start: fn(*mut XsHandle) -> u32;
        xs_transaction_end: fn(*mut XsHandle, u32, bool) -> bool;
    }
}

impl XenstoreLib {
    /// The soname loaded by [`XenstoreLib::load`].
    pub const SONAME: &'static str = "libxenstore.so.4";

    /// Loads libxenstore.so.4.
    pub fn load() -> Result<Self> {
        Self::load_from(Self::SONAME)
    }

    /// Loads the library from `name` (a soname or a path).
    pub fn load_from(name: &str) -> Result<Self> {
        Self::from_library(loader::open(name)?, name.to_owned())
    }

    /// Connects to xenstored.
    pub fn open(&self) -> Result<Xenstore<'_>> {
        // SAFETY: flags 0 = read/write, socket or xenbus device. The
        // returned handle is owned by `Xenstore`.
        let h = unsafe { (self.xs_open)(0) };
        let h = NonNull::new(h).ok_or_else(|| XenError::last_os("xs_open"))?;
        Ok(Xenstore { lib: self, h })
    }
}

/// A xenstore connection, closed on drop.
#[derive(Debug)]
pub struct Xenstore<'l> {
    lib: &'l XenstoreLib,
    h: NonNull<XsHandle>,
}

fn cstring(op: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| XenError::invalid(op, format!("{s:?} contains a NUL byte")))
}

/// Frees memory the library allocated with malloc.
///
/// # Safety
/// `p` must be NULL or a pointer returned by malloc and not freed yet.
unsafe fn free(p: *mut c_void) {
    // SAFETY: the caller promises `p` is NULL (a no-op for free) or a live
    // malloc'd pointer it gives up, so it is freed exactly once.
    unsafe { libc::free(p) }
}

impl<'l> Xenstore<'l> {
    /// Reads `path` outside any transaction; None if it does not exist.
    pub fn read(&self, path: &str) -> Result<Option<String>> {
        self.read_in(XBT_NULL, path)
    }

    fn read_in(&self, t: u32, path: &str) -> Result<Option<String>> {
        let p = cstring("xs_read", path)?;
        let mut len: c_uint = 0;
        // SAFETY: live handle, NUL-terminated path, valid out pointer.
        let v = unsafe { (self.lib.xs_read)(self.h.as_ptr(), t, p.as_ptr(), &mut len) };
        if v.is_null() {
            let err = XenError::last_os("xs_read");
            return match err.errno() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: xs_read returns a malloc'd buffer of `len` bytes (plus a
        // NUL), which we copy and free exactly once.
        let s = unsafe {
            let bytes = std::slice::from_raw_parts(v.cast::<u8>(), len as usize);
            let s = String::from_utf8_lossy(bytes).into_owned();
            free(v);
            s
        };
        Ok(Some(s))
    }

    /// Writes `value` at `path` outside any transaction.
    pub fn write(&self, path: &str, value: &str) -> Result<()> {
        self.write_in(XBT_NULL, path, value)
    }

    fn write_in(&self, t: u32, path: &str, value: &str) -> Result<()> {
        let p = cstring("xs_write", path)?;
        let len = c_uint::try_from(value.len())
            .map_err(|_| XenError::invalid("xs_write", "value too long"))?;
        // SAFETY: live handle, NUL-terminated path, `value` valid for `len`.
        let ok = unsafe {
            (self.lib.xs_write)(self.h.as_ptr(), t, p.as_ptr(), value.as_ptr().cast(), len)
        };
        if ok {
            Ok(())
        } else {
            Err(XenError::last_os("xs_write"))
        }
    }

    /// Removes `path` and everything below it; absent is success.
    pub fn rm(&self, path: &str) -> Result<()> {
        self.rm_in(XBT_NULL, path)
    }

    fn rm_in(&self, t: u32, path: &str) -> Result<()> {
        let p = cstring("xs_rm", path)?;
        // SAFETY: live handle, NUL-terminated path.
        let ok = unsafe { (self.lib.xs_rm)(self.h.as_ptr(), t, p.as_ptr()) };
        if ok {
            return Ok(());
        }
        let err = XenError::last_os("xs_rm");
        match err.errno() {
            Some(libc::ENOENT) => Ok(()),
            _ => Err(err),
        }
    }

    /// Lists the children of `path`; None if it does not exist.
    pub fn directory(&self, path: &str) -> Result<Option<Vec<String>>> {
        let p = cstring("xs_directory", path)?;
        let mut num: c_uint = 0;
        // SAFETY: live handle, NUL-terminated path, valid out pointer.
        let v = unsafe { (self.lib.xs_directory)(self.h.as_ptr(), XBT_NULL, p.as_ptr(), &mut num) };
        if v.is_null() {
            let err = XenError::last_os("xs_directory");
            return match err.errno() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: xs_directory returns one malloc'd block: `num` pointers to
        // NUL-terminated strings stored in the same block; freed once.
        let names = unsafe {
            let names = (0..num as usize)
                .map(|i| CStr::from_ptr(*v.add(i)).to_string_lossy().into_owned())
                .collect();
            free(v.cast());
            names
        };
        Ok(Some(names))
    }

    /// Sets a watch on `path` with `token`; removed on drop of the guard.
    /// Special paths: `@releaseDomain`, `@introduceDomain`.
    pub fn watch(&self, path: &str, token: &str) -> Result<Watch<'_>> {
        let p = cstring("xs_watch", path)?;
        let t = cstring("xs_watch", token)?;
        // SAFETY: live handle, NUL-terminated strings.
        let ok = unsafe { (self.lib.xs_watch)(self.h.as_ptr(), p.as_ptr(), t.as_ptr()) };
        if !ok {
            return Err(XenError::last_os("xs_watch"));
        }
        Ok(Watch {
            xs: self,
            path: p,
            token: t,
        })
    }

    /// The fd to poll for fired watches.
    pub fn fd(&self) -> Result<BorrowedFd<'_>> {
        // SAFETY: `self.h` is the handle xs_open returned; only Drop closes
        // it, and Drop cannot run while `&self` is borrowed. The call takes
        // only the handle; what it returns is ours to check and free.
        let fd: RawFd = unsafe { (self.lib.xs_fileno)(self.h.as_ptr()) };
        if fd < 0 {
            return Err(XenError::last_os("xs_fileno"));
        }
        // SAFETY: the fd belongs to the handle, open as long as `self`.
        Ok(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// The next fired watch as (path, token), without blocking.
    pub fn check_watch(&self) -> Result<Option<(String, String)>> {
        // SAFETY: `self.h` is the handle xs_open returned; only Drop closes
        // it, and Drop cannot run while `&self` is borrowed. The call takes
        // only the handle; what it returns is ours to check and free.
        let v = unsafe { (self.lib.xs_check_watch)(self.h.as_ptr()) };
        if v.is_null() {
            let err = XenError::last_os("xs_check_watch");
            return match err.errno() {
                Some(libc::EAGAIN) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: a fired watch is one malloc'd block holding the pointer
        // array and the strings it points to; freed once.
        let fired = unsafe {
            let path = CStr::from_ptr(*v.add(XS_WATCH_PATH))
                .to_string_lossy()
                .into_owned();
            let token = CStr::from_ptr(*v.add(XS_WATCH_TOKEN))
                .to_string_lossy()
                .into_owned();
            free(v.cast());
            (path, token)
        };
        Ok(Some(fired))
    }

    /// Starts a transaction; aborted on drop unless committed.
    pub fn transaction(&self) -> Result<Transaction<'_>> {
        // SAFETY: `self.h` is the handle xs_open returned; only Drop closes
        // it, and Drop cannot run while `&self` is borrowed. The call takes
        // only the handle; what it returns is ours to check and free.
        let t = unsafe { (self.lib.xs_transaction_start)(self.h.as_ptr()) };
        if t == XBT_NULL {
            return Err(XenError::last_os("xs_transaction_start"));
        }
        Ok(Transaction {
            xs: self,
            t,
            done: false,
        })
    }
}

impl Drop for Xenstore<'_> {
    fn drop(&mut self) {
        // SAFETY: handle from xs_open, closed once; watches and transactions
        // borrowing it are gone.
        unsafe { (self.lib.xs_close)(self.h.as_ptr()) };
    }
}

/// A xenstore watch, removed on drop.
#[derive(Debug)]
pub struct Watch<'x> {
    xs: &'x Xenstore<'x>,
    path: CString,
    token: CString,
}

impl Watch<'_> {
    /// The token passed at creation.
    pub fn token(&self) -> &CStr {
        &self.token
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        // SAFETY: live handle, the strings we watched with.
        unsafe {
            (self.xs.lib.xs_unwatch)(self.xs.h.as_ptr(), self.path.as_ptr(), self.token.as_ptr())
        };
    }
}

/// A xenstore transaction: aborted on drop unless [`Transaction::commit`]
/// succeeded.
#[derive(Debug)]
pub struct Transaction<'x> {
    xs: &'x Xenstore<'x>,
    t: u32,
    done: bool,
}

impl Transaction<'_> {
    /// Reads `path` in the transaction.
    pub fn read(&self, path: &str) -> Result<Option<String>> {
        self.xs.read_in(self.t, path)
    }

    /// Writes `path` in the transaction.
    pub fn write(&self, path: &str, value: &str) -> Result<()> {
        self.xs.write_in(self.t, path, value)
    }

    /// Removes `path` in the transaction (absent is success).
    pub fn rm(&self, path: &str) -> Result<()> {
        self.xs.rm_in(self.t, path)
    }

    /// Commits. `Ok(false)` means a conflict (EAGAIN): start again.
    pub fn commit(mut self) -> Result<bool> {
        self.done = true;
        // SAFETY: live handle, our open transaction, ended once.
        let ok = unsafe { (self.xs.lib.xs_transaction_end)(self.xs.h.as_ptr(), self.t, false) };
        if ok {
            return Ok(true);
        }
        let err = XenError::last_os("xs_transaction_end");
        match err.errno() {
            Some(libc::EAGAIN) => Ok(false),
            _ => Err(err),
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: live handle, our open transaction, ended once (abort).
            unsafe { (self.xs.lib.xs_transaction_end)(self.xs.h.as_ptr(), self.t, true) };
        }
    }
}

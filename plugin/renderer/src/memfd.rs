//! A blob's memory: a memfd mapped shared in this process, the kind of
//! mapping privcmd registers (shmem; `hostmem_check_vma` refuses `VM_IO`
//! and `VM_PFNMAP`). The guest reads and writes it through lent pages
//! while we hold it, so every access here is a volatile word access, never
//! a Rust reference to the bytes.

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::RendererOsError;

/// A shared memfd mapping of `len` bytes (page aligned, not 0).
#[derive(Debug)]
pub struct MemfdBlob {
    ptr: NonNull<u32>,
    len: usize,
    _fd: OwnedFd,
}

impl MemfdBlob {
    /// A new zeroed blob of `len` bytes (page aligned, not 0).
    pub fn new(name: &CStr, len: usize) -> Result<Self, RendererOsError> {
        let os = |op: &'static str| RendererOsError {
            op,
            source: io::Error::last_os_error(),
        };
        if len == 0 || len % 4096 != 0 {
            return Err(RendererOsError {
                op: "memfd size",
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        // SAFETY: memfd_create takes a NUL-terminated name (a CStr) and
        // flags; it returns a new fd or -1.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(os("memfd_create"));
        }
        // SAFETY: `raw` is a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len).map_err(|_| RendererOsError {
            op: "memfd size",
            source: io::Error::from_raw_os_error(libc::EFBIG),
        })?;
        // SAFETY: ftruncate on an fd we own.
        if unsafe { libc::ftruncate(raw, size) } < 0 {
            return Err(os("ftruncate"));
        }
        // SAFETY: a new shared mapping of the whole file at an address the
        // kernel picks; nothing else is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os("mmap"));
        }
        let ptr = NonNull::new(p.cast::<u32>()).ok_or_else(|| RendererOsError {
            op: "mmap",
            source: io::Error::from_raw_os_error(libc::EFAULT),
        })?;
        Ok(MemfdBlob { ptr, len, _fd: fd })
    }

    /// Address of the mapping (what privcmd registers).
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never: a blob is not empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Words of 4 bytes.
    pub fn words(&self) -> usize {
        self.len / 4
    }

    /// Word `i` (`None` past the end).
    pub fn read(&self, i: usize) -> Option<u32> {
        (i < self.words()).then(|| {
            // SAFETY: `i` is inside the mapping, which lives as long as
            // `self`; a volatile read because the guest may write it.
            unsafe { self.ptr.as_ptr().add(i).read_volatile() }
        })
    }

    /// Sets word `i` (ignored past the end).
    pub fn write(&self, i: usize, v: u32) {
        if i < self.words() {
            // SAFETY: as in `read`; the mapping is writable.
            unsafe { self.ptr.as_ptr().add(i).write_volatile(v) }
        }
    }
}

impl Drop for MemfdBlob {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once. Unmapping a
        // registered range makes the kernel's MMU notifier revoke what it
        // lent from it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

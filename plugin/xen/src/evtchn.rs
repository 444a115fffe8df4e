//! libxenevtchn.so.1: one interdomain event channel per vCPU.

use crate::error::{Result, XenError};
use crate::loader::{self, library};
use std::ffi::{c_int, c_uint, c_void};
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::{self, NonNull};

/// Opaque `xenevtchn_handle`.
#[repr(C)]
pub struct XceHandle {
    _opaque: [u8; 0],
}

library! {
    /// libxenevtchn.so.1 and every symbol we use from it.
    pub struct EvtchnLib {
        xenevtchn_open: fn(*mut c_void, c_uint) -> *mut XceHandle;
        xenevtchn_close: fn(*mut XceHandle) -> c_int;
        xenevtchn_fd: fn(*mut XceHandle) -> c_int;
        xenevtchn_notify: fn(*mut XceHandle, u32) -> c_int;
        xenevtchn_bind_interdomain: fn(*mut XceHandle, u32, u32) -> c_int;
        xenevtchn_unbind: fn(*mut XceHandle, u32) -> c_int;
        xenevtchn_pending: fn(*mut XceHandle) -> c_int;
        xenevtchn_unmask: fn(*mut XceHandle, u32) -> c_int;
        xenevtchn_restrict: fn(*mut XceHandle, u16) -> c_int;
    }
}

impl EvtchnLib {
    /// The soname loaded by [`EvtchnLib::load`].
    pub const SONAME: &'static str = "libxenevtchn.so.1";

    /// Loads libxenevtchn.so.1.
    pub fn load() -> Result<Self> {
        Self::load_from(Self::SONAME)
    }

    /// Loads the library from `name` (a soname or a path).
    pub fn load_from(name: &str) -> Result<Self> {
        Self::from_library(loader::open(name)?, name.to_owned())
    }

    /// Opens an event channel handle whose fd is non-blocking, so that
    /// [`EventChannels::pending`] never blocks.
    pub fn open(&self) -> Result<EventChannels<'_>> {
        // SAFETY: NULL logger = default; flags 0. Owned by `EventChannels`.
        let h = unsafe { (self.xenevtchn_open)(ptr::null_mut(), 0) };
        let h = NonNull::new(h).ok_or_else(|| XenError::last_os("xenevtchn_open"))?;
        let xce = EventChannels { lib: self, h };
        let fd = xce.raw_fd()?;
        // SAFETY: fcntl on the handle's own fd, which stays open while `xce`
        // lives; F_GETFL/F_SETFL take and return plain integers.
        let rc = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 {
                fl
            } else {
                libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)
            }
        };
        if rc < 0 {
            return Err(XenError::last_os("fcntl(evtchn fd, O_NONBLOCK)"));
        }
        Ok(xce)
    }
}

/// An open `xenevtchn_handle`, closed on drop.
#[derive(Debug)]
pub struct EventChannels<'l> {
    lib: &'l EvtchnLib,
    h: NonNull<XceHandle>,
}

fn check(op: &'static str, rc: c_int) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(XenError::last_os(op))
    }
}

impl<'l> EventChannels<'l> {
    fn raw_fd(&self) -> Result<RawFd> {
        // SAFETY: `self.h` is the handle xenevtchn_open returned; only Drop
        // closes it, and Drop cannot run while `&self` is borrowed. The call
        // takes the handle and integers and writes no memory of ours.
        let fd = unsafe { (self.lib.xenevtchn_fd)(self.h.as_ptr()) };
        if fd < 0 {
            Err(XenError::last_os("xenevtchn_fd"))
        } else {
            Ok(fd)
        }
    }

    /// The fd to poll for pending events.
    pub fn fd(&self) -> Result<BorrowedFd<'_>> {
        let fd = self.raw_fd()?;
        // SAFETY: the fd belongs to the handle and stays open as long as
        // `self`, which the returned borrow cannot outlive.
        Ok(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Restricts this handle to `domid`.
    pub fn restrict(&self, domid: u16) -> Result<()> {
        // SAFETY: `self.h` is the handle xenevtchn_open returned; only Drop
        // closes it, and Drop cannot run while `&self` is borrowed. The call
        // takes the handle and integers and writes no memory of ours.
        check("xenevtchn_restrict", unsafe {
            (self.lib.xenevtchn_restrict)(self.h.as_ptr(), domid)
        })
    }

    /// Binds a local port to `remote_port` of `domid`; unbound on drop.
    pub fn bind_interdomain(&self, domid: u16, remote_port: u32) -> Result<BoundPort<'_>> {
        // SAFETY: `self.h` is the handle xenevtchn_open returned; only Drop
        // closes it, and Drop cannot run while `&self` is borrowed. The call
        // takes the handle and integers and writes no memory of ours.
        let port = unsafe {
            (self.lib.xenevtchn_bind_interdomain)(self.h.as_ptr(), u32::from(domid), remote_port)
        };
        if port < 0 {
            return Err(XenError::last_os("xenevtchn_bind_interdomain"));
        }
        Ok(BoundPort {
            xce: self,
            port: port as u32,
        })
    }

    /// The next pending local port, or None when nothing is pending.
    pub fn pending(&self) -> Result<Option<u32>> {
        // SAFETY: live handle; the fd is non-blocking (see `open`).
        let port = unsafe { (self.lib.xenevtchn_pending)(self.h.as_ptr()) };
        if port >= 0 {
            return Ok(Some(port as u32));
        }
        let err = XenError::last_os("xenevtchn_pending");
        match err.errno() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(err),
        }
    }

    /// Unmasks a local port after its event was handled.
    pub fn unmask(&self, port: u32) -> Result<()> {
        // SAFETY: `self.h` is the handle xenevtchn_open returned; only Drop
        // closes it, and Drop cannot run while `&self` is borrowed. The call
        // takes the handle and integers and writes no memory of ours.
        check("xenevtchn_unmask", unsafe {
            (self.lib.xenevtchn_unmask)(self.h.as_ptr(), port)
        })
    }

    /// Notifies the remote end of a local port.
    pub fn notify(&self, port: u32) -> Result<()> {
        // SAFETY: `self.h` is the handle xenevtchn_open returned; only Drop
        // closes it, and Drop cannot run while `&self` is borrowed. The call
        // takes the handle and integers and writes no memory of ours.
        check("xenevtchn_notify", unsafe {
            (self.lib.xenevtchn_notify)(self.h.as_ptr(), port)
        })
    }
}

impl Drop for EventChannels<'_> {
    fn drop(&mut self) {
        // SAFETY: handle from xenevtchn_open, closed once; every `BoundPort`
        // borrowing it is gone.
        unsafe { (self.lib.xenevtchn_close)(self.h.as_ptr()) };
    }
}

/// A bound local event channel port, unbound on drop.
#[derive(Debug)]
pub struct BoundPort<'e> {
    xce: &'e EventChannels<'e>,
    port: u32,
}

impl BoundPort<'_> {
    /// The local port.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Notifies the remote end.
    pub fn notify(&self) -> Result<()> {
        self.xce.notify(self.port)
    }
}

impl Drop for BoundPort<'_> {
    fn drop(&mut self) {
        // SAFETY: the port was bound on this live handle and is unbound once.
        unsafe { (self.xce.lib.xenevtchn_unbind)(self.xce.h.as_ptr(), self.port) };
    }
}

//! libxenforeignmemory.so.1: mapping the ioreq server's ioreq page.

use crate::error::{Result, XenError};
use crate::ioreq::{IoreqSlots, MAX_SLOTS};
use crate::loader::{self, library};
use std::ffi::{c_int, c_uint, c_ulong, c_void};
use std::ptr::{self, NonNull};

/// Opaque `xenforeignmemory_handle`.
#[repr(C)]
pub struct XfmHandle {
    _opaque: [u8; 0],
}

/// Opaque `xenforeignmemory_resource_handle`.
#[repr(C)]
pub struct XfmResource {
    _opaque: [u8; 0],
}

/// `XENMEM_resource_ioreq_server`
pub const XENMEM_RESOURCE_IOREQ_SERVER: c_uint = 0;
/// `XENMEM_resource_ioreq_server_frame_ioreq(0)`: the synchronous ioreq page.
pub const XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0: c_ulong = 1;

library! {
    /// libxenforeignmemory.so.1 and every symbol we use from it.
    pub struct ForeignMemoryLib {
        xenforeignmemory_open: fn(*mut c_void, c_uint) -> *mut XfmHandle;
        xenforeignmemory_close: fn(*mut XfmHandle) -> c_int;
        xenforeignmemory_map_resource: fn(
            *mut XfmHandle, u16, c_uint, c_uint, c_ulong, c_ulong, *mut *mut c_void, c_int, c_int
        ) -> *mut XfmResource;
        xenforeignmemory_unmap_resource: fn(*mut XfmHandle, *mut XfmResource) -> c_int;
        xenforeignmemory_restrict: fn(*mut XfmHandle, u16) -> c_int;
    }
}

impl ForeignMemoryLib {
    /// The soname loaded by [`ForeignMemoryLib::load`].
    pub const SONAME: &'static str = "libxenforeignmemory.so.1";

    /// Loads libxenforeignmemory.so.1.
    pub fn load() -> Result<Self> {
        Self::load_from(Self::SONAME)
    }

    /// Loads the library from `name` (a soname or a path).
    pub fn load_from(name: &str) -> Result<Self> {
        Self::from_library(loader::open(name)?, name.to_owned())
    }

    /// Opens a foreign memory handle.
    pub fn open(&self) -> Result<ForeignMemory<'_>> {
        // SAFETY: NULL logger = default; flags 0. Owned by `ForeignMemory`.
        let h = unsafe { (self.xenforeignmemory_open)(ptr::null_mut(), 0) };
        let h = NonNull::new(h).ok_or_else(|| XenError::last_os("xenforeignmemory_open"))?;
        Ok(ForeignMemory { lib: self, h })
    }
}

/// An open `xenforeignmemory_handle`, closed on drop.
#[derive(Debug)]
pub struct ForeignMemory<'l> {
    lib: &'l ForeignMemoryLib,
    h: NonNull<XfmHandle>,
}

impl<'l> ForeignMemory<'l> {
    /// Restricts this handle to `domid`.
    pub fn restrict(&self, domid: u16) -> Result<()> {
        // SAFETY: `self.h` is the handle xenforeignmemory_open returned;
        // only Drop closes it, and Drop cannot run while `&self` is
        // borrowed. The call takes the handle and a domid, no memory.
        let rc = unsafe { (self.lib.xenforeignmemory_restrict)(self.h.as_ptr(), domid) };
        if rc == 0 {
            Ok(())
        } else {
            Err(XenError::last_os("xenforeignmemory_restrict"))
        }
    }

    /// Maps the synchronous ioreq page of server `ioservid` of `domid`,
    /// exposing `nr_vcpus` slots (at most 128, one page).
    pub fn map_ioreq_page(
        &self,
        domid: u16,
        ioservid: u16,
        nr_vcpus: u32,
    ) -> Result<IoreqPage<'_>> {
        if nr_vcpus == 0 || nr_vcpus > MAX_SLOTS {
            return Err(XenError::invalid(
                "xenforeignmemory_map_resource",
                format!("{nr_vcpus} vCPUs: one ioreq page holds 1..={MAX_SLOTS}"),
            ));
        }
        let mut addr: *mut c_void = ptr::null_mut();
        // SAFETY: live handle; `addr` is a valid out pointer (NULL in: let
        // the library choose the address); one frame, read/write, flags 0.
        let res = unsafe {
            (self.lib.xenforeignmemory_map_resource)(
                self.h.as_ptr(),
                domid,
                XENMEM_RESOURCE_IOREQ_SERVER,
                c_uint::from(ioservid),
                XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0,
                1,
                &mut addr,
                libc::PROT_READ | libc::PROT_WRITE,
                0,
            )
        };
        let res =
            NonNull::new(res).ok_or_else(|| XenError::last_os("xenforeignmemory_map_resource"))?;
        let Some(base) = NonNull::new(addr.cast::<u8>()) else {
            // SAFETY: `res` is the handle just returned; unmapped once.
            unsafe { (self.lib.xenforeignmemory_unmap_resource)(self.h.as_ptr(), res.as_ptr()) };
            return Err(XenError::invalid(
                "xenforeignmemory_map_resource",
                "mapped at a NULL address",
            ));
        };
        // SAFETY: the mapping is one page (4096 bytes, page aligned),
        // read/write, and lives until `IoreqPage` unmaps it in Drop, after
        // which the slots (owned by the page) are gone too.
        let slots = unsafe { IoreqSlots::from_raw(base, nr_vcpus) };
        Ok(IoreqPage {
            fm: self,
            res,
            slots,
        })
    }
}

impl Drop for ForeignMemory<'_> {
    fn drop(&mut self) {
        // SAFETY: handle from xenforeignmemory_open, closed once; all
        // `IoreqPage`s borrowing it are gone.
        unsafe { (self.lib.xenforeignmemory_close)(self.h.as_ptr()) };
    }
}

/// The mapped ioreq page of a server, unmapped on drop.
#[derive(Debug)]
pub struct IoreqPage<'f> {
    fm: &'f ForeignMemory<'f>,
    res: NonNull<XfmResource>,
    slots: IoreqSlots,
}

impl IoreqPage<'_> {
    /// The vCPU slots of the page.
    pub fn slots(&self) -> &IoreqSlots {
        &self.slots
    }
}

impl Drop for IoreqPage<'_> {
    fn drop(&mut self) {
        // SAFETY: `res` came from map_resource on this handle and is
        // unmapped once; `slots` is not used after this.
        unsafe {
            (self.fm.lib.xenforeignmemory_unmap_resource)(self.fm.h.as_ptr(), self.res.as_ptr())
        };
    }
}

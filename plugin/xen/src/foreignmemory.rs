//! libxenforeignmemory.so.1: mapping the ioreq server's ioreq page, and
//! guest frames for a device model that reads the guest's memory
//! (virtqueues, `docs/virtio-gpu.md`).

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
        xenforeignmemory_map: fn(
            *mut XfmHandle, u32, c_int, usize, *const c_ulong, *mut c_int
        ) -> *mut c_void;
        xenforeignmemory_unmap: fn(*mut XfmHandle, *mut c_void, usize) -> c_int;
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

/// Most guest frames one [`ForeignMemory::map_guest_pages`] maps.
pub const MAX_GUEST_PAGES: usize = 1024;

const PAGE_SIZE: usize = 4096;

impl ForeignMemory<'_> {
    /// Maps guest frames `gfns` of `domid` (read-only unless `writable`)
    /// at consecutive pages. A frame that cannot be mapped (a hole, MMIO,
    /// a page lent through gpu-hostmem, which Xen refuses to foreign-map)
    /// does not fail the call: [`GuestPages::page_error`] reports it and
    /// the page cannot be accessed. On a restricted handle only the
    /// restricted domain's frames map.
    pub fn map_guest_pages(
        &self,
        domid: u16,
        gfns: &[u64],
        writable: bool,
    ) -> Result<GuestPages<'_>> {
        if gfns.is_empty() || gfns.len() > MAX_GUEST_PAGES {
            return Err(XenError::invalid(
                "xenforeignmemory_map",
                format!("{} frames: one call maps 1..={MAX_GUEST_PAGES}", gfns.len()),
            ));
        }
        let frames: Vec<c_ulong> = gfns.iter().map(|&g| g as c_ulong).collect();
        let mut errs: Vec<c_int> = vec![0; gfns.len()];
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: live handle; `frames` and `errs` hold `gfns.len()`
        // entries each and outlive the call; the library writes only
        // `errs`.
        let addr = unsafe {
            (self.lib.xenforeignmemory_map)(
                self.h.as_ptr(),
                u32::from(domid),
                prot,
                gfns.len(),
                frames.as_ptr(),
                errs.as_mut_ptr(),
            )
        };
        let base = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| XenError::last_os("xenforeignmemory_map"))?;
        Ok(GuestPages {
            fm: self,
            base,
            errs,
            writable,
        })
    }
}

/// Guest frames mapped by [`ForeignMemory::map_guest_pages`], unmapped on
/// drop; any of them, even all, may have failed to map
/// ([`GuestPages::page_error`]). Accesses copy with volatile byte loads and stores: the guest may
/// change its memory at any time, so no reference to it is ever made.
#[derive(Debug)]
pub struct GuestPages<'f> {
    fm: &'f ForeignMemory<'f>,
    base: NonNull<u8>,
    errs: Vec<c_int>,
    writable: bool,
}

impl GuestPages<'_> {
    /// How many frames were asked for.
    pub fn len(&self) -> usize {
        self.errs.len()
    }

    /// Never true: a mapping covers at least one frame (mapped or not).
    pub fn is_empty(&self) -> bool {
        self.errs.is_empty()
    }

    /// The errno of page `i` if it could not be mapped (`None` if it is
    /// mapped or `i` is out of range).
    pub fn page_error(&self, i: usize) -> Option<i32> {
        self.errs.get(i).filter(|&&e| e != 0).map(|&e| e.abs())
    }

    /// Checks that `[offset, offset + len)` lies within mapped page `page`.
    fn span(&self, op: &'static str, page: usize, offset: usize, len: usize) -> Result<usize> {
        match self.errs.get(page) {
            None => Err(XenError::invalid(
                op,
                format!("page {page} not in the mapping"),
            )),
            Some(&e) if e != 0 => Err(XenError::from_errno(op, e.abs())),
            Some(_) if !matches!(offset.checked_add(len), Some(end) if end <= PAGE_SIZE) => Err(
                XenError::invalid(op, format!("{len} bytes at {offset} leave the page")),
            ),
            Some(_) => Ok(page * PAGE_SIZE + offset),
        }
    }

    /// Copies bytes of mapped page `page` at `offset` into `buf`.
    pub fn read(&self, page: usize, offset: usize, buf: &mut [u8]) -> Result<()> {
        let at = self.span("guest page read", page, offset, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `span` checked that page `page` is mapped (its error
            // is 0) and that `at + i` stays inside it; the mapping lives as
            // long as `self`. A volatile load of a byte the guest may be
            // writing is what a device model can do; no reference is made.
            *b = unsafe { ptr::read_volatile(self.base.as_ptr().add(at + i)) };
        }
        Ok(())
    }

    /// Copies `buf` into mapped page `page` at `offset` (writable mappings
    /// only).
    pub fn write(&self, page: usize, offset: usize, buf: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(XenError::invalid("guest page write", "mapped read-only"));
        }
        let at = self.span("guest page write", page, offset, buf.len())?;
        for (i, b) in buf.iter().enumerate() {
            // SAFETY: as in `read`; the mapping is writable (PROT_WRITE).
            unsafe { ptr::write_volatile(self.base.as_ptr().add(at + i), *b) };
        }
        Ok(())
    }
}

impl Drop for GuestPages<'_> {
    fn drop(&mut self) {
        // SAFETY: `base` and the page count are what xenforeignmemory_map
        // returned on this handle; unmapped once, and no access can follow
        // (every access borrows `self`).
        unsafe {
            (self.fm.lib.xenforeignmemory_unmap)(
                self.fm.h.as_ptr(),
                self.base.as_ptr().cast(),
                self.errs.len(),
            )
        };
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

//! libxenctrl (versioned soname): `xc_domain_getinfolist`, to learn a
//! domain's identity (domid + handle) and whether it is dying, and
//! `xc_get_paging_mempool_size`, for the status report (the p2m entries of
//! lent pages come from that pool).

use crate::error::{Result, XenError};
use crate::loader::{self, library};
use std::ffi::{c_int, c_uint, c_void};
use std::ptr::{self, NonNull};

/// Opaque `xc_interface`.
#[repr(C)]
pub struct XcHandle {
    _opaque: [u8; 0],
}

/// Sonames tried in order: libxenctrl's ABI changes every release, but the
/// part of `xc_domaininfo_t` we read has not changed from 4.17 to 4.20.
pub const XENCTRL_SONAMES: &[&str] = &[
    "libxenctrl.so.4.20",
    "libxenctrl.so.4.19",
    "libxenctrl.so.4.18",
    "libxenctrl.so.4.17",
];

library! {
    /// libxenctrl.so.4.x and every symbol we use from it.
    pub struct XenctrlLib {
        xc_interface_open: fn(*mut c_void, *mut c_void, c_uint) -> *mut XcHandle;
        xc_interface_close: fn(*mut XcHandle) -> c_int;
        xc_domain_getinfolist: fn(*mut XcHandle, u32, c_uint, *mut c_void) -> c_int;
        xc_get_paging_mempool_size: fn(*mut XcHandle, u32, *mut u64) -> c_int;
        xc_domain_get_domain_state: fn(*mut XcHandle, u32, *mut c_uint, *mut u64) -> c_int;
    }
}

// Offsets in `struct xen_domctl_getdomaininfo`
// (xen/include/public/domctl.h, 4.17..4.20, x86-64): the prefix up to
// `handle` is identical in all of them; the struct is 112 bytes on 4.20.
const OFF_DOMAIN: usize = 0;
const OFF_FLAGS: usize = 4;
const OFF_NR_ONLINE_VCPUS: usize = 64;
const OFF_MAX_VCPU_ID: usize = 68;
const OFF_HANDLE: usize = 76;
/// Generous room for one entry of any version of the struct.
const INFO_BUF: usize = 1024;

const XEN_DOMINF_DYING: u32 = 1 << 0;
const XEN_DOMINF_HVM_GUEST: u32 = 1 << 1;
const XEN_DOMINF_SHUTDOWN: u32 = 1 << 2;
const XEN_DOMINF_SHUTDOWNSHIFT: u32 = 16;
const XEN_DOMINF_SHUTDOWNMASK: u32 = 255;
const XEN_INVALID_MAX_VCPU_ID: u32 = !0;

/// What we need to know about a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainInfo {
    pub domid: u16,
    /// The domain handle (UUID): the unique id on Xen 4.20.
    pub handle: [u8; 16],
    pub dying: bool,
    pub shutdown: bool,
    pub shutdown_reason: u8,
    pub hvm: bool,
    /// Number of vCPUs (max_vcpu_id + 1), 0 if it has none.
    pub nr_vcpus: u32,
    pub nr_online_vcpus: u32,
}

#[repr(C, align(8))]
struct InfoBuf([u8; INFO_BUF]);

impl DomainInfo {
    /// Decodes one `xc_domaininfo_t` entry.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let u32_at = |off: usize| -> Option<u32> {
            raw.get(off..off + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
        };
        let domid = raw
            .get(OFF_DOMAIN..OFF_DOMAIN + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_ne_bytes)?;
        let flags = u32_at(OFF_FLAGS)?;
        let max_vcpu_id = u32_at(OFF_MAX_VCPU_ID)?;
        let handle: [u8; 16] = raw.get(OFF_HANDLE..OFF_HANDLE + 16)?.try_into().ok()?;
        Some(DomainInfo {
            domid,
            handle,
            dying: flags & XEN_DOMINF_DYING != 0,
            shutdown: flags & XEN_DOMINF_SHUTDOWN != 0,
            shutdown_reason: ((flags >> XEN_DOMINF_SHUTDOWNSHIFT) & XEN_DOMINF_SHUTDOWNMASK) as u8,
            hvm: flags & XEN_DOMINF_HVM_GUEST != 0,
            nr_vcpus: if max_vcpu_id == XEN_INVALID_MAX_VCPU_ID {
                0
            } else {
                max_vcpu_id.saturating_add(1)
            },
            nr_online_vcpus: u32_at(OFF_NR_ONLINE_VCPUS)?,
        })
    }
}

impl XenctrlLib {
    /// Loads the newest libxenctrl.so.4.x among [`XENCTRL_SONAMES`].
    pub fn load() -> Result<Self> {
        let (lib, name) = loader::open_first(XENCTRL_SONAMES)?;
        Self::from_library(lib, name)
    }

    /// Loads the library from `name` (a soname or a path).
    pub fn load_from(name: &str) -> Result<Self> {
        Self::from_library(loader::open(name)?, name.to_owned())
    }

    /// Opens an xc interface.
    pub fn open(&self) -> Result<Xenctrl<'_>> {
        // SAFETY: NULL loggers = defaults; flags 0. Owned by `Xenctrl`.
        let h = unsafe { (self.xc_interface_open)(ptr::null_mut(), ptr::null_mut(), 0) };
        let h = NonNull::new(h).ok_or_else(|| XenError::last_os("xc_interface_open"))?;
        Ok(Xenctrl { lib: self, h })
    }
}

/// An open `xc_interface`, closed on drop.
#[derive(Debug)]
pub struct Xenctrl<'l> {
    lib: &'l XenctrlLib,
    h: NonNull<XcHandle>,
}

impl Xenctrl<'_> {
    /// Information about `domid`, or None if no such domain exists.
    /// `xc_domain_getinfolist` returns the first domain at or after the one
    /// asked for, so the returned domid is checked.
    pub fn domain_info(&self, domid: u16) -> Result<Option<DomainInfo>> {
        let mut buf = InfoBuf([0; INFO_BUF]);
        // SAFETY: live handle; `buf` is 8-byte aligned and much larger than
        // one `xc_domaininfo_t` of any supported version; we ask for one.
        let n = unsafe {
            (self.lib.xc_domain_getinfolist)(
                self.h.as_ptr(),
                u32::from(domid),
                1,
                buf.0.as_mut_ptr().cast(),
            )
        };
        if n < 0 {
            return Err(XenError::last_os("xc_domain_getinfolist"));
        }
        if n == 0 {
            return Ok(None);
        }
        let info = DomainInfo::parse(&buf.0)
            .ok_or_else(|| XenError::invalid("xc_domain_getinfolist", "short entry"))?;
        Ok((info.domid == domid).then_some(info))
    }
}

impl Xenctrl<'_> {
    /// The unique id of the instance of `domid` (`XEN_DOMCTL_get_domain_state`
    /// of the patched Xen), or None if no domain has that domid. Unlike the
    /// domid and the handle (UUID), it is never given to another domain.
    pub fn unique_id(&self, domid: u16) -> Result<Option<u64>> {
        let mut id = 0u64;
        // SAFETY: live handle; `id` is a valid out pointer for the call and
        // the state pointer may be NULL.
        let rc = unsafe {
            (self.lib.xc_domain_get_domain_state)(
                self.h.as_ptr(),
                u32::from(domid),
                ptr::null_mut(),
                &mut id,
            )
        };
        if rc < 0 {
            let e = XenError::last_os("xc_domain_get_domain_state");
            if e.errno() == Some(libc::ESRCH) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(id))
    }

    /// Size in bytes of the domain's paging pool (HAP or shadow), which
    /// holds its p2m page tables, those of lent pages included.
    pub fn paging_mempool_size(&self, domid: u16) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: live handle; `size` is a valid out pointer for the call.
        let rc = unsafe {
            (self.lib.xc_get_paging_mempool_size)(self.h.as_ptr(), u32::from(domid), &mut size)
        };
        if rc < 0 {
            return Err(XenError::last_os("xc_get_paging_mempool_size"));
        }
        Ok(size)
    }
}

impl Drop for Xenctrl<'_> {
    fn drop(&mut self) {
        // SAFETY: handle from xc_interface_open, closed once.
        unsafe { (self.lib.xc_interface_close)(self.h.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entry_at_c_offsets() {
        let mut raw = [0u8; 112];
        raw[0..2].copy_from_slice(&7u16.to_ne_bytes());
        let flags = XEN_DOMINF_DYING | XEN_DOMINF_HVM_GUEST | XEN_DOMINF_SHUTDOWN | (3 << 16);
        raw[4..8].copy_from_slice(&flags.to_ne_bytes());
        raw[64..68].copy_from_slice(&2u32.to_ne_bytes());
        raw[68..72].copy_from_slice(&3u32.to_ne_bytes());
        for (i, b) in raw[76..92].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        let d = DomainInfo::parse(&raw).expect("parse");
        assert_eq!(d.domid, 7);
        assert!(d.dying && d.hvm && d.shutdown);
        assert_eq!(d.shutdown_reason, 3);
        assert_eq!(d.nr_vcpus, 4);
        assert_eq!(d.nr_online_vcpus, 2);
        assert_eq!(d.handle[0], 1);
        assert_eq!(d.handle[15], 16);
    }

    #[test]
    fn no_vcpu_domain_has_zero_vcpus() {
        let mut raw = [0u8; 112];
        raw[68..72].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(DomainInfo::parse(&raw).map(|d| d.nr_vcpus), Some(0));
    }

    #[test]
    fn short_entry_is_refused() {
        assert_eq!(DomainInfo::parse(&[0u8; 80]), None);
    }
}

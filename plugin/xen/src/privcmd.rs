//! `/dev/xen/privcmd`: the gpu-hostmem ioctls of the patched kernel
//! (docs/interfaces.md section 2) and IOCTL_PRIVCMD_RESTRICT.

use crate::error::{Result, XenError};
use std::fs::OpenOptions;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Default device path.
pub const PRIVCMD_PATH: &str = "/dev/xen/privcmd";
/// Test-only override of [`PRIVCMD_PATH`] (the fake Xen of the tests).
pub const PRIVCMD_ENV: &str = "GPU_HOSTMEM_PRIVCMD";

/// `PRIVCMD_HOSTMEM_REVOKE_ALL`: revoke every lent page of the domain.
pub const PRIVCMD_HOSTMEM_REVOKE_ALL: u16 = 1;

/// `struct privcmd_hostmem_register`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostmemRegister {
    pub addr: u64,
    pub size: u64,
    pub offset: u64,
    pub id: u32,
    pub dom: u16,
    pub flags: u16,
}

/// `struct privcmd_hostmem_unregister`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostmemUnregister {
    pub id: u32,
    pub dom: u16,
    pub flags: u16,
}

/// `struct privcmd_hostmem_lend`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostmemLend {
    pub offset: u64,
    pub gfn: u64,
    pub nr_pages: u32,
    pub dom: u16,
    pub flags: u16,
    pub nr_lent: u32,
    pub pad: u32,
}

/// `struct privcmd_hostmem_revoke`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostmemRevoke {
    pub gfn: u64,
    pub nr_pages: u64,
    pub dom: u16,
    pub flags: u16,
    pub pad: u32,
}

/// `struct privcmd_hostmem_query`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostmemQuery {
    pub dom: u16,
    pub flags: u16,
    pub nr_regions: u32,
    pub regions: u64,
    pub lent_pages: u64,
}

/// `struct privcmd_hostmem_region`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostmemRegion {
    pub offset: u64,
    pub size: u64,
    pub lent_pages: u64,
    pub id: u32,
    pub owner_pid: u32,
}

/// What the kernel says about one guest's host memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostmemState {
    pub lent_pages: u64,
    pub regions: Vec<HostmemRegion>,
}

// Linux `_IOC` encoding (asm-generic/ioctl.h, used by x86 and arm64).
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, ty: u8, nr: u8, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// `_IOC(_IOC_NONE, 'P', 6, sizeof(domid_t))`
pub const IOCTL_PRIVCMD_RESTRICT: u64 = ioc(IOC_NONE, b'P', 6, size_of::<u16>());
/// `_IOW('P', 11, struct privcmd_hostmem_register)`
pub const IOCTL_PRIVCMD_HOSTMEM_REGISTER: u64 =
    ioc(IOC_WRITE, b'P', 11, size_of::<HostmemRegister>());
/// `_IOW('P', 12, struct privcmd_hostmem_unregister)`
pub const IOCTL_PRIVCMD_HOSTMEM_UNREGISTER: u64 =
    ioc(IOC_WRITE, b'P', 12, size_of::<HostmemUnregister>());
/// `_IOWR('P', 13, struct privcmd_hostmem_lend)`
pub const IOCTL_PRIVCMD_HOSTMEM_LEND: u64 =
    ioc(IOC_READ | IOC_WRITE, b'P', 13, size_of::<HostmemLend>());
/// `_IOW('P', 14, struct privcmd_hostmem_revoke)`
pub const IOCTL_PRIVCMD_HOSTMEM_REVOKE: u64 = ioc(IOC_WRITE, b'P', 14, size_of::<HostmemRevoke>());
/// `_IOWR('P', 15, struct privcmd_hostmem_query)`
pub const IOCTL_PRIVCMD_HOSTMEM_QUERY: u64 =
    ioc(IOC_READ | IOC_WRITE, b'P', 15, size_of::<HostmemQuery>());

/// An open privcmd device.
#[derive(Debug)]
pub struct Privcmd {
    fd: OwnedFd,
}

impl Privcmd {
    /// Opens [`PRIVCMD_PATH`] (or `$GPU_HOSTMEM_PRIVCMD`, for tests).
    pub fn open() -> Result<Self> {
        match std::env::var(PRIVCMD_ENV) {
            Ok(p) => Self::open_path(&p),
            Err(_) => Self::open_path(PRIVCMD_PATH),
        }
    }

    /// Opens a privcmd device at `path`.
    pub fn open_path(path: &str) -> Result<Self> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| XenError::Os {
                op: "open /dev/xen/privcmd",
                source,
            })?;
        Ok(Self { fd: f.into() })
    }

    /// Wraps an already open fd (tests use invalid ones).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Issues one ioctl whose argument is `arg`.
    ///
    /// # Safety
    /// `req` must be an ioctl whose argument is a pointer to a `T` (with any
    /// pointers inside it valid for the kernel to follow).
    unsafe fn ioctl<T>(&self, op: &'static str, req: u64, arg: &mut T) -> Result<()> {
        // SAFETY: forwarded from the caller; `arg` is a live, exclusive
        // reference for the duration of the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg as *mut T) };
        if rc < 0 {
            Err(XenError::last_os(op))
        } else {
            Ok(())
        }
    }

    /// Restricts this fd to `domid` for the rest of its life.
    pub fn restrict(&self, domid: u16) -> Result<()> {
        let mut d = domid;
        // SAFETY: IOCTL_PRIVCMD_RESTRICT takes a pointer to a domid_t.
        unsafe { self.ioctl("IOCTL_PRIVCMD_RESTRICT", IOCTL_PRIVCMD_RESTRICT, &mut d) }
    }

    /// Registers host memory for a guest (backend side).
    pub fn hostmem_register(&self, mut arg: HostmemRegister) -> Result<()> {
        // SAFETY: the argument is a `struct privcmd_hostmem_register`; `addr`
        // is only followed by the kernel's own checked accessors.
        unsafe {
            self.ioctl(
                "IOCTL_PRIVCMD_HOSTMEM_REGISTER",
                IOCTL_PRIVCMD_HOSTMEM_REGISTER,
                &mut arg,
            )
        }
    }

    /// Unregisters host memory (revoking what was lent from it).
    pub fn hostmem_unregister(&self, dom: u16, id: u32) -> Result<()> {
        let mut arg = HostmemUnregister { id, dom, flags: 0 };
        // SAFETY: the argument is a `struct privcmd_hostmem_unregister`.
        unsafe {
            self.ioctl(
                "IOCTL_PRIVCMD_HOSTMEM_UNREGISTER",
                IOCTL_PRIVCMD_HOSTMEM_UNREGISTER,
                &mut arg,
            )
        }
    }

    /// Lends `nr_pages` pages from BAR `offset` at guest `gfn`; returns how
    /// many pages of the range are now lent.
    pub fn hostmem_lend(&self, dom: u16, offset: u64, gfn: u64, nr_pages: u32) -> Result<u32> {
        let mut arg = HostmemLend {
            offset,
            gfn,
            nr_pages,
            dom,
            ..HostmemLend::default()
        };
        // SAFETY: the argument is a `struct privcmd_hostmem_lend`.
        unsafe {
            self.ioctl(
                "IOCTL_PRIVCMD_HOSTMEM_LEND",
                IOCTL_PRIVCMD_HOSTMEM_LEND,
                &mut arg,
            )?
        };
        Ok(arg.nr_lent)
    }

    /// Revokes lent pages in `[gfn, gfn + nr_pages)`. ESRCH (domain gone)
    /// counts as success: Xen's teardown dropped every reference.
    pub fn hostmem_revoke(&self, dom: u16, gfn: u64, nr_pages: u64) -> Result<()> {
        self.revoke(HostmemRevoke {
            gfn,
            nr_pages,
            dom,
            flags: 0,
            pad: 0,
        })
    }

    /// Revokes every page lent to `dom` (ESRCH counts as success).
    pub fn hostmem_revoke_all(&self, dom: u16) -> Result<()> {
        self.revoke(HostmemRevoke {
            gfn: 0,
            nr_pages: 0,
            dom,
            flags: PRIVCMD_HOSTMEM_REVOKE_ALL,
            pad: 0,
        })
    }

    fn revoke(&self, mut arg: HostmemRevoke) -> Result<()> {
        // SAFETY: the argument is a `struct privcmd_hostmem_revoke`.
        let r = unsafe {
            self.ioctl(
                "IOCTL_PRIVCMD_HOSTMEM_REVOKE",
                IOCTL_PRIVCMD_HOSTMEM_REVOKE,
                &mut arg,
            )
        };
        match r {
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
            r => r,
        }
    }

    /// Lent pages and registrations of `dom`.
    pub fn hostmem_query(&self, dom: u16) -> Result<HostmemState> {
        let mut cap: u32 = 64;
        loop {
            let mut regions = vec![HostmemRegion::default(); cap as usize];
            let mut arg = HostmemQuery {
                dom,
                flags: 0,
                nr_regions: cap,
                regions: regions.as_mut_ptr() as u64,
                lent_pages: 0,
            };
            // SAFETY: the argument is a `struct privcmd_hostmem_query` whose
            // `regions` points to `cap` writable entries that live across
            // the call.
            unsafe {
                self.ioctl(
                    "IOCTL_PRIVCMD_HOSTMEM_QUERY",
                    IOCTL_PRIVCMD_HOSTMEM_QUERY,
                    &mut arg,
                )?
            };
            if arg.nr_regions <= cap {
                regions.truncate(arg.nr_regions as usize);
                return Ok(HostmemState {
                    lent_pages: arg.lent_pages,
                    regions,
                });
            }
            // More registrations than room: ask again with enough room.
            cap = arg.nr_regions;
        }
    }
}

impl AsFd for Privcmd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The uAPI struct sizes from docs/interfaces.md; they are encoded into
    /// the ioctl numbers, so a wrong size is a wrong ioctl.
    #[test]
    fn uapi_sizes_and_numbers() {
        assert_eq!(size_of::<HostmemRegister>(), 32);
        assert_eq!(size_of::<HostmemUnregister>(), 8);
        assert_eq!(size_of::<HostmemLend>(), 32);
        assert_eq!(size_of::<HostmemRevoke>(), 24);
        assert_eq!(size_of::<HostmemQuery>(), 24);
        assert_eq!(size_of::<HostmemRegion>(), 32);
        // Same encoding as the kernel's IOCTL_PRIVCMD_RESTRICT
        // (/usr/include/xen/privcmd.h): _IOC(_IOC_NONE, 'P', 6, 2).
        assert_eq!(IOCTL_PRIVCMD_RESTRICT, 0x0002_5006);
        assert_eq!(IOCTL_PRIVCMD_HOSTMEM_REGISTER, 0x4020_500b);
        assert_eq!(IOCTL_PRIVCMD_HOSTMEM_LEND, 0xc020_500d);
        assert_eq!(IOCTL_PRIVCMD_HOSTMEM_QUERY, 0xc018_500f);
    }

    #[test]
    fn every_method_fails_cleanly_on_a_non_privcmd_fd() {
        // /dev/null opens fine but knows no ioctl: every call must fail
        // with ENOTTY, naming the operation, without touching memory.
        let p = Privcmd::open_path("/dev/null").expect("open /dev/null");
        let enotty = Some(libc::ENOTTY);
        assert_eq!(p.restrict(1).unwrap_err().errno(), enotty);
        assert_eq!(
            p.hostmem_register(HostmemRegister::default())
                .unwrap_err()
                .errno(),
            enotty
        );
        assert_eq!(p.hostmem_unregister(1, 1).unwrap_err().errno(), enotty);
        assert_eq!(p.hostmem_lend(1, 0, 0, 1).unwrap_err().errno(), enotty);
        assert_eq!(p.hostmem_revoke(1, 0, 1).unwrap_err().errno(), enotty);
        assert_eq!(p.hostmem_revoke_all(1).unwrap_err().errno(), enotty);
        let e = p.hostmem_query(1).unwrap_err();
        assert_eq!(e.errno(), enotty);
        assert!(e.to_string().contains("IOCTL_PRIVCMD_HOSTMEM_QUERY"), "{e}");
    }

    #[test]
    fn not_a_privcmd_device_is_refused() {
        assert!(Privcmd::open_path("/nonexistent/privcmd").is_err());
    }
}

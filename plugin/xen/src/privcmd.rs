//! `/dev/xen/privcmd`: the gpu-hostmem ioctls of the patched kernel
//! (docs/interfaces.md section 2) and IOCTL_PRIVCMD_RESTRICT.

use crate::error::{Result, XenError};
use gpu_hostmem_core::platform::{HostMemQuery, RegionInfo};
use std::fs::OpenOptions;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Default device path.
pub const PRIVCMD_PATH: &str = "/dev/xen/privcmd";
/// Test-only override of [`PRIVCMD_PATH`] (the fake Xen of the tests;
/// `test-env` builds only, see [`crate::testenv`]).
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
    /// The guest instance (Xen's unique id), not 0.
    pub unique_id: u64,
    /// Must be 0.
    pub reserved: [u64; 1],
}

/// `struct privcmd_hostmem_unregister`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostmemUnregister {
    pub id: u32,
    pub dom: u16,
    pub flags: u16,
    /// Must be 0.
    pub reserved: [u64; 2],
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
    /// The guest instance (Xen's unique id), not 0.
    pub unique_id: u64,
    /// Must be 0.
    pub reserved: [u64; 1],
}

/// `struct privcmd_hostmem_revoke`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostmemRevoke {
    pub gfn: u64,
    pub nr_pages: u32,
    pub dom: u16,
    pub flags: u16,
    /// Must be 0.
    pub reserved: [u64; 2],
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
    /// Must be 0.
    pub reserved: [u64; 2],
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
    /// The guest instance it was registered for.
    pub unique_id: u64,
    /// `PRIVCMD_HOSTMEM_REGION_GONE` once Xen said that instance is gone.
    pub flags: u64,
}

/// `PRIVCMD_HOSTMEM_REGION_GONE`
pub const PRIVCMD_HOSTMEM_REGION_GONE: u64 = 1;

impl From<HostmemRegion> for RegionInfo {
    /// The kernel's entry as the one region type of `gpu-hostmem-core`.
    fn from(r: HostmemRegion) -> Self {
        RegionInfo {
            id: r.id,
            offset: r.offset,
            size: r.size,
            lent_pages: Some(r.lent_pages),
            owner_pid: Some(r.owner_pid),
        }
    }
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
/// `_IOW('P', 64, struct privcmd_hostmem_register)`
pub const IOCTL_PRIVCMD_HOSTMEM_REGISTER: u64 =
    ioc(IOC_WRITE, b'P', 64, size_of::<HostmemRegister>());
/// `_IOW('P', 65, struct privcmd_hostmem_unregister)`
pub const IOCTL_PRIVCMD_HOSTMEM_UNREGISTER: u64 =
    ioc(IOC_WRITE, b'P', 65, size_of::<HostmemUnregister>());
/// `_IOWR('P', 66, struct privcmd_hostmem_lend)`
pub const IOCTL_PRIVCMD_HOSTMEM_LEND: u64 =
    ioc(IOC_READ | IOC_WRITE, b'P', 66, size_of::<HostmemLend>());
/// `_IOW('P', 67, struct privcmd_hostmem_revoke)`
pub const IOCTL_PRIVCMD_HOSTMEM_REVOKE: u64 = ioc(IOC_WRITE, b'P', 67, size_of::<HostmemRevoke>());
/// `_IOWR('P', 68, struct privcmd_hostmem_query)`
pub const IOCTL_PRIVCMD_HOSTMEM_QUERY: u64 =
    ioc(IOC_READ | IOC_WRITE, b'P', 68, size_of::<HostmemQuery>());
/// `_IO('P', 69)`
pub const IOCTL_PRIVCMD_HOSTMEM_BACKEND: u64 = ioc(IOC_NONE, b'P', 69, 0);

/// An open privcmd device.
#[derive(Debug)]
pub struct Privcmd {
    fd: OwnedFd,
}

impl Privcmd {
    /// Opens [`PRIVCMD_PATH`] (or `$GPU_HOSTMEM_PRIVCMD`, for tests).
    pub fn open() -> Result<Self> {
        match crate::testenv::var_os(PRIVCMD_ENV) {
            Some(p) => Self::open_path(&p.to_string_lossy()),
            None => Self::open_path(PRIVCMD_PATH),
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

    /// A privcmd file this process was handed (a backend started by
    /// `gpu-hostmem backend` gets one restricted to its guest and narrowed
    /// to registering memory). Nothing is checked here: a wrong fd fails
    /// the first ioctl.
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
        // SAFETY: IOCTL_PRIVCMD_RESTRICT reads one domid_t (a u16) through
        // its argument, and `d` is a live u16.
        unsafe { self.ioctl("IOCTL_PRIVCMD_RESTRICT", IOCTL_PRIVCMD_RESTRICT, &mut d) }
    }

    /// Narrows this fd, already restricted to a guest, to a backend's
    /// rights for good: registering, unregistering and querying host
    /// memory for that guest; every other ioctl and `mmap` then fail with
    /// EPERM (`IOCTL_PRIVCMD_HOSTMEM_BACKEND`, kernel-patches 0008).
    pub fn narrow_to_backend(&self) -> Result<()> {
        // SAFETY: IOCTL_PRIVCMD_HOSTMEM_BACKEND takes no argument.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                IOCTL_PRIVCMD_HOSTMEM_BACKEND as _,
                0 as libc::c_ulong,
            )
        };
        if rc < 0 {
            return Err(XenError::last_os("IOCTL_PRIVCMD_HOSTMEM_BACKEND"));
        }
        Ok(())
    }

    /// The fd, for a process it is handed to.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Registers host memory for a guest (backend side).
    pub fn hostmem_register(&self, mut arg: HostmemRegister) -> Result<()> {
        // SAFETY: the argument is a `HostmemRegister`, the #[repr(C)] copy
        // of `struct privcmd_hostmem_register` (checked against the uAPI
        // header by `uapi_layout_matches_the_header`). Its `addr` is a user
        // address the kernel only reaches through its own checked
        // accessors (GUP): a bad one fails the call, it cannot corrupt us.
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
        let mut arg = HostmemUnregister {
            id,
            dom,
            ..HostmemUnregister::default()
        };
        // SAFETY: IOCTL_PRIVCMD_HOSTMEM_UNREGISTER reads (and may write
        // back) one `struct privcmd_hostmem_unregister`; `arg` is a live
        // `HostmemUnregister`, its #[repr(C)] copy (layout checked against
        // the uAPI header by `uapi_layout_matches_the_header`), with no
        // pointer inside.
        unsafe {
            self.ioctl(
                "IOCTL_PRIVCMD_HOSTMEM_UNREGISTER",
                IOCTL_PRIVCMD_HOSTMEM_UNREGISTER,
                &mut arg,
            )
        }
    }

    /// Lends `nr_pages` pages from BAR `offset` at guest `gfn` to the
    /// instance `unique_id` of `dom`; returns how many pages of the range
    /// are now lent. EXDEV: that instance is gone.
    pub fn hostmem_lend(
        &self,
        dom: u16,
        unique_id: u64,
        offset: u64,
        gfn: u64,
        nr_pages: u32,
    ) -> Result<u32> {
        let mut arg = HostmemLend {
            offset,
            gfn,
            nr_pages,
            dom,
            unique_id,
            ..HostmemLend::default()
        };
        // SAFETY: IOCTL_PRIVCMD_HOSTMEM_LEND reads (and may write
        // back) one `struct privcmd_hostmem_lend`; `arg` is a live
        // `HostmemLend`, its #[repr(C)] copy (layout checked against
        // the uAPI header by `uapi_layout_matches_the_header`), with no
        // pointer inside.
        unsafe {
            self.ioctl(
                "IOCTL_PRIVCMD_HOSTMEM_LEND",
                IOCTL_PRIVCMD_HOSTMEM_LEND,
                &mut arg,
            )?
        };
        Ok(arg.nr_lent)
    }

    /// Revokes lent pages in `[gfn, gfn + nr_pages)`, in calls of at most
    /// `u32::MAX` pages. ESRCH (domain gone) counts as success: Xen's
    /// teardown dropped every reference.
    pub fn hostmem_revoke(&self, dom: u16, gfn: u64, nr_pages: u64) -> Result<()> {
        let mut done = 0u64;
        // At least one call: the kernel answers EINVAL for 0 pages.
        loop {
            let n = u32::try_from(nr_pages - done).unwrap_or(u32::MAX);
            self.revoke(HostmemRevoke {
                gfn: gfn.wrapping_add(done),
                nr_pages: n,
                dom,
                ..HostmemRevoke::default()
            })?;
            done += u64::from(n);
            if done >= nr_pages {
                return Ok(());
            }
        }
    }

    /// Revokes every page lent to `dom` (ESRCH counts as success). The
    /// kernel refuses it (EPERM) on a file holding registrations for `dom`:
    /// it is the device model's call.
    pub fn hostmem_revoke_all(&self, dom: u16) -> Result<()> {
        self.revoke(HostmemRevoke {
            dom,
            flags: PRIVCMD_HOSTMEM_REVOKE_ALL,
            ..HostmemRevoke::default()
        })
    }

    fn revoke(&self, mut arg: HostmemRevoke) -> Result<()> {
        // SAFETY: IOCTL_PRIVCMD_HOSTMEM_REVOKE reads (and may write
        // back) one `struct privcmd_hostmem_revoke`; `arg` is a live
        // `HostmemRevoke`, its #[repr(C)] copy (layout checked against
        // the uAPI header by `uapi_layout_matches_the_header`), with no
        // pointer inside.
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
    pub fn hostmem_query(&self, dom: u16) -> Result<HostMemQuery> {
        let mut cap: u32 = 64;
        loop {
            let mut regions = vec![HostmemRegion::default(); cap as usize];
            let mut arg = HostmemQuery {
                dom,
                nr_regions: cap,
                regions: regions.as_mut_ptr() as u64,
                ..HostmemQuery::default()
            };
            // SAFETY: the argument is a `HostmemQuery`, the #[repr(C)] copy
            // of `struct privcmd_hostmem_query`; its `regions` points to
            // `cap` writable `HostmemRegion`s (the header's
            // `struct privcmd_hostmem_region`) that live across the call,
            // and the kernel writes at most `nr_regions` (= `cap`) of them.
            unsafe {
                self.ioctl(
                    "IOCTL_PRIVCMD_HOSTMEM_QUERY",
                    IOCTL_PRIVCMD_HOSTMEM_QUERY,
                    &mut arg,
                )?
            };
            if arg.nr_regions <= cap {
                regions.truncate(arg.nr_regions as usize);
                return Ok(HostMemQuery {
                    lent_pages: arg.lent_pages,
                    regions: regions.into_iter().map(RegionInfo::from).collect(),
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
        assert_eq!(size_of::<HostmemRegister>(), 48);
        assert_eq!(size_of::<HostmemUnregister>(), 24);
        assert_eq!(size_of::<HostmemLend>(), 48);
        assert_eq!(size_of::<HostmemRevoke>(), 32);
        assert_eq!(size_of::<HostmemQuery>(), 40);
        assert_eq!(size_of::<HostmemRegion>(), 48);
        // Same encoding as the kernel's IOCTL_PRIVCMD_RESTRICT
        // (/usr/include/xen/privcmd.h): _IOC(_IOC_NONE, 'P', 6, 2).
        assert_eq!(IOCTL_PRIVCMD_RESTRICT, 0x0002_5006);
        // 'P' 64..68: 11 and 13 are taken by other privcmd series.
        assert_eq!(IOCTL_PRIVCMD_HOSTMEM_REGISTER, 0x4030_5040);
        assert_eq!(IOCTL_PRIVCMD_HOSTMEM_UNREGISTER, 0x4018_5041);
        assert_eq!(IOCTL_PRIVCMD_HOSTMEM_LEND, 0xc030_5042);
        assert_eq!(IOCTL_PRIVCMD_HOSTMEM_REVOKE, 0x4020_5043);
        assert_eq!(IOCTL_PRIVCMD_HOSTMEM_QUERY, 0xc028_5044);
        assert_eq!(IOCTL_PRIVCMD_HOSTMEM_BACKEND, 0x5045);
    }

    /// The uAPI header the kernel series exports, as shipped for backends.
    const HEADER: &str = include_str!("../../../examples/privcmd-hostmem.h");

    /// Fields of `struct NAME` in [`HEADER`]: (name, offset, size) with C's
    /// natural alignment of the `__uN`/`domid_t` types used there, and the
    /// struct's size (padded to its alignment).
    fn c_layout(name: &str) -> (Vec<(String, usize, usize)>, usize) {
        let start = format!("struct {name} {{");
        let body = HEADER
            .split(start.as_str())
            .nth(1)
            .and_then(|rest| rest.split("};").next())
            .unwrap_or_else(|| panic!("struct {name} not in the header"));
        let (mut fields, mut off, mut align) = (Vec::new(), 0usize, 1usize);
        for line in body.lines() {
            let decl = line.split("/*").next().unwrap_or("").trim();
            let Some(decl) = decl.strip_suffix(';') else {
                assert!(decl.is_empty(), "{name}: cannot read {line:?}");
                continue;
            };
            let mut words = decl.split_whitespace();
            let (ty, field) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let elem = match ty {
                "__u64" => 8,
                "__u32" => 4,
                "__u16" | "domid_t" => 2,
                "__u8" => 1,
                _ => panic!("{name}: unknown type in {line:?}"),
            };
            let (field, count) = match field.split_once('[') {
                Some((f, n)) => (f, n.trim_end_matches(']').parse::<usize>().expect("array")),
                None => (field, 1),
            };
            off = off.next_multiple_of(elem);
            align = align.max(elem);
            fields.push((field.to_string(), off, elem * count));
            off += elem * count;
        }
        (fields, off.next_multiple_of(align))
    }

    /// Every field of each #[repr(C)] struct sits at the offset, with the
    /// size, that the uAPI header gives it, in the header's order, and
    /// the structs have the header's size: the header, not a copy of its
    /// numbers, is the reference.
    #[test]
    fn uapi_layout_matches_the_header() {
        macro_rules! rust_layout {
            ($t:ty, $($f:ident),+) => {{
                let v = <$t>::default();
                let fields: Vec<(String, usize, usize)> = vec![$((
                    stringify!($f).to_string(),
                    std::mem::offset_of!($t, $f),
                    std::mem::size_of_val(&v.$f),
                )),+];
                (fields, size_of::<$t>())
            }};
        }
        let cases = [
            (
                "privcmd_hostmem_register",
                rust_layout!(
                    HostmemRegister,
                    addr,
                    size,
                    offset,
                    id,
                    dom,
                    flags,
                    unique_id,
                    reserved
                ),
            ),
            (
                "privcmd_hostmem_unregister",
                rust_layout!(HostmemUnregister, id, dom, flags, reserved),
            ),
            (
                "privcmd_hostmem_lend",
                rust_layout!(
                    HostmemLend,
                    offset,
                    gfn,
                    nr_pages,
                    dom,
                    flags,
                    nr_lent,
                    pad,
                    unique_id,
                    reserved
                ),
            ),
            (
                "privcmd_hostmem_revoke",
                rust_layout!(HostmemRevoke, gfn, nr_pages, dom, flags, reserved),
            ),
            (
                "privcmd_hostmem_query",
                rust_layout!(
                    HostmemQuery,
                    dom,
                    flags,
                    nr_regions,
                    regions,
                    lent_pages,
                    reserved
                ),
            ),
            (
                "privcmd_hostmem_region",
                rust_layout!(
                    HostmemRegion,
                    offset,
                    size,
                    lent_pages,
                    id,
                    owner_pid,
                    unique_id,
                    flags
                ),
            ),
        ];
        for (name, rust) in cases {
            assert_eq!(
                c_layout(name),
                rust,
                "struct {name}: (field, offset, size), size"
            );
        }
    }

    /// The reader of the header sees a changed field.
    #[test]
    fn header_layout_reader_follows_alignment() {
        let (fields, size) = c_layout("privcmd_hostmem_query");
        assert_eq!(fields[2], ("nr_regions".to_string(), 4, 4));
        assert_eq!(fields[3], ("regions".to_string(), 8, 8));
        assert_eq!(size, 40);
    }

    #[test]
    fn a_kernel_region_converts_to_the_core_type() {
        let r = HostmemRegion {
            offset: 0x20_0000,
            size: 0x10_0000,
            lent_pages: 256,
            id: 3,
            owner_pid: 4242,
            unique_id: 99,
            flags: PRIVCMD_HOSTMEM_REGION_GONE,
        };
        assert_eq!(
            RegionInfo::from(r),
            RegionInfo {
                id: 3,
                offset: 0x20_0000,
                size: 0x10_0000,
                lent_pages: Some(256),
                owner_pid: Some(4242),
            }
        );
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
        assert_eq!(p.hostmem_lend(1, 1, 0, 0, 1).unwrap_err().errno(), enotty);
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

//! libxendevicemodel.so.1: ioreq servers and their ranges.

use crate::error::{Result, XenError};
use crate::loader::{self, library};
use gpu_hostmem_core::ioreq::Sbdf;
use gpu_hostmem_core::platform::RetryStats;
use std::ffi::{c_int, c_uint, c_void};
use std::ptr::{self, NonNull};

/// Opaque `xendevicemodel_handle`.
#[repr(C)]
pub struct XdmHandle {
    _opaque: [u8; 0],
}

/// `XEN_DMOP_IOREQ_SERVER_RETRY` (docs/interfaces.md): opt in to
/// `STATE_IORESP_RETRY`.
pub const XEN_DMOP_IOREQ_SERVER_RETRY: c_uint = 1 << 0;
/// `HVM_IOREQSRV_BUFIOREQ_OFF`: we need no buffered ioreq ring.
pub const HVM_IOREQSRV_BUFIOREQ_OFF: c_int = 0;
/// `SHUTDOWN_crash` (`xen/include/public/sched.h`): the reason a device
/// model gives when it shuts a guest down after a fatal error.
pub const SHUTDOWN_CRASH: c_uint = 3;

library! {
    /// libxendevicemodel.so.1 and every symbol we use from it.
    pub struct DeviceModelLib {
        xendevicemodel_open: fn(*mut c_void, c_uint) -> *mut XdmHandle;
        xendevicemodel_close: fn(*mut XdmHandle) -> c_int;
        xendevicemodel_create_ioreq_server: fn(*mut XdmHandle, u16, c_int, *mut u16) -> c_int;
        xendevicemodel_map_io_range_to_ioreq_server:
            fn(*mut XdmHandle, u16, u16, c_int, u64, u64) -> c_int;
        xendevicemodel_unmap_io_range_from_ioreq_server:
            fn(*mut XdmHandle, u16, u16, c_int, u64, u64) -> c_int;
        xendevicemodel_map_pcidev_to_ioreq_server:
            fn(*mut XdmHandle, u16, u16, u16, u8, u8, u8) -> c_int;
        xendevicemodel_unmap_pcidev_from_ioreq_server:
            fn(*mut XdmHandle, u16, u16, u16, u8, u8, u8) -> c_int;
        xendevicemodel_set_ioreq_server_state: fn(*mut XdmHandle, u16, u16, c_int) -> c_int;
        xendevicemodel_destroy_ioreq_server: fn(*mut XdmHandle, u16, u16) -> c_int;
        xendevicemodel_restrict: fn(*mut XdmHandle, u16) -> c_int;
        xendevicemodel_shutdown: fn(*mut XdmHandle, u16, c_uint) -> c_int;
        xendevicemodel_set_pci_intx_level:
            fn(*mut XdmHandle, u16, u16, u8, u8, u8, c_uint) -> c_int;
        xendevicemodel_nr_vcpus: fn(*mut XdmHandle, u16, *mut c_uint) -> c_int;
        // Added by the gpu-hostmem Xen series (new version node): absent
        // from stock libraries, in which case RETRY is not available.
        ?xendevicemodel_create_ioreq_server_flags:
            fn(*mut XdmHandle, u16, c_int, c_uint, *mut u16) -> c_int;
        // Same series (its libxendevicemodel patch): Xen's counters of the
        // domain's RETRY answers; absent, they are not shown.
        ?xendevicemodel_get_retry_stats:
            fn(*mut XdmHandle, u16, *mut u64, *mut u64, *mut u64) -> c_int;
        // Same series: the unique id of the domain a domid names now, on a
        // handle restricted to it; absent, identity needs xenctrl.
        ?xendevicemodel_get_instance: fn(*mut XdmHandle, u16, *mut u64, *mut c_uint) -> c_int;
    }
}

impl DeviceModelLib {
    /// The soname loaded by [`DeviceModelLib::load`].
    pub const SONAME: &'static str = "libxendevicemodel.so.1";

    /// Loads libxendevicemodel.so.1.
    pub fn load() -> Result<Self> {
        Self::load_from(Self::SONAME)
    }

    /// Loads the library from `name` (a soname or a path).
    pub fn load_from(name: &str) -> Result<Self> {
        Self::from_library(loader::open(name)?, name.to_owned())
    }

    /// Whether the library offers `xendevicemodel_create_ioreq_server_flags`.
    pub fn has_create_with_flags(&self) -> bool {
        self.xendevicemodel_create_ioreq_server_flags.is_some()
    }

    /// Whether the library offers `xendevicemodel_get_retry_stats`.
    pub fn has_retry_stats(&self) -> bool {
        self.xendevicemodel_get_retry_stats.is_some()
    }

    /// Whether the library offers `xendevicemodel_get_instance`.
    pub fn has_get_instance(&self) -> bool {
        self.xendevicemodel_get_instance.is_some()
    }

    /// Opens a device model handle.
    pub fn open(&self) -> Result<DeviceModel<'_>> {
        // SAFETY: a NULL logger selects the library's default logger; the
        // flags are 0. The returned handle is owned by `DeviceModel`.
        let h = unsafe { (self.xendevicemodel_open)(ptr::null_mut(), 0) };
        let h = NonNull::new(h).ok_or_else(|| XenError::last_os("xendevicemodel_open"))?;
        Ok(DeviceModel { lib: self, h })
    }
}

/// `XEN_DMOP_INSTANCE_DYING`: the domain is being destroyed.
pub const XEN_DMOP_INSTANCE_DYING: c_uint = 1 << 0;
/// `XEN_DMOP_INSTANCE_SHUTDOWN`: the domain is shutting down or shut down.
pub const XEN_DMOP_INSTANCE_SHUTDOWN: c_uint = 1 << 1;

/// What `XEN_DMOP_get_instance` says of the domain a domid names now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// Xen's unique id of the domain (never 0, never reused).
    pub unique_id: u64,
    /// The domain is being destroyed.
    pub dying: bool,
    /// The domain is shutting down or shut down.
    pub shutdown: bool,
}

/// An open `xendevicemodel_handle`, closed on drop.
#[derive(Debug)]
pub struct DeviceModel<'l> {
    lib: &'l DeviceModelLib,
    h: NonNull<XdmHandle>,
}

/// Converts a C status (0 or -1 with errno) into a `Result`.
fn check(op: &'static str, rc: c_int) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(XenError::last_os(op))
    }
}

impl<'l> DeviceModel<'l> {
    /// Restricts this handle to `domid` (deprivileging; cannot be undone).
    pub fn restrict(&self, domid: u16) -> Result<()> {
        // SAFETY: `h` is a live handle owned by `self`.
        check("xendevicemodel_restrict", unsafe {
            (self.lib.xendevicemodel_restrict)(self.h.as_ptr(), domid)
        })
    }

    /// Shuts `domid` down with `reason`, a `SHUTDOWN_*` code such as
    /// [`SHUTDOWN_CRASH`] (`XEN_DMOP_remote_shutdown`; allowed on a handle
    /// restricted to `domid`).
    pub fn shutdown(&self, domid: u16, reason: c_uint) -> Result<()> {
        // SAFETY: `h` is a live handle owned by `self`; integer arguments.
        check("xendevicemodel_shutdown", unsafe {
            (self.lib.xendevicemodel_shutdown)(self.h.as_ptr(), domid, reason)
        })
    }

    /// Sets INTA of `sbdf` in `domid` to `level`
    /// (`XEN_DMOP_set_pci_intx_level`; allowed on a handle restricted to
    /// `domid`). Xen takes the slot's INTA to the ISA IRQ its PCI link
    /// routes it to; the function number does not matter to it.
    pub fn set_pci_intx_level(&self, domid: u16, sbdf: Sbdf, level: bool) -> Result<()> {
        /// INTA (Xen's `intx` counts from 0 for INTA).
        const INTA: u8 = 0;
        // SAFETY: `h` is a live handle owned by `self`; integer arguments.
        check("xendevicemodel_set_pci_intx_level", unsafe {
            (self.lib.xendevicemodel_set_pci_intx_level)(
                self.h.as_ptr(),
                domid,
                sbdf.seg,
                sbdf.bus,
                sbdf.dev,
                INTA,
                c_uint::from(level),
            )
        })
    }

    /// Creates an ioreq server for `domid` without a buffered ring. With
    /// `retry`, opts in to `STATE_IORESP_RETRY` through the create-with-flags
    /// call of the gpu-hostmem Xen series: a library without it gives
    /// ENOSYS, an unpatched hypervisor EINVAL (it requires the old pad byte
    /// to be zero). Falling back is the caller's decision.
    pub fn create_ioreq_server(&self, domid: u16, retry: bool) -> Result<IoreqServer<'_>> {
        let mut id: u16 = 0;
        if retry {
            let create_flags = self
                .lib
                .xendevicemodel_create_ioreq_server_flags
                .ok_or_else(|| {
                    XenError::from_errno("xendevicemodel_create_ioreq_server_flags", libc::ENOSYS)
                })?;
            // SAFETY: live handle; `id` is a valid out pointer.
            check("xendevicemodel_create_ioreq_server_flags", unsafe {
                create_flags(
                    self.h.as_ptr(),
                    domid,
                    HVM_IOREQSRV_BUFIOREQ_OFF,
                    XEN_DMOP_IOREQ_SERVER_RETRY,
                    &mut id,
                )
            })?;
        } else {
            // SAFETY: live handle; `id` is a valid out pointer.
            check("xendevicemodel_create_ioreq_server", unsafe {
                (self.lib.xendevicemodel_create_ioreq_server)(
                    self.h.as_ptr(),
                    domid,
                    HVM_IOREQSRV_BUFIOREQ_OFF,
                    &mut id,
                )
            })?;
        }
        Ok(IoreqServer {
            dm: self,
            domid,
            id,
            retry,
        })
    }

    /// Reads Xen's counters of how `domid`'s RETRY answers ended (all its
    /// servers, since it was created). `ENOSYS` if the library lacks the
    /// call (not the gpu-hostmem series); an unpatched hypervisor answers
    /// `EOPNOTSUPP`.
    pub fn retry_stats(&self, domid: u16) -> Result<RetryStats> {
        const OP: &str = "xendevicemodel_get_retry_stats";
        let get = self
            .lib
            .xendevicemodel_get_retry_stats
            .ok_or_else(|| XenError::from_errno(OP, libc::ENOSYS))?;
        let mut c = RetryStats::default();
        // SAFETY: live handle; the three pointers are distinct valid
        // `u64`s of `c`, written by the call before it returns.
        check(OP, unsafe {
            get(
                self.h.as_ptr(),
                domid,
                &mut c.completed,
                &mut c.resent,
                &mut c.refused,
            )
        })?;
        Ok(c)
    }

    /// Which instance of the domain `domid` names now
    /// (`XEN_DMOP_get_instance`), or `None` when no domain has it. Allowed
    /// on a handle restricted to `domid`, so a deprivileged device model
    /// needs no xenctrl handle to tell its guest from a new domain given
    /// the domid. `ENOSYS` if the library lacks the call; an unpatched
    /// hypervisor answers `EOPNOTSUPP`.
    pub fn instance(&self, domid: u16) -> Result<Option<Instance>> {
        const OP: &str = "xendevicemodel_get_instance";
        let get = self
            .lib
            .xendevicemodel_get_instance
            .ok_or_else(|| XenError::from_errno(OP, libc::ENOSYS))?;
        let mut unique_id = 0u64;
        let mut flags: c_uint = 0;
        // SAFETY: live handle; both pointers are valid locals, written by
        // the call before it returns.
        let rc = unsafe { get(self.h.as_ptr(), domid, &mut unique_id, &mut flags) };
        if rc != 0 {
            let e = XenError::last_os(OP);
            if e.errno() == Some(libc::ESRCH) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(Instance {
            unique_id,
            dying: flags & XEN_DMOP_INSTANCE_DYING != 0,
            shutdown: flags & XEN_DMOP_INSTANCE_SHUTDOWN != 0,
        }))
    }

    /// The number of vCPUs of `domid` (`XEN_DMOP_nr_vcpus`; allowed on a
    /// handle restricted to `domid`).
    pub fn nr_vcpus(&self, domid: u16) -> Result<u32> {
        let mut n: c_uint = 0;
        // SAFETY: live handle; `n` is a valid out pointer.
        check("xendevicemodel_nr_vcpus", unsafe {
            (self.lib.xendevicemodel_nr_vcpus)(self.h.as_ptr(), domid, &mut n)
        })?;
        Ok(n)
    }

    /// Takes charge of an existing server `id` of `domid` (created by a
    /// process that is gone), so that it can be destroyed. The caller must
    /// have checked that `domid` still names the domain the server was
    /// created for.
    pub fn adopt_ioreq_server(&self, domid: u16, id: u16) -> IoreqServer<'_> {
        IoreqServer {
            dm: self,
            domid,
            id,
            retry: false,
        }
    }
}

impl Drop for DeviceModel<'_> {
    fn drop(&mut self) {
        // SAFETY: `h` came from xendevicemodel_open and is closed once here;
        // every borrower (`IoreqServer`) has been dropped before us.
        unsafe { (self.lib.xendevicemodel_close)(self.h.as_ptr()) };
    }
}

/// An ioreq server of one domain, destroyed on drop.
#[derive(Debug)]
pub struct IoreqServer<'d> {
    dm: &'d DeviceModel<'d>,
    domid: u16,
    id: u16,
    retry: bool,
}

impl IoreqServer<'_> {
    /// The server id (`ioservid_t`).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The guest this server serves.
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// Whether Xen accepted the RETRY opt-in at creation.
    pub fn retry_enabled(&self) -> bool {
        self.retry
    }

    /// Routes accesses to `[start, end]` (inclusive) to this server.
    pub fn map_io_range(&self, is_mmio: bool, start: u64, end: u64) -> Result<()> {
        if end < start {
            return Err(XenError::invalid(
                "xendevicemodel_map_io_range_to_ioreq_server",
                format!("empty range {start:#x}..={end:#x}"),
            ));
        }
        // SAFETY: `self.dm.h` is the live handle of the DeviceModel this
        // server borrows (closed only by its Drop, which cannot run while
        // the borrow lives); the call takes integers only and writes no
        // memory of ours.
        check("xendevicemodel_map_io_range_to_ioreq_server", unsafe {
            (self.dm.lib.xendevicemodel_map_io_range_to_ioreq_server)(
                self.dm.h.as_ptr(),
                self.domid,
                self.id,
                c_int::from(is_mmio),
                start,
                end,
            )
        })
    }

    /// Stops routing `[start, end]` to this server.
    pub fn unmap_io_range(&self, is_mmio: bool, start: u64, end: u64) -> Result<()> {
        // SAFETY: `self.dm.h` is the live handle of the DeviceModel this
        // server borrows (closed only by its Drop, which cannot run while
        // the borrow lives); the call takes integers only and writes no
        // memory of ours.
        check("xendevicemodel_unmap_io_range_from_ioreq_server", unsafe {
            (self.dm.lib.xendevicemodel_unmap_io_range_from_ioreq_server)(
                self.dm.h.as_ptr(),
                self.domid,
                self.id,
                c_int::from(is_mmio),
                start,
                end,
            )
        })
    }

    /// Claims the config space of one PCI function.
    pub fn map_pcidev(&self, sbdf: Sbdf) -> Result<()> {
        // SAFETY: `self.dm.h` is the live handle of the DeviceModel this
        // server borrows (closed only by its Drop, which cannot run while
        // the borrow lives); the call takes integers only and writes no
        // memory of ours.
        check("xendevicemodel_map_pcidev_to_ioreq_server", unsafe {
            (self.dm.lib.xendevicemodel_map_pcidev_to_ioreq_server)(
                self.dm.h.as_ptr(),
                self.domid,
                self.id,
                sbdf.seg,
                sbdf.bus,
                sbdf.dev,
                sbdf.func,
            )
        })
    }

    /// Releases the config space of one PCI function.
    pub fn unmap_pcidev(&self, sbdf: Sbdf) -> Result<()> {
        // SAFETY: `self.dm.h` is the live handle of the DeviceModel this
        // server borrows (closed only by its Drop, which cannot run while
        // the borrow lives); the call takes integers only and writes no
        // memory of ours.
        check("xendevicemodel_unmap_pcidev_from_ioreq_server", unsafe {
            (self.dm.lib.xendevicemodel_unmap_pcidev_from_ioreq_server)(
                self.dm.h.as_ptr(),
                self.domid,
                self.id,
                sbdf.seg,
                sbdf.bus,
                sbdf.dev,
                sbdf.func,
            )
        })
    }

    /// Enables or disables the server. Xen writes each vCPU's event channel
    /// port into the ioreq page when the server is enabled.
    pub fn set_enabled(&self, enabled: bool) -> Result<()> {
        // SAFETY: `self.dm.h` is the live handle of the DeviceModel this
        // server borrows (closed only by its Drop, which cannot run while
        // the borrow lives); the call takes integers only and writes no
        // memory of ours.
        check("xendevicemodel_set_ioreq_server_state", unsafe {
            (self.dm.lib.xendevicemodel_set_ioreq_server_state)(
                self.dm.h.as_ptr(),
                self.domid,
                self.id,
                c_int::from(enabled),
            )
        })
    }

    /// Destroys the server now and reports the result (drop does the same
    /// silently).
    pub fn destroy(self) -> Result<()> {
        let rc = self.destroy_raw();
        std::mem::forget(self);
        check("xendevicemodel_destroy_ioreq_server", rc)
    }

    /// Forgets the server without destroying it: for a domid that now names
    /// another domain, where destroying "our" id would act on a stranger
    /// (Xen destroyed the real server with its domain).
    pub fn abandon(self) {
        std::mem::forget(self);
    }

    fn destroy_raw(&self) -> c_int {
        // SAFETY: live handle; the id is ours and destroyed at most once
        // (either here from `destroy`, which forgets `self`, or in Drop).
        unsafe {
            (self.dm.lib.xendevicemodel_destroy_ioreq_server)(
                self.dm.h.as_ptr(),
                self.domid,
                self.id,
            )
        }
    }
}

impl Drop for IoreqServer<'_> {
    fn drop(&mut self) {
        // Destroying also disables the server and drops every range and
        // PCI device it claimed. Failure (domain already gone) is fine.
        let _ = self.destroy_raw();
    }
}

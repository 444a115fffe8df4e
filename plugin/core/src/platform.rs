//! The platform traits: what the logic needs from Xen and from the patched
//! privcmd, and nothing more.
//!
//! Two implementations exist: `gpu-hostmem-xen` (the real thing, through
//! libloading and privcmd ioctls) and `gpu-hostmem-sim` (a simulator with
//! real state, used by the tests). The logic in [`crate::server`] is generic
//! over them.
//!
//! Rules every implementation keeps:
//! - Every operation that names a guest takes its [`DomainIdentity`] and
//!   refuses (with `ESRCH`) to act when the domid now belongs to another
//!   domain (invariant I5). A domain that is gone answers `ESRCH`.
//! - Errors carry the operation and the errno ([`PlatformError`]); nothing
//!   panics.
//! - No `&mut` to memory shared with Xen is handed out: ioreq slots are read
//!   as copies and written through [`IoreqChannel::complete`].

use std::fmt;
use std::time::Duration;

use crate::ioreq::{Ioreq, Sbdf};

/// A guest domain: its domid plus an id that is never reused.
///
/// With the patched Xen (`XEN_DOMCTL_get_domain_state`) `uid` is the 64-bit
/// `unique_id` in the first 8 bytes (little endian), rest zero
/// ([`DomainIdentity::from_unique_id`]): Xen checks it at every lend. The
/// domain handle (UUID) is not unique (xl keeps it across a reboot, users
/// may set it) and is never used as the identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainIdentity {
    /// The domain id (may be reused after the domain is destroyed).
    pub domid: u16,
    /// The unique id (never reused).
    pub uid: [u8; 16],
}

impl DomainIdentity {
    /// Build an identity.
    pub fn new(domid: u16, uid: [u8; 16]) -> Self {
        DomainIdentity { domid, uid }
    }

    /// The identity of the instance of `domid` whose Xen unique id is `id`.
    pub fn from_unique_id(domid: u16, id: u64) -> Self {
        let mut uid = [0u8; 16];
        uid[..8].copy_from_slice(&id.to_le_bytes());
        DomainIdentity { domid, uid }
    }

    /// The Xen unique id (see [`DomainIdentity::from_unique_id`]).
    pub fn unique_id(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.uid[..8]);
        u64::from_le_bytes(b)
    }

    /// The uid as a canonical UUID string.
    pub fn uid_string(&self) -> String {
        let u = &self.uid;
        format!(
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]
        )
    }
}

impl fmt::Debug for DomainIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dom{}/{}", self.domid, self.uid_string())
    }
}

impl fmt::Display for DomainIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A Linux errno value (positive), as the C libraries and ioctls report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such file or directory (unknown registration id).
    pub const ENOENT: Errno = Errno(2);
    /// No such process (domain gone).
    pub const ESRCH: Errno = Errno(3);
    /// Interrupted system call.
    pub const EINTR: Errno = Errno(4);
    /// I/O error.
    pub const EIO: Errno = Errno(5);
    /// Bad file descriptor (handle closed).
    pub const EBADF: Errno = Errno(9);
    /// Try again.
    pub const EAGAIN: Errno = Errno(11);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Permission denied.
    pub const EACCES: Errno = Errno(13);
    /// Bad address.
    pub const EFAULT: Errno = Errno(14);
    /// Device or resource busy.
    pub const EBUSY: Errno = Errno(16);
    /// Already exists (target GFN not empty, frame already lent, overlap).
    pub const EEXIST: Errno = Errno(17);
    /// No such device.
    pub const ENODEV: Errno = Errno(19);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// No space left (a limit was hit).
    pub const ENOSPC: Errno = Errno(28);
    /// Function not implemented (missing library, symbol or DMOP).
    pub const ENOSYS: Errno = Errno(38);
    /// Operation not supported.
    pub const EOPNOTSUPP: Errno = Errno(95);
    /// Timed out.
    pub const ETIMEDOUT: Errno = Errno(110);

    /// Short symbolic name, for messages.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            3 => "ESRCH",
            4 => "EINTR",
            5 => "EIO",
            9 => "EBADF",
            11 => "EAGAIN",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            19 => "ENODEV",
            22 => "EINVAL",
            28 => "ENOSPC",
            38 => "ENOSYS",
            95 => "EOPNOTSUPP",
            110 => "ETIMEDOUT",
            _ => "errno",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// A failed platform operation: which operation, and the errno it gave.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} failed: {errno}")]
pub struct PlatformError {
    /// The operation, e.g. `"xendevicemodel_map_io_range_to_ioreq_server"`
    /// or `"IOCTL_PRIVCMD_HOSTMEM_LEND"`.
    pub op: &'static str,
    /// The errno.
    pub errno: Errno,
}

impl PlatformError {
    /// Build an error.
    pub fn new(op: &'static str, errno: Errno) -> Self {
        PlatformError { op, errno }
    }

    /// The domain is gone (or the domid now names another domain).
    pub fn is_gone(&self) -> bool {
        self.errno == Errno::ESRCH
    }
}

/// Result of platform operations.
pub type PlatformResult<T> = Result<T, PlatformError>;

/// Id of an ioreq server within its domain (`ioservid_t`).
pub type IoServId = u16;

/// Why [`IoreqChannel::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// At least one vCPU event channel fired (and was unmasked again); the
    /// caller should drain every slot.
    Event,
    /// The timeout passed, or the wait was interrupted (EINTR): the caller
    /// checks its stop flag and may drain anyway.
    Timeout,
}

/// The ioreq page of one server plus its per-vCPU event channels.
///
/// Memory ordering: [`state`](Self::state) is an Acquire load of the state
/// byte; [`read`](Self::read) copies the slot and is only meaningful after
/// a `state()` that returned `STATE_IOREQ_READY`; [`set_state`](Self::set_state)
/// and [`complete`](Self::complete) publish with Release, `complete` writing
/// `data` before the state.
pub trait IoreqChannel {
    /// Number of vCPU slots.
    fn nr_vcpus(&self) -> u32;

    /// Block until an event arrives on any vCPU port or `timeout` passes.
    /// Implementations consume the pending port(s) and unmask them before
    /// returning, and map EINTR to [`Wake::Timeout`].
    fn wait(&mut self, timeout: Option<Duration>) -> PlatformResult<Wake>;

    /// Acquire-load the state of a vCPU's slot.
    fn state(&self, vcpu: u32) -> PlatformResult<u8>;

    /// Copy a vCPU's slot out (after `state()` saw READY).
    fn read(&self, vcpu: u32) -> PlatformResult<Ioreq>;

    /// Release-store a new state (used for READY -> INPROCESS).
    fn set_state(&self, vcpu: u32, state: u8) -> PlatformResult<()>;

    /// Store `data`, then Release-store `state` (`STATE_IORESP_READY` or
    /// `STATE_IORESP_RETRY`).
    fn complete(&self, vcpu: u32, data: u64, state: u8) -> PlatformResult<()>;

    /// Notify Xen on the vCPU's event channel.
    fn notify(&self, vcpu: u32) -> PlatformResult<()>;
}

/// What the IOREQ server needs from Xen's device-model interface
/// (libxendevicemodel, libxenforeignmemory, libxenevtchn, libxenctrl).
///
/// Every method checks `dom` (domid and uid) and answers `ESRCH` if the
/// domain is gone or the domid names a different domain now.
pub trait DeviceModel {
    /// The ioreq page + event channels of a server.
    type Channel: IoreqChannel;

    /// Identity of the domain that currently has `domid`, or `None`.
    fn lookup(&self, domid: u16) -> PlatformResult<Option<DomainIdentity>>;

    /// True if `dom` exists with this uid and is not dying.
    fn is_alive(&self, dom: &DomainIdentity) -> PlatformResult<bool>;

    /// Create an ioreq server with no buffered ring. `retry` opts in to
    /// `STATE_IORESP_RETRY` (`XEN_DMOP_IOREQ_SERVER_RETRY`); a hypervisor
    /// without the flag answers `EINVAL`.
    fn create_server(&mut self, dom: &DomainIdentity, retry: bool) -> PlatformResult<IoServId>;

    /// Map the server's ioreq page and bind one event channel per vCPU.
    fn open_channel(&mut self, dom: &DomainIdentity, id: IoServId)
        -> PlatformResult<Self::Channel>;

    /// Enable or disable the server (requests flow only while enabled).
    fn set_server_state(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        enabled: bool,
    ) -> PlatformResult<()>;

    /// Claim a PCI function: config cycles for `sbdf` come to this server.
    fn map_pcidev(&mut self, dom: &DomainIdentity, id: IoServId, sbdf: Sbdf) -> PlatformResult<()>;

    /// Release a PCI function.
    fn unmap_pcidev(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        sbdf: Sbdf,
    ) -> PlatformResult<()>;

    /// Route guest-physical MMIO `[start, end]` (inclusive, as Xen takes
    /// it) to this server.
    fn map_mmio(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        start: u64,
        end: u64,
    ) -> PlatformResult<()>;

    /// Stop routing guest-physical MMIO `[start, end]` (inclusive).
    fn unmap_mmio(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        start: u64,
        end: u64,
    ) -> PlatformResult<()>;

    /// Set INTA of `sbdf` to `level` (`xendevicemodel_set_pci_intx_level`,
    /// `XEN_DMOP_set_pci_intx_level`). Xen routes it to the ISA IRQ the
    /// firmware chose for the slot; asserting a line already asserted
    /// changes nothing.
    fn set_pci_intx_level(
        &mut self,
        dom: &DomainIdentity,
        sbdf: Sbdf,
        level: bool,
    ) -> PlatformResult<()>;

    /// Destroy the server. `ESRCH` (domain gone) counts as done for callers.
    fn destroy_server(&mut self, dom: &DomainIdentity, id: IoServId) -> PlatformResult<()>;

    /// Shut the domain down as crashed (`xendevicemodel_shutdown(dmod,
    /// domid, SHUTDOWN_crash)`), for a fatal error that would otherwise
    /// leave the guest hanging on a device that no longer answers. `why`
    /// is the reason, for the platform's own records; the toolstack then
    /// applies the guest's `on_crash` action.
    fn crash_domain(&mut self, dom: &DomainIdentity, why: &str) -> PlatformResult<()>;

    /// Write `data` into the guest's own RAM at guest-physical `gpa`, as
    /// a device model's DMA does (libxenforeignmemory on a handle
    /// restricted to the guest): the server completes a `data_is_ptr`
    /// read of unbacked BAR offsets with it. Every page of the range must
    /// be the guest's RAM: a hole, MMIO or a page lent to the guest (Xen
    /// refuses foreign mappings of lent pages) fails the call, and then
    /// nothing is written. `EINVAL` for a range that wraps around or
    /// spans more pages than one mapping takes.
    fn write_guest_ram(
        &mut self,
        dom: &DomainIdentity,
        gpa: u64,
        data: &[u8],
    ) -> PlatformResult<()>;

    /// Xen's counters of how the domain's `STATE_IORESP_RETRY` answers
    /// ended, for all its ioreq servers, since it was created
    /// (`xendevicemodel_get_retry_stats`, `XEN_DMOP_get_retry_stats`).
    /// `ENOSYS`: the library lacks the call; `EOPNOTSUPP`: the hypervisor
    /// lacks the DMOP. Read only: the counters are Xen's, not ours.
    fn retry_stats(&self, dom: &DomainIdentity) -> PlatformResult<RetryStats>;
}

/// Xen's per-domain counters of `STATE_IORESP_RETRY` answers
/// (`struct xen_dm_op_get_retry_stats`). Every RETRY answer a server gives
/// ends as exactly one of them, so over the life of a domain whose only
/// RETRY server is ours, their sum is the number of RETRY answers we gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryStats {
    /// Answers Xen honoured: it completed the access from the memory now
    /// at the address.
    pub completed: u64,
    /// Requests Xen sent again because no memory backed them yet.
    pub resent: u64,
    /// Requests Xen completed as unbacked (reads all ones, writes
    /// dropped) after its resends, or because it cannot complete them
    /// from memory: the server's answer was not honoured.
    pub refused: u64,
}

/// Which pages to revoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeRange {
    /// `nr_pages` GFNs from `first_gfn`.
    Gfns {
        /// First GFN.
        first_gfn: u64,
        /// Number of pages.
        nr_pages: u64,
    },
    /// Every page lent to the domain (`PRIVCMD_HOSTMEM_REVOKE_ALL`).
    All,
}

/// One backend registration: the only type for it above the privcmd FFI
/// struct (`gpu_hostmem_xen::privcmd::HostmemRegion` converts into it). The
/// kernel's answer ([`HostMem::query`]) fills every field; the server's own
/// cache of registrations ([`crate::registry::Registry`]) keeps these too,
/// without the lent-page count, which only the kernel knows at any time,
/// so that is optional.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionInfo {
    /// Caller-chosen id.
    pub id: u32,
    /// BAR offset in bytes.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Pages of it lent now (kernel view), if known.
    pub lent_pages: Option<u64>,
    /// Process that registered it, if known.
    pub owner_pid: Option<u32>,
}

impl RegionInfo {
    /// Registration `id` over `[offset, offset + size)`, with nothing of
    /// the kernel's view (lent pages, owner) known.
    pub fn new(id: u32, offset: u64, size: u64) -> Self {
        Self {
            id,
            offset,
            size,
            lent_pages: None,
            owner_pid: None,
        }
    }

    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }
}

/// The kernel's view of a guest (`IOCTL_PRIVCMD_HOSTMEM_QUERY`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostMemQuery {
    /// Pages lent to the domain in total.
    pub lent_pages: u64,
    /// Registrations, by offset.
    pub regions: Vec<RegionInfo>,
}

/// The kernel side (patched privcmd): lending registered backend pages to
/// the guest, and revoking them.
pub trait HostMem {
    /// Lend the registered pages at BAR offset `bar_offset..+nr_pages*4K`
    /// to GFNs `gfn..+nr_pages` (`IOCTL_PRIVCMD_HOSTMEM_LEND`).
    /// Returns how many pages of the range are lent now; unregistered pages
    /// are skipped. Errors: `ESRCH` domain gone, `ENOSPC` limit, `EEXIST`
    /// target occupied, `EBUSY` an invalidation is in progress (try later).
    fn lend(
        &mut self,
        dom: &DomainIdentity,
        bar_offset: u64,
        gfn: u64,
        nr_pages: u32,
    ) -> PlatformResult<u32>;

    /// Revoke lent pages (`IOCTL_PRIVCMD_HOSTMEM_REVOKE`). Pages not lent
    /// are skipped; a domain that is gone is success (returns `Ok`).
    fn revoke(&mut self, dom: &DomainIdentity, range: RevokeRange) -> PlatformResult<()>;

    /// The kernel's registrations and lent-page count for the domain.
    fn query(&self, dom: &DomainIdentity) -> PlatformResult<HostMemQuery>;
}

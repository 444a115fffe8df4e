//! The IOREQ server logic, generic over the platform traits.
//!
//! Setup is an explicit sequence of [`Stage`]s (create the server with
//! RETRY, open the ioreq page and event channels, claim the PCI function,
//! enable); a failure unwinds exactly the stages done. [`Server::drain`]
//! takes every READY slot: READY -> INPROCESS -> handle -> IORESP_READY or
//! IORESP_RETRY -> notify. PCI config cycles go to [`crate::pci`]. A BAR
//! request lends the fault-around chunk(s) of the registered pages it
//! touches through [`HostMem`] and answers RETRY: Xen then completes the
//! access from that memory itself. Offsets nobody registered complete as
//! an unbacked BAR (reads all-ones, writes dropped), `data_is_ptr`
//! requests too: the server fills the guest's buffer with ones itself
//! ([`DeviceModel::write_guest_ram`]) and answers READY, as a device
//! model does. The fault rate limit, a lent-page limit with nothing left
//! to revoke, and a lend the kernel refused delay a request (its slot
//! stays INPROCESS until a later drain answers it); they never answer it
//! with made-up data. A lend that keeps failing is fatal: the request is
//! completed and the guest crashed with the errno and the offset. A BAR
//! move revokes what was lent at the old address and remaps the MMIO
//! range. [`Server::shutdown`] and
//! [`teardown`] revoke everything of the domain and are idempotent.

use std::ops::Range;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::fault_around::{self, PAGE_SHIFT, PAGE_SIZE};
use crate::ioreq::{
    size_mask, Ioreq, Sbdf, IOREQ_TYPE_COPY, IOREQ_TYPE_INVALIDATE, IOREQ_TYPE_PCI_CONFIG,
    IOREQ_TYPE_PIO, IOREQ_TYPE_TIMEOFFSET, STATE_IOREQ_INPROCESS, STATE_IOREQ_READY,
    STATE_IORESP_READY, STATE_IORESP_RETRY,
};
use crate::ledger::DomainLedger;
use crate::limits::{Limits, LogLimit, RateLimiter};
use crate::model::{FunctionModel, MmioAnswer, ModelChange};
use crate::pci::{BarChange, PciError, PciFunction, PciIds};
use crate::platform::{
    DeviceModel, DomainIdentity, Errno, HostMem, HostMemQuery, IoServId, IoreqChannel,
    PlatformError, PlatformResult, RegionInfo, RetryStats, RevokeRange, Wake,
};
use crate::registry::Registry;
use crate::retry_stats::{RetryNews, RetryWatch};
use crate::status::{Counters, Status};

/// How many times a lend that answered `EBUSY` is tried again at once.
pub const LEND_BUSY_ATTEMPTS: u32 = 3;

/// Runs revoked at most, one per `ENOSPC`, before a lend that the
/// kernel's own limit refuses waits instead.
pub const ENOSPC_EVICTIONS: u32 = 8;

/// How long a request left pending for room under the lent-page limit, or
/// for a lend the kernel answered `EBUSY`, waits before it is tried again.
pub const DEFER_POLL: Duration = Duration::from_millis(10);

/// Attempts at lending for one request that the kernel refuses with an
/// errno that is not a transient one (`EIO`, `ENOMEM`, `EFAULT`, ...: not
/// `EBUSY`, `ENOSPC`, `EEXIST` or `ESRCH`), [`DEFER_POLL`] apart, the
/// request left pending in between. Registered memory is never answered
/// with made-up data: after the last one the request is completed and the
/// guest crashed ([`ServerError::LendFailed`]).
pub const LEND_ERROR_ATTEMPTS: u32 = 500;

/// Bytes one BAR request may touch at most. Xen truncates a string request
/// at the page boundary of its first element, and with xen-patches/0017
/// splits a straddling element like a plain access (before, a single
/// straddling element touched two pages); this bound only refuses nonsense.
pub const MAX_REQUEST_BYTES: u64 = 4096 * 8;

/// Parameters of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The PCI function we claim.
    pub sbdf: Sbdf,
    /// Its ids.
    pub ids: PciIds,
    /// BAR size in bytes.
    pub bar_size: u64,
    /// Fault-around chunk in bytes.
    pub fault_around: u64,
    /// Limits.
    pub limits: Limits,
}

/// Setup stages, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// `create_server` with RETRY.
    CreateServer,
    /// `open_channel`.
    OpenChannel,
    /// `map_pcidev`.
    MapPciDev,
    /// `set_server_state(true)`.
    Enable,
}

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad PCI parameters.
    #[error("PCI function: {0}")]
    Pci(#[from] PciError),
    /// A setup stage failed (what was done before it is undone).
    #[error("setup stage {stage:?}: {error}")]
    Setup {
        /// The stage.
        stage: Stage,
        /// The cause.
        error: PlatformError,
    },
    /// A platform call failed while running.
    #[error("{0}")]
    Platform(#[from] PlatformError),
    /// A restarted server's saved device state was refused.
    #[error("saved device state refused: {0}")]
    Restore(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Lent pages at a range the BAR no longer decodes could not be
    /// revoked: the server must stop and the domain be torn down.
    #[error("revoking pages of the old BAR range failed: {0}")]
    RevokeFailed(PlatformError),
    /// The kernel refused to lend registered pages the guest accesses,
    /// [`LEND_ERROR_ATTEMPTS`] times: answering would make data up.
    #[error("lending BAR offset {offset:#x} failed {attempts} times: {error}")]
    LendFailed {
        /// The BAR offset of the page the request touches.
        offset: u64,
        /// Attempts made.
        attempts: u32,
        /// The last error (operation and errno).
        error: PlatformError,
    },
    /// A `data_is_ptr` read of unbacked BAR offsets whose guest buffer
    /// could not be filled with ones (not the guest's RAM, or a mapping
    /// failure): completing it would leave the buffer as it was.
    #[error("data_is_ptr read at {addr:#x}: cannot fill the guest buffer {gpa:#x}+{len:#x} with ones: {error}")]
    GuestBuffer {
        /// The BAR address of the request.
        addr: u64,
        /// The first guest-physical byte of the buffer.
        gpa: u64,
        /// Its length in bytes (`count * size`).
        len: u64,
        /// The error (operation and errno).
        error: PlatformError,
    },
    /// A `data_is_ptr` read whose buffer is not a range Xen produces
    /// (element size, count, or the buffer wrapping around the address
    /// space): no exact answer exists.
    #[error("data_is_ptr read at {addr:#x}: {count} x {size} bytes at buffer {data:#x} (df {df}) is not a request Xen makes")]
    BadDataPointer {
        /// The BAR address of the request.
        addr: u64,
        /// The buffer address Xen gave.
        data: u64,
        /// Element size.
        size: u32,
        /// Elements.
        count: u32,
        /// Direction flag.
        df: bool,
    },
}

/// What the caller's loop should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep serving.
    Continue,
    /// The domain is gone: shut down.
    DomainGone,
}

/// Why a BAR access completed as unbacked (for logs and counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unbacked {
    /// Memory decode off or no BAR address.
    NotDecoded,
    /// Address outside the BAR (stale request after a move).
    OutsideBar,
    /// No registration at that offset.
    Unregistered,
    /// A registration whose owner has no memory there any more (privcmd
    /// answers `EFAULT`: the range unmapped without unregistering, or the
    /// owner's memory torn down by the OOM reaper before its exit).
    OwnerUnmapped,
    /// A request Xen does not produce (size, count, vCPU).
    Unsupported,
    /// The domain is gone.
    DomainGone,
}

/// Why a BAR request was left pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defer {
    /// The fault rate limit: answered when a token is available.
    Rate,
    /// No room under the lent-page limit, nothing left to revoke.
    Room,
    /// The kernel answered `EBUSY` (an invalidation is running).
    Busy,
    /// The kernel refused the lend with another errno: tried again a
    /// bounded number of times ([`LEND_ERROR_ATTEMPTS`]).
    Failed,
}

/// An answer, or a fatal error (the request is completed, then the guest
/// is crashed: [`Server::drain`]).
type Answer = Result<Response, ServerError>;

/// The answer to one ioreq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// Data for reads.
    pub data: u64,
    /// `STATE_IORESP_READY` or `STATE_IORESP_RETRY`; `STATE_IOREQ_INPROCESS`
    /// when the request is left pending ([`Response::is_pending`]).
    pub state: u8,
}

impl Response {
    /// Not answered now: the slot stays INPROCESS and the server answers
    /// it from a later [`Server::drain`].
    fn pending() -> Self {
        Response {
            data: 0,
            state: STATE_IOREQ_INPROCESS,
        }
    }

    /// True if the request was left pending: the caller must neither
    /// complete the slot nor notify.
    pub fn is_pending(&self) -> bool {
        self.state == STATE_IOREQ_INPROCESS
    }

    fn ready(data: u64) -> Self {
        Response {
            data,
            state: STATE_IORESP_READY,
        }
    }
    fn retry(data: u64) -> Self {
        Response {
            data,
            state: STATE_IORESP_RETRY,
        }
    }
}

/// Result of a teardown: what failed (empty when all is clean). Steps
/// that found nothing to do, or a domain that is gone, are not failures.
#[derive(Debug, Default)]
pub struct TeardownReport {
    /// Errors of individual steps, teardown went on after each.
    pub errors: Vec<PlatformError>,
    /// Xen's RETRY counters of the domain, read before the server was
    /// destroyed ([`Server::shutdown`] only; `None` if unreadable).
    pub xen_retry: Option<RetryStats>,
}

impl TeardownReport {
    /// True if every step succeeded or was vacuous.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    fn note(&mut self, r: Result<(), PlatformError>) {
        match r {
            Ok(()) => {}
            Err(e) if e.errno == Errno::ESRCH || e.errno == Errno::ENOENT => {}
            Err(e) => self.errors.push(e),
        }
    }
}

/// Revoke every page lent to `dom` and destroy its ioreq server, without a
/// running server (the plugin's destroy hook, `gpu-hostmem teardown`).
/// Idempotent; a domain that is gone, or whose domid now names another
/// domain, is left untouched and counts as success: the platform checks
/// `dom`'s uid, and `dom` must be the recorded identity, never the result
/// of a fresh lookup by domid.
pub fn teardown<D: DeviceModel, H: HostMem>(
    dm: &mut D,
    hm: &mut H,
    dom: &DomainIdentity,
    servid: Option<IoServId>,
) -> TeardownReport {
    let mut report = TeardownReport::default();
    info!(%dom, "teardown: revoking every lent page");
    report.note(hm.revoke(dom, RevokeRange::All));
    if let Some(id) = servid {
        info!(%dom, id, "teardown: destroying ioreq server");
        report.note(dm.destroy_server(dom, id));
    }
    report
}

/// One IOREQ server for one domain, presenting the device `F` (the plain
/// window function by default, see [`crate::model`]).
pub struct Server<D: DeviceModel, H: HostMem, F: FunctionModel = PciFunction> {
    dm: D,
    hm: H,
    dom: DomainIdentity,
    id: IoServId,
    chan: Option<D::Channel>,
    cfg: ServerConfig,
    func: F,
    mmio: Option<Range<u64>>,
    /// The register BAR's range while routed to us.
    regs_mmio: Option<Range<u64>>,
    registry: Registry,
    ledger: DomainLedger,
    /// Bounds the log lines of BAR moves, which the guest makes at will.
    bar_log: LogLimit,
    /// Requests left pending, at most one per vCPU.
    deferred: Vec<Option<(Ioreq, Defer)>>,
    /// Failed lends of each vCPU's current request.
    lend_failures: Vec<u32>,
    /// Per vCPU, the `data_is_ptr` read handed to Xen (RETRY with nothing
    /// lent, its buffer being lent memory the server cannot map) and how
    /// many times it was answered so: Xen resends it and, after its last
    /// resend, completes it as unbacked, which it counts as refused.
    handed: Vec<Option<(Ioreq, u32)>>,
    /// Set when the current answer handed a request to Xen.
    handed_now: bool,
    /// Refused answers Xen counted that the server did not explain
    /// ([`Counters::xen_fills`]), as last warned about.
    refused_warned: u64,
    rate: RateLimiter,
    counters: Counters,
    /// Xen's counters of our RETRY answers, as last read.
    xen_retry: RetryWatch,
    gone: bool,
    stopped: bool,
    /// The guest was crashed for a request whose handling failed, before
    /// that request was completed ([`Server::drain`] does not crash it
    /// again).
    crashed_early: bool,
    /// Called with [`FunctionModel::saved`] after every config write (or
    /// register access) that changed the device, before the access is
    /// completed: a server restarted after a crash restores it
    /// ([`Server::attach`]).
    save_pci: Option<SavePci>,
}

/// Where [`Server`] saves the guest-written PCI state (see
/// [`Server::set_pci_saver`]).
pub type SavePci = Box<dyn FnMut(&str) -> Result<(), String>>;

impl<D: DeviceModel, H: HostMem> Server<D, H, PciFunction> {
    /// Set the server up for `dom`, presenting the plain window function.
    /// On failure, the stages already done are undone and the platform
    /// handles are returned with the error.
    #[allow(clippy::result_large_err)]
    pub fn start(
        dm: D,
        hm: H,
        dom: DomainIdentity,
        cfg: ServerConfig,
    ) -> Result<Self, (ServerError, D, H)> {
        match PciFunction::new(cfg.ids, cfg.bar_size) {
            Ok(pci) => Server::start_with(dm, hm, dom, cfg, pci),
            Err(e) => Err((e.into(), dm, hm)),
        }
    }

    /// [`Server::attach_with`] for the plain window function.
    #[allow(clippy::result_large_err)]
    pub fn attach(
        dm: D,
        hm: H,
        dom: DomainIdentity,
        id: IoServId,
        cfg: ServerConfig,
        pci_saved: Option<&str>,
    ) -> Result<Self, (ServerError, D, H)> {
        match PciFunction::new(cfg.ids, cfg.bar_size) {
            Ok(pci) => Server::attach_with(dm, hm, dom, id, cfg, pci, pci_saved),
            Err(e) => Err((e.into(), dm, hm)),
        }
    }
}

impl<D: DeviceModel, H: HostMem, F: FunctionModel> Server<D, H, F> {
    /// Set the server up for `dom`, presenting `func`. On failure, the
    /// stages already done are undone and the platform handles are
    /// returned with the error.
    #[allow(clippy::result_large_err)]
    pub fn start_with(
        mut dm: D,
        hm: H,
        dom: DomainIdentity,
        cfg: ServerConfig,
        func: F,
    ) -> Result<Self, (ServerError, D, H)> {
        let fail = |stage, error| ServerError::Setup { stage, error };
        info!(%dom, "creating ioreq server with RETRY");
        let id = match dm.create_server(&dom, true) {
            Ok(id) => id,
            Err(e) => return Err((fail(Stage::CreateServer, e), dm, hm)),
        };
        info!(%dom, id, "mapping ioreq page and binding event channels");
        let chan = match dm.open_channel(&dom, id) {
            Ok(c) => c,
            Err(e) => {
                let _ = dm.destroy_server(&dom, id);
                return Err((fail(Stage::OpenChannel, e), dm, hm));
            }
        };
        info!(%dom, id, sbdf = %cfg.sbdf, "claiming PCI function");
        if let Err(e) = dm.map_pcidev(&dom, id, cfg.sbdf) {
            drop(chan);
            let _ = dm.destroy_server(&dom, id);
            return Err((fail(Stage::MapPciDev, e), dm, hm));
        }
        info!(%dom, id, "enabling ioreq server");
        if let Err(e) = dm.set_server_state(&dom, id, true) {
            let _ = dm.unmap_pcidev(&dom, id, cfg.sbdf);
            drop(chan);
            let _ = dm.destroy_server(&dom, id);
            return Err((fail(Stage::Enable, e), dm, hm));
        }
        Ok(Server::assemble(
            dm, hm, dom, id, chan, cfg, func, None, None,
        ))
    }

    /// A server over handles set up by [`Server::start`] or
    /// [`Server::attach`]: the function and BAR range as they are now,
    /// everything else fresh (no registration, nothing lent, nothing
    /// pending, counters at zero).
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dm: D,
        hm: H,
        dom: DomainIdentity,
        id: IoServId,
        chan: D::Channel,
        cfg: ServerConfig,
        func: F,
        mmio: Option<Range<u64>>,
        regs_mmio: Option<Range<u64>>,
    ) -> Self {
        let nr_vcpus = chan.nr_vcpus();
        Server {
            dm,
            hm,
            dom,
            id,
            chan: Some(chan),
            func,
            mmio,
            regs_mmio,
            registry: Registry::new(),
            ledger: DomainLedger::default(),
            bar_log: LogLimit::default(),
            deferred: vec![None; nr_vcpus as usize],
            lend_failures: vec![0; nr_vcpus as usize],
            handed: vec![None; nr_vcpus as usize],
            handed_now: false,
            refused_warned: 0,
            rate: RateLimiter::new(cfg.limits.fault_rate, cfg.limits.fault_burst),
            counters: Counters::default(),
            xen_retry: RetryWatch::default(),
            cfg,
            gone: false,
            stopped: false,
            crashed_early: false,
            save_pci: None,
        }
    }

    /// Take over server `id` of `dom`, which a process that died (SIGKILL,
    /// a crash) left running, enabled and claiming the PCI function:
    /// reopen its ioreq page and event channels, restore the PCI state
    /// the dead process saved (`pci_saved`, from
    /// [`Server::set_pci_saver`]), route the BAR's range again, and revoke
    /// every page lent to `dom` so that the ledger, empty now, is exact
    /// (the guest faults those pages in again; revoking is always safe).
    /// A request the dead process took but never answered (its slot left
    /// INPROCESS) is put back to READY, so the first [`Server::drain`]
    /// answers it with the requests still READY; one it answered but did
    /// not notify (IORESP_READY or IORESP_RETRY) is notified now. On failure nothing of the
    /// server is undone (a later attempt may succeed): the handles are
    /// returned with the error.
    /// A device with a register BAR has it routed again too, and its
    /// INTA set to the level the saved state says.
    #[allow(clippy::result_large_err)]
    pub fn attach_with(
        mut dm: D,
        mut hm: H,
        dom: DomainIdentity,
        id: IoServId,
        cfg: ServerConfig,
        mut func: F,
        pci_saved: Option<&str>,
    ) -> Result<Self, (ServerError, D, H)> {
        let mut intx = false;
        if let Some(saved) = pci_saved {
            match func.restore(saved) {
                Ok(level) => intx = level,
                Err(e) => return Err((ServerError::Restore(Box::new(e)), dm, hm)),
            }
        }
        let fail = |stage, error| ServerError::Setup { stage, error };
        info!(%dom, id, "re-attaching to ioreq server: mapping ioreq page, binding event channels");
        let chan = match dm.open_channel(&dom, id) {
            Ok(c) => c,
            Err(e) => return Err((fail(Stage::OpenChannel, e), dm, hm)),
        };
        info!(%dom, "re-attaching: revoking every lent page (the ledger starts empty)");
        if let Err(e) = hm.revoke(&dom, RevokeRange::All) {
            return Err((ServerError::RevokeFailed(e), dm, hm));
        }
        let mut ranges = [None, None];
        for (slot, bar) in ranges
            .iter_mut()
            .zip([func.window().active_bar(), func.regs()])
        {
            let Some(bar) = bar else { continue };
            // Still routed to us unless the process died between the
            // change and its save: EEXIST is the usual answer.
            match dm.map_mmio(&dom, id, bar.start, bar.end - 1) {
                Ok(()) => {}
                Err(e) if e.errno == Errno::EEXIST => {}
                Err(e) => return Err((fail(Stage::MapPciDev, e), dm, hm)),
            }
            *slot = Some(bar);
        }
        let [mmio, regs_mmio] = ranges;
        if func.regs().is_some() || intx {
            // Xen keeps the line's level; set it to what the device says.
            if let Err(e) = dm.set_pci_intx_level(&dom, cfg.sbdf, intx) {
                return Err((fail(Stage::MapPciDev, e), dm, hm));
            }
        }
        let nr_vcpus = chan.nr_vcpus();
        for vcpu in 0..nr_vcpus {
            let r = chan.state(vcpu).and_then(|st| match st {
                STATE_IOREQ_INPROCESS => {
                    info!(%dom, vcpu, "re-attaching: answering the request the dead process took");
                    chan.set_state(vcpu, STATE_IOREQ_READY)
                }
                _ => notify_unsent_answer(&chan, vcpu, st).map(|sent| {
                    if sent {
                        info!(%dom, vcpu, "re-attaching: notified the answer the dead process wrote");
                    }
                }),
            });
            if let Err(e) = r {
                drop(chan);
                return Err((fail(Stage::OpenChannel, e), dm, hm));
            }
        }
        Ok(Server::assemble(
            dm, hm, dom, id, chan, cfg, func, mmio, regs_mmio,
        ))
    }

    /// Save the guest-written device state with `f` after every access
    /// that changes it, before that access is completed (and once now), so
    /// that [`Server::attach`] in a restarted process finds the BAR where
    /// the guest put it (and a virtio device where its driver left it). A
    /// failed save is logged; the server goes on.
    pub fn set_pci_saver(&mut self, f: SavePci) {
        self.save_pci = Some(f);
        self.save_pci_state();
    }

    fn save_pci_state(&mut self) {
        let state = self.func.saved();
        if let Some(f) = self.save_pci.as_mut() {
            if let Err(e) = f(&state) {
                warn!(dom = %self.dom, error = %e, "cannot save the PCI state: a restarted server would not find the BAR");
            }
        }
    }

    /// The domain served.
    pub fn domain(&self) -> &DomainIdentity {
        &self.dom
    }

    /// The ioreq server id.
    pub fn ioservid(&self) -> IoServId {
        self.id
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The PCI function that owns the window BAR.
    pub fn pci(&self) -> &PciFunction {
        self.func.window()
    }

    /// The device model.
    pub fn model(&self) -> &F {
        &self.func
    }

    /// The ledger.
    pub fn ledger(&self) -> &DomainLedger {
        &self.ledger
    }

    /// The device model (for tests and status).
    pub fn device_model(&self) -> &D {
        &self.dm
    }

    /// The host memory handle (for tests and status).
    pub fn host_mem(&self) -> &H {
        &self.hm
    }

    /// Wait for events (bounded by `timeout`, and by the time a pending
    /// request can be answered), then drain.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> Result<Flow, ServerError> {
        let timeout = match self.next_wake(Instant::now()) {
            Some(w) => Some(timeout.map_or(w, |t| t.min(w))),
            None => timeout,
        };
        let Some(chan) = self.chan.as_mut() else {
            return Ok(Flow::DomainGone);
        };
        let flow = match chan.wait(timeout)? {
            Wake::Event | Wake::Timeout => self.drain(Instant::now())?,
        };
        if flow == Flow::Continue {
            self.background();
        }
        let now = Instant::now();
        if flow == Flow::Continue && self.xen_retry.due(now) {
            let _ = self.poll_xen_retry(now);
        }
        Ok(flow)
    }

    /// The device model's own work ([`FunctionModel::background`]: the
    /// virtio-gpu device's fenced responses its renderer finished): INTA
    /// follows it and a changed state is saved. [`Server::run_once`] calls
    /// it after every wake-up.
    pub fn background(&mut self) {
        let b = self.func.background();
        self.set_intx(b.intx);
        if b.changed {
            self.save_pci_state();
        }
    }

    /// Read Xen's counters of the domain's RETRY answers and log what the
    /// operator must see: refused answers (Xen completed the access as
    /// unbacked, without the memory the server lent) at warn level each
    /// time their count goes up, and once that the counters cannot be
    /// read. [`Server::run_once`] calls it at most once per
    /// [`RetryWatch::INTERVAL`]. Returns the reading and what was logged.
    pub fn poll_xen_retry(
        &mut self,
        now: Instant,
    ) -> (PlatformResult<RetryStats>, Option<RetryNews>) {
        let r = self.dm.retry_stats(&self.dom);
        let news = self.xen_retry.observe(&r, now);
        let news = self.explain_refused(news);
        let dom = self.dom;
        match &news {
            Some(RetryNews::Refused { by, now }) => warn!(
                %dom, new_refused = by, refused = now.refused, completed = now.completed,
                resent = now.resent, server_retries = self.counters.retries,
                "Xen completed RETRY answers as unbacked (all ones, writes dropped): the guest's access bypassed the lent memory"
            ),
            Some(RetryNews::RefusedBefore(st)) => warn!(
                %dom, refused = st.refused, completed = st.completed, resent = st.resent,
                "Xen already completed RETRY answers of this domain as unbacked before this server read its counters"
            ),
            Some(RetryNews::Unavailable(e)) if e.errno == Errno::ENOSYS => info!(
                %dom, error = %e,
                "Xen's RETRY counters are not available (libxendevicemodel without xendevicemodel_get_retry_stats): not shown in status"
            ),
            Some(RetryNews::Unavailable(e)) => warn!(
                %dom, error = %e,
                "Xen's RETRY counters cannot be read (hypervisor without XEN_DMOP_get_retry_stats?): not shown in status"
            ),
            None => {
                if let Err(e) = &r {
                    debug!(%dom, error = %e, "reading Xen's RETRY counters failed");
                }
            }
        }
        (r, news)
    }

    /// Refused answers the server caused itself are not news: a
    /// `data_is_ptr` read it handed to Xen ([`Counters::xen_fills`]) ends
    /// refused by design (Xen fills the guest buffer with ones). Only the
    /// refused answers beyond those are reported, each once.
    fn explain_refused(&mut self, news: Option<RetryNews>) -> Option<RetryNews> {
        let now = match &news {
            Some(RetryNews::Refused { now, .. }) | Some(RetryNews::RefusedBefore(now)) => *now,
            _ => return news,
        };
        let unexplained = now.refused.saturating_sub(self.counters.xen_fills);
        if unexplained <= self.refused_warned {
            return None;
        }
        let by = unexplained - self.refused_warned;
        self.refused_warned = unexplained;
        match news {
            Some(RetryNews::RefusedBefore(st)) => Some(RetryNews::RefusedBefore(st)),
            _ => Some(RetryNews::Refused { by, now }),
        }
    }

    /// Handle every READY slot once. A domain that goes away meanwhile
    /// gives [`Flow::DomainGone`], not an error. Any other error is fatal:
    /// the guest is shut down as crashed, with the error as the reason,
    /// rather than left waiting on a device that no longer answers.
    pub fn drain(&mut self, now: Instant) -> Result<Flow, ServerError> {
        match self
            .serve_deferred(now)
            .and_then(|()| self.drain_slots(now))
        {
            Err(ServerError::Platform(e)) if e.is_gone() => {
                self.gone = true;
                Ok(Flow::DomainGone)
            }
            Err(e) => {
                // Not twice: a request whose handling failed had the guest
                // crashed before it was completed.
                if !std::mem::take(&mut self.crashed_early) {
                    self.crash_guest(&e);
                }
                Err(e)
            }
            other => other,
        }
    }

    /// Handling a request failed with `e`: a fatal error crashes the guest
    /// now, before the request is completed, so that no vCPU runs on with
    /// the answer of a request that could not be served.
    fn crash_before_completing(&mut self, e: &ServerError) {
        let gone = matches!(e, ServerError::Platform(p) if p.is_gone());
        if !gone && !self.crashed_early {
            self.crash_guest(e);
            self.crashed_early = true;
        }
    }

    fn crash_guest(&mut self, why: &ServerError) {
        let reason = format!("gpu-hostmem-ioreqd: {why}");
        error!(dom = %self.dom, %reason, "fatal error: shutting the guest down as crashed");
        match self.dm.crash_domain(&self.dom, &reason) {
            Ok(()) => {}
            Err(e) if e.is_gone() => self.gone = true,
            Err(e) => error!(dom = %self.dom, error = %e, "cannot shut the guest down"),
        }
    }

    fn drain_slots(&mut self, now: Instant) -> Result<Flow, ServerError> {
        let nr = match self.chan.as_ref() {
            Some(c) => c.nr_vcpus(),
            None => return Ok(Flow::DomainGone),
        };
        for vcpu in 0..nr {
            let req = {
                let Some(chan) = self.chan.as_ref() else {
                    break;
                };
                if chan.state(vcpu)? != STATE_IOREQ_READY {
                    continue;
                }
                let req = chan.read(vcpu)?;
                chan.set_state(vcpu, STATE_IOREQ_INPROCESS)?;
                req
            };
            // From here the vCPU waits for this slot: complete it whatever
            // happens before an error goes up (a fatal one crashes the
            // guest first).
            let (resp, failed) = match self.handle(vcpu, &req, now) {
                Ok(resp) => (resp, None),
                Err(e) => {
                    self.crash_before_completing(&e);
                    (fatal_answer(&req), Some(e))
                }
            };
            if failed.is_none() && resp.is_pending() {
                // Kept: a later drain answers it.
                continue;
            }
            let done = self.chan.as_ref().map_or(Ok(()), |chan| {
                chan.complete(vcpu, resp.data, resp.state)?;
                chan.notify(vcpu)
            });
            match (failed, done) {
                (None, Ok(())) => {}
                (None, Err(e)) => return Err(e.into()),
                (Some(e), Ok(())) => return Err(e),
                (Some(e), Err(e2)) => {
                    warn!(dom = %self.dom, vcpu, error = %e2, "cannot complete the request that failed");
                    return Err(e);
                }
            }
        }
        Ok(if self.gone {
            Flow::DomainGone
        } else {
            Flow::Continue
        })
    }

    /// When a pending request can be answered, counted from `now`: `None`
    /// if nothing is pending. Never less than a millisecond (the loop's
    /// wait has millisecond resolution).
    pub fn next_wake(&self, now: Instant) -> Option<Duration> {
        let wait = self
            .deferred
            .iter()
            .flatten()
            .map(|(_, why)| match why {
                Defer::Rate => self.rate.wait(now),
                Defer::Room | Defer::Busy | Defer::Failed => DEFER_POLL,
            })
            .min()?;
        Some(wait.max(Duration::from_millis(1)))
    }

    /// Requests left pending now.
    pub fn pending(&self) -> usize {
        self.deferred.iter().flatten().count()
    }

    /// Answer the pending requests that can be answered now. A slot that
    /// is no longer INPROCESS (the vCPU went away, or the domain was
    /// reset) drops its pending request.
    fn serve_deferred(&mut self, now: Instant) -> Result<(), ServerError> {
        for vcpu in 0..self.deferred.len() {
            let Some((req, _)) = self.deferred[vcpu].take() else {
                continue;
            };
            let vcpu = vcpu as u32;
            let still = match self.chan.as_ref() {
                Some(c) => c.state(vcpu)? == STATE_IOREQ_INPROCESS,
                None => false,
            };
            if !still {
                continue;
            }
            let (resp, failed) = match self.bar_answer(vcpu, &req, now) {
                Ok(resp) => (resp, None),
                Err(e) => {
                    self.crash_before_completing(&e);
                    (fatal_answer(&req), Some(e))
                }
            };
            if failed.is_none() && resp.is_pending() {
                continue;
            }
            if let Some(chan) = self.chan.as_ref() {
                let done = chan
                    .complete(vcpu, resp.data, resp.state)
                    .and_then(|()| chan.notify(vcpu));
                match (failed, done) {
                    (None, r) => r?,
                    (Some(e), Ok(())) => return Err(e),
                    (Some(e), Err(e2)) => {
                        warn!(dom = %self.dom, vcpu, error = %e2, "cannot complete the request that failed");
                        return Err(e);
                    }
                }
            } else if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Handle one request (the slot itself is the caller's business). A
    /// [pending](Response::is_pending) answer means the server keeps the
    /// request and answers it from a later [`Server::drain`].
    pub fn handle(
        &mut self,
        vcpu: u32,
        req: &Ioreq,
        now: Instant,
    ) -> Result<Response, ServerError> {
        self.counters.requests += 1;
        match req.kind {
            IOREQ_TYPE_PCI_CONFIG => self.pci_config(req, now),
            IOREQ_TYPE_COPY if self.func.regs().is_some_and(|r| r.contains(&req.addr)) => {
                self.regs_access(vcpu, req)
            }
            IOREQ_TYPE_COPY => self.bar_access(vcpu, req, now),
            IOREQ_TYPE_TIMEOFFSET | IOREQ_TYPE_INVALIDATE => Ok(Response::ready(req.data)),
            IOREQ_TYPE_PIO => {
                self.counters.unsupported += 1;
                debug!(dom = %self.dom, port = req.addr, "port I/O is not ours: all-ones");
                Ok(Response::ready(ones_if_read(req)))
            }
            other => {
                self.counters.unsupported += 1;
                debug!(dom = %self.dom, kind = other, "unknown ioreq type: all-ones");
                Ok(Response::ready(ones_if_read(req)))
            }
        }
    }

    fn pci_config(&mut self, req: &Ioreq, now: Instant) -> Result<Response, ServerError> {
        self.counters.pci_config += 1;
        let a = req.pci_config_address();
        if a.sbdf != self.cfg.sbdf {
            debug!(dom = %self.dom, sbdf = %a.sbdf, "config cycle for another function");
            return Ok(Response::ready(ones_if_read(req)));
        }
        if req.is_read() {
            return Ok(Response::ready(u64::from(
                self.func.config_read(a.reg, req.size),
            )));
        }
        let before = self.func.saved();
        let ModelChange { window, regs, intx } =
            self.func.config_write(a.reg, req.size, req.data as u32);
        self.apply_bar_change(window, now)?;
        self.apply_regs_change(regs);
        self.set_intx(intx);
        if self.save_pci.is_some() && self.func.saved() != before {
            self.save_pci_state();
        }
        Ok(Response::ready(0))
    }

    /// An access to the device's register BAR: emulated, one element of
    /// 1, 2, 4 or 8 bytes. Anything else (a string or `data_is_ptr`
    /// request, which Linux never makes to registers) completes as
    /// unbacked without reaching the device (a `data_is_ptr` read fills
    /// the guest buffer with ones, as for the window).
    fn regs_access(&mut self, vcpu: u32, req: &Ioreq) -> Answer {
        self.counters.register_accesses += 1;
        self.new_request(vcpu);
        if req.data_is_ptr || req.count > 1 || !matches!(req.size, 1 | 2 | 4 | 8) {
            self.counters.unsupported += 1;
            debug!(dom = %self.dom, vcpu, addr = req.addr, size = req.size, count = req.count,
                   "register access of a form Linux never makes: unbacked");
            if req.data_is_ptr {
                return self.unbacked_copy(vcpu, req, Unbacked::Unsupported);
            }
            return Ok(Response::ready(ones_if_read(req)));
        }
        let before = self.save_pci.is_some().then(|| self.func.saved());
        let write = (!req.is_read()).then_some(req.data);
        let answer = self
            .func
            .mmio(req.addr, req.size, write)
            .unwrap_or(MmioAnswer {
                data: ones_if_read(req),
                intx: None,
            });
        self.set_intx(answer.intx);
        if before.is_some_and(|b| b != self.func.saved()) {
            self.save_pci_state();
        }
        Ok(Response::ready(if req.is_read() {
            answer.data & size_mask(req.size)
        } else {
            0
        }))
    }

    /// A new request from `vcpu`: any older one is finished.
    fn new_request(&mut self, vcpu: u32) {
        let v = vcpu as usize;
        if let Some(slot) = self.deferred.get_mut(v) {
            *slot = None;
        }
        if let Some(n) = self.lend_failures.get_mut(v) {
            *n = 0;
        }
    }

    /// Drive the function's INTA (`XEN_DMOP_set_pci_intx_level`). A failure
    /// is logged: the guest's driver then polls or times out, the server
    /// goes on.
    fn set_intx(&mut self, level: Option<bool>) {
        let Some(level) = level else { return };
        self.counters.intx_changes += 1;
        if let Err(e) = self.dm.set_pci_intx_level(&self.dom, self.cfg.sbdf, level) {
            self.note_gone(&e);
            if !e.is_gone() {
                warn!(dom = %self.dom, level, error = %e, "cannot set INTA");
            }
        }
    }

    /// Route the register BAR where it decodes now. It is emulated, never
    /// lent: there is nothing to revoke.
    fn apply_regs_change(&mut self, change: BarChange) {
        if let Some(old) = change.mmio_remove {
            if self.regs_mmio.as_ref() == Some(&old) {
                if let Err(e) = self
                    .dm
                    .unmap_mmio(&self.dom, self.id, old.start, old.end - 1)
                {
                    self.note_gone(&e);
                    // ENOENT: a range Xen refused to map (the guest put
                    // BAR2 over the window); the guest may do it at will,
                    // so it is not worth a warning each time.
                    if e.errno == Errno::ENOENT {
                        debug!(dom = %self.dom, error = %e, "old register BAR range was not mapped");
                    } else {
                        warn!(dom = %self.dom, error = %e, "unmapping old register BAR range failed");
                    }
                }
                self.regs_mmio = None;
            }
        }
        if let Some(new) = change.mmio_add {
            debug!(dom = %self.dom, start = new.start, end = new.end, "register BAR decoded: mapping");
            match self.dm.map_mmio(&self.dom, self.id, new.start, new.end - 1) {
                Ok(()) => self.regs_mmio = Some(new),
                Err(e) if e.errno == Errno::EEXIST => self.regs_mmio = Some(new),
                Err(e) => {
                    self.note_gone(&e);
                    warn!(dom = %self.dom, error = %e, "mapping register BAR range failed: accesses will not reach us");
                }
            }
        }
    }

    /// Apply a config-write diff: revoke and unmap the old range, then map
    /// the new one. Logged within [`LogLimit`]: the guest moves its BAR at
    /// will.
    fn apply_bar_change(&mut self, change: BarChange, now: Instant) -> Result<(), ServerError> {
        if change.is_empty() {
            return Ok(());
        }
        self.counters.bar_moves += 1;
        let log = self.bar_log.admit(now);
        if let Some(old) = change.mmio_remove {
            if let Some(left_out) = log {
                info!(dom = %self.dom, start = old.start, end = old.end, moves = self.counters.bar_moves,
                      not_logged_before = left_out, "BAR range no longer decoded: revoking and unmapping");
            }
            self.revoke_range(old.clone())?;
            if self.mmio.as_ref() == Some(&old) {
                if let Err(e) = self
                    .dm
                    .unmap_mmio(&self.dom, self.id, old.start, old.end - 1)
                {
                    self.note_gone(&e);
                    warn!(dom = %self.dom, error = %e, "unmapping old BAR range failed");
                }
                self.mmio = None;
            }
        }
        if let Some(new) = change.mmio_add {
            if let Some(left_out) = log {
                info!(dom = %self.dom, start = new.start, end = new.end, moves = self.counters.bar_moves,
                      not_logged_before = left_out, "BAR range decoded: mapping");
            }
            match self.dm.map_mmio(&self.dom, self.id, new.start, new.end - 1) {
                Ok(()) => self.mmio = Some(new),
                // A restarted server re-applying the write its predecessor
                // applied but never completed: Xen checks overlaps within
                // one server's ranges, so the range is ours already.
                Err(e) if e.errno == Errno::EEXIST => self.mmio = Some(new),
                Err(e) => {
                    self.note_gone(&e);
                    warn!(dom = %self.dom, error = %e, "mapping BAR range failed: accesses will not reach us");
                }
            }
        }
        Ok(())
    }

    fn revoke_range(&mut self, r: Range<u64>) -> Result<(), ServerError> {
        let first_gfn = r.start >> PAGE_SHIFT;
        let nr_pages = (r.end - r.start) >> PAGE_SHIFT;
        self.counters.revokes += 1;
        let res = self.hm.revoke(
            &self.dom,
            RevokeRange::Gfns {
                first_gfn,
                nr_pages,
            },
        );
        match res {
            Ok(()) => {}
            Err(e) if e.is_gone() => self.gone = true,
            Err(e) => {
                warn!(dom = %self.dom, error = %e, "range revoke failed, revoking everything");
                self.counters.revokes += 1;
                match self.hm.revoke(&self.dom, RevokeRange::All) {
                    Ok(()) => {
                        self.ledger.forget_all();
                    }
                    Err(e2) if e2.is_gone() => self.gone = true,
                    Err(e2) => return Err(ServerError::RevokeFailed(e2)),
                }
            }
        }
        self.ledger.forget(first_gfn, nr_pages);
        Ok(())
    }

    fn note_gone(&mut self, e: &PlatformError) {
        if e.is_gone() {
            self.gone = true;
        }
    }

    /// Complete a request as an unbacked BAR: only for offsets nobody
    /// registered (or a BAR that does not decode them). A plain read gets
    /// all ones and a write is dropped, at once; a `data_is_ptr` request
    /// as [`Server::unbacked_copy`] says.
    fn unbacked(&mut self, vcpu: u32, req: &Ioreq, why: Unbacked) -> Answer {
        if why == Unbacked::Unsupported {
            self.counters.unsupported += 1;
        }
        debug!(dom = %self.dom, vcpu, addr = req.addr, reason = ?why, "BAR access unbacked");
        if req.data_is_ptr {
            return self.unbacked_copy(vcpu, req, why);
        }
        if req.is_read() {
            self.counters.unbacked_reads += 1;
        } else {
            self.counters.unbacked_writes += 1;
        }
        Ok(Response::ready(ones_if_read(req)))
    }

    /// A `data_is_ptr` request (`rep movs`, `rep ins`, `rep outs`) on
    /// unbacked offsets, completed as a device model completes it (QEMU's
    /// xen-hvm-common: it copies `count * size` bytes at `data` in the
    /// guest's RAM, down from `data` with `df`), then IORESP_READY:
    /// - a write (guest RAM to the BAR) is dropped: nothing is read;
    /// - a read fills the guest buffer with ones through
    ///   [`DeviceModel::write_guest_ram`] (a mapping restricted to the
    ///   guest: no other domain's memory is reachable), every byte of the
    ///   `df`-aware span and nothing else;
    /// - a read whose buffer overlaps the window BAR is handed to Xen:
    ///   such a buffer is a page lent to the guest (Xen sends no
    ///   `data_is_ptr` request over an emulated page), which nobody but
    ///   Xen can write (Xen refuses foreign mappings of lent pages). The
    ///   server answers RETRY with nothing lent; Xen resends it
    ///   [`crate::limits::XEN_IOREQ_MAX_RETRIES`] times and completes it
    ///   as unbacked, writing the ones into the lent page itself. The
    ///   server counts those ([`Counters::xen_fills`]) so that Xen's
    ///   refused count for them is not reported as a bypass;
    /// - a read whose buffer is not a range Xen makes, or cannot be
    ///   written (not the guest's RAM, a mapping failure), is fatal
    ///   ([`ServerError::GuestBuffer`], [`ServerError::BadDataPointer`]):
    ///   completed, then the guest is crashed, as Xen crashes a guest
    ///   whose string copy names MMIO as its RAM side. Never a buffer left
    ///   as it was, which would be made-up data.
    fn unbacked_copy(&mut self, vcpu: u32, req: &Ioreq, why: Unbacked) -> Answer {
        if !req.is_read() {
            self.counters.unbacked_writes += 1;
            return Ok(Response::ready(0));
        }
        self.counters.unbacked_reads += 1;
        if why == Unbacked::DomainGone || self.gone {
            // Nobody will read the buffer.
            return Ok(Response::ready(0));
        }
        let bad = || ServerError::BadDataPointer {
            addr: req.addr,
            data: req.data,
            size: req.size,
            count: req.count,
            df: req.df,
        };
        let buf = data_span(req).ok_or_else(bad)?;
        let window = self.func.window().active_bar();
        if window.is_some_and(|w| buf.start < w.end && w.start < buf.end) {
            return Ok(self.hand_to_xen(vcpu, req));
        }
        let len = buf.end - buf.start;
        let ones = vec![0xffu8; usize::try_from(len).map_err(|_| bad())?];
        match self.dm.write_guest_ram(&self.dom, buf.start, &ones) {
            Ok(()) => {
                self.counters.buffer_fills += 1;
                Ok(Response::ready(0))
            }
            Err(e) if e.is_gone() => {
                self.gone = true;
                Ok(Response::ready(0))
            }
            Err(error) => Err(ServerError::GuestBuffer {
                addr: req.addr,
                gpa: buf.start,
                len,
                error,
            }),
        }
    }

    /// RETRY with nothing lent, for a `data_is_ptr` read into lent memory
    /// (see [`Server::unbacked_copy`]); counts the answer after which Xen
    /// completes the request as unbacked.
    fn hand_to_xen(&mut self, vcpu: u32, req: &Ioreq) -> Response {
        self.handed_now = true;
        let same = |r: &Ioreq| Ioreq { state: 0, ..*r } == Ioreq { state: 0, ..*req };
        if let Some(slot) = self.handed.get_mut(vcpu as usize) {
            let n = match slot {
                Some((r, n)) if same(r) => *n + 1,
                _ => 1,
            };
            if n > crate::limits::XEN_IOREQ_MAX_RETRIES {
                // Xen's last resend: it refuses this answer.
                *slot = None;
                self.counters.xen_fills += 1;
            } else {
                *slot = Some((*req, n));
            }
        }
        self.counters.retries += 1;
        Response::retry(0)
    }

    /// Leave the request pending (its slot stays INPROCESS, the vCPU
    /// waits): it is answered by a later [`Server::drain`], when the rate
    /// allows or room for the lend was found. A vCPU has at most one
    /// request, so at most one is kept per vCPU.
    fn defer(&mut self, vcpu: u32, req: &Ioreq, why: Defer) -> Answer {
        match why {
            Defer::Rate => self.counters.rate_limited += 1,
            Defer::Room => self.counters.limit_deferred += 1,
            Defer::Busy | Defer::Failed => {}
        }
        if let Some(slot) = self.deferred.get_mut(vcpu as usize) {
            *slot = Some((*req, why));
            Ok(Response::pending())
        } else {
            // Not a vCPU of this domain: nothing can wait for it.
            self.unbacked(vcpu, req, Unbacked::Unsupported)
        }
    }

    fn bar_access(&mut self, vcpu: u32, req: &Ioreq, now: Instant) -> Answer {
        self.counters.bar_faults += 1;
        self.new_request(vcpu);
        let resp = self.bar_answer(vcpu, req, now)?;
        if resp.is_pending() {
            self.counters.deferred += 1;
        }
        Ok(resp)
    }

    /// [`Server::bar_answer_inner`], and the end of a request handed to
    /// Xen when the vCPU's next answer is another one.
    fn bar_answer(&mut self, vcpu: u32, req: &Ioreq, now: Instant) -> Answer {
        self.handed_now = false;
        let answer = self.bar_answer_inner(vcpu, req, now);
        if !self.handed_now {
            if let Some(slot) = self.handed.get_mut(vcpu as usize) {
                *slot = None;
            }
        }
        answer
    }

    /// Answer a BAR request (new or deferred): lend the registered pages
    /// it touches, then RETRY, which tells Xen to complete the access from
    /// that memory itself (reads, writes, `rep stos`, and `data_is_ptr`
    /// copies alike). Offsets nobody registered complete as unbacked. A
    /// guard against a flooding guest (rate, lent-page limit) or a failed
    /// lend delays the request, it never answers with made-up data.
    fn bar_answer_inner(&mut self, vcpu: u32, req: &Ioreq, now: Instant) -> Answer {
        let Some(bar) = self.func.window().active_bar() else {
            return self.unbacked(vcpu, req, Unbacked::NotDecoded);
        };
        if !bar.contains(&req.addr) {
            return self.unbacked(vcpu, req, Unbacked::OutsideBar);
        }
        if self.gone {
            return self.unbacked(vcpu, req, Unbacked::DomainGone);
        }
        let Some(span) = request_span(req) else {
            return self.unbacked(vcpu, req, Unbacked::Unsupported);
        };
        if !self.rate.allow(now) {
            return self.defer(vcpu, req, Defer::Rate);
        }
        // The registered pages the request touches, as BAR offsets.
        let first = span.start & !(PAGE_SIZE - 1);
        let mut pages: Vec<u64> = Vec::new();
        let mut refreshed = false;
        for page in (first..span.end).step_by(PAGE_SIZE as usize) {
            if !bar.contains(&page) {
                continue;
            }
            let off = page - bar.start;
            let mut known = self.registry.lookup(off).is_some();
            if !known && !refreshed {
                self.sync_with_kernel();
                refreshed = true;
                known = self.registry.lookup(off).is_some();
            }
            if known {
                pages.push(off);
            }
        }
        if pages.is_empty() {
            return self.unbacked(vcpu, req, Unbacked::Unregistered);
        }
        // Pages of the request itself are never evicted to make room.
        // Nor is the guest memory a `data_is_ptr` request copies to or
        // from, which may be a lent BAR page (a copy between two BAR
        // offsets, one of them lent).
        let mut protect = vec![gfns(&span)];
        if req.data_is_ptr {
            let mut data = *req;
            data.addr = req.data;
            if let Some(d) = request_span(&data) {
                protect.push(gfns(&d));
            }
        }
        let mut done: Option<Range<u64>> = None;
        for off in pages {
            let gfn = (bar.start + off) >> PAGE_SHIFT;
            if done.as_ref().is_some_and(|d| d.contains(&gfn)) {
                continue;
            }
            match self.ensure_lent(vcpu, req, bar.start, off, &protect) {
                Ok(lent) => done = Some(lent),
                Err(answer) => return answer,
            }
        }
        self.counters.retries += 1;
        Ok(Response::retry(0))
    }

    /// Lend the fault-around chunk of BAR offset `off`, making room under
    /// the lent-page limit by revoking other runs if needed. Returns the
    /// GFNs now lent around it (from `off`'s page on); `Err` carries the
    /// answer (or the fatal error) when lending is impossible now.
    fn ensure_lent(
        &mut self,
        vcpu: u32,
        req: &Ioreq,
        bar_start: u64,
        off: u64,
        protect: &[Range<u64>],
    ) -> Result<Range<u64>, Answer> {
        let gfn = (bar_start + off) >> PAGE_SHIFT;
        let chunk_pages = (self.cfg.fault_around >> PAGE_SHIFT).max(1);
        let mut remaining = self.room(chunk_pages);
        // `room` may have asked the kernel: look the offset up after it, so
        // that a registration the backend dropped is answered as unbacked
        // here, before other runs are revoked to make room for a lend that
        // would lend nothing.
        let Some(reg) = self.registry.lookup(off).copied() else {
            return Err(self.unbacked(vcpu, req, Unbacked::Unregistered));
        };
        if remaining < chunk_pages {
            remaining = self.make_room(chunk_pages, protect);
        }
        let Some(plan) = fault_around::plan(
            off,
            self.cfg.fault_around,
            self.cfg.bar_size,
            reg.offset..reg.end(),
            remaining,
        ) else {
            return Err(self.defer(vcpu, req, Defer::Room));
        };
        let first_gfn = (bar_start + plan.offset) >> PAGE_SHIFT;
        let planned = first_gfn..first_gfn + plan.nr_pages;
        let single = gfn..gfn + 1;
        let mut evictions = 0;
        let (lent, range) = loop {
            match self.lend(plan.offset, first_gfn, plan.nr_pages) {
                Ok(n) => break (n, planned.clone()),
                Err(e) if e.errno == Errno::EEXIST && plan.nr_pages > 1 => {
                    // Part of the chunk is occupied (another vCPU's fault, or
                    // a partly revoked chunk): lend just the faulting page.
                    let page_off = off & !(PAGE_SIZE - 1);
                    match self.lend(page_off, gfn, 1) {
                        Ok(n) => break (n, single.clone()),
                        Err(e) if e.errno == Errno::EEXIST => break (1, single.clone()),
                        Err(e) if e.errno == Errno::ENOSPC => {
                            return Err(self.defer(vcpu, req, Defer::Room));
                        }
                        Err(e) if e.errno == Errno::EBUSY => {
                            return Err(self.defer(vcpu, req, Defer::Busy));
                        }
                        Err(e) => return Err(self.lend_failed(vcpu, req, off, e)),
                    }
                }
                Err(e) if e.errno == Errno::EEXIST => break (1, single.clone()),
                Err(e) if e.errno == Errno::ENOSPC => {
                    // The kernel's or Xen's own limit: revoke one of our
                    // older runs and try again, a few times; with nothing
                    // of ours to revoke, wait.
                    evictions += 1;
                    if evictions > ENOSPC_EVICTIONS || !self.evict_one(protect) {
                        return Err(self.defer(vcpu, req, Defer::Room));
                    }
                }
                Err(e) if e.errno == Errno::EBUSY => {
                    // An invalidation is still running: try again later.
                    return Err(self.defer(vcpu, req, Defer::Busy));
                }
                Err(e) => return Err(self.lend_failed(vcpu, req, off, e)),
            }
        };
        if lent < plan.nr_pages {
            // Fewer pages than planned: the cached registrations may be
            // stale (the backend unregistered or registered again since
            // the last query), and what the kernel lent may not include the
            // faulting page. Ask the kernel; a page no longer registered
            // is unbacked.
            self.sync_with_kernel();
            if lent == 0 || self.registry.lookup(off).is_none() {
                return Err(self.unbacked(vcpu, req, Unbacked::Unregistered));
            }
        }
        Ok(gfn.max(range.start)..range.end)
    }

    /// Pages the lent-page limit still allows, asking the kernel when the
    /// ledger (an upper bound) says fewer than `want`.
    fn room(&mut self, want: u64) -> u64 {
        let max = self.cfg.limits.max_lent_pages;
        let remaining = max.saturating_sub(self.ledger.lent_pages());
        if remaining >= want {
            return remaining;
        }
        // The kernel revokes on invalidation and unregistration without
        // telling us: its count is the truth.
        match self.sync_with_kernel() {
            Some(q) => max.saturating_sub(q.lent_pages),
            None => remaining,
        }
    }

    /// Revoke lent runs outside every range of `protect` (GFNs) until `want` pages fit
    /// under the limit or nothing is left to revoke. Revoking is always
    /// safe: the guest faults on those pages again. Returns the room.
    fn make_room(&mut self, want: u64, protect: &[Range<u64>]) -> u64 {
        loop {
            let remaining = self.room(want);
            if remaining >= want || !self.evict_one(protect) {
                return remaining;
            }
        }
    }

    /// Revoke one lent run, or the first part of one that lies outside
    /// every range of `protect` (GFNs). False if there is none, or the
    /// revoke failed.
    fn evict_one(&mut self, protect: &[Range<u64>]) -> bool {
        let victim = self
            .ledger
            .runs()
            .filter(|r| r.lent > 0)
            .find_map(|r| outside(r.first_gfn..r.first_gfn + r.nr_pages, protect));
        let Some(v) = victim else {
            return false;
        };
        debug!(dom = %self.dom, first_gfn = v.start, nr_pages = v.end - v.start,
               "lent-page limit: revoking a run to make room");
        let before = self.ledger.lent_pages();
        let ok = self
            .revoke_range((v.start << PAGE_SHIFT)..(v.end << PAGE_SHIFT))
            .is_ok()
            && !self.gone;
        self.counters.evicted_pages += before.saturating_sub(self.ledger.lent_pages());
        ok
    }

    /// A lend of registered pages at BAR offset `off` failed with an
    /// errno that is not a transient one: the request waits
    /// ([`Defer::Failed`]) and is tried again, [`LEND_ERROR_ATTEMPTS`]
    /// times at most; then it is fatal ([`ServerError::LendFailed`]).
    /// Registered memory is never answered with all ones.
    fn lend_failed(&mut self, vcpu: u32, req: &Ioreq, off: u64, e: PlatformError) -> Answer {
        if e.is_gone() {
            self.gone = true;
            return self.unbacked(vcpu, req, Unbacked::DomainGone);
        }
        self.counters.lend_errors += 1;
        // The registration may be going away (its owner exiting, or
        // OOM-killed after its cgroup refused the pages: ENOMEM until
        // then): once the kernel no longer lists it, the offset is
        // nobody's and all ones is the exact answer.
        self.sync_with_kernel();
        if self.registry.lookup(off).is_none() {
            return self.unbacked(vcpu, req, Unbacked::Unregistered);
        }
        // EFAULT: the owner maps nothing there now; there are no bytes to
        // give, waiting does not bring them back, and the owner (not the
        // guest) broke its registration: the access is unbacked.
        if e.errno == Errno::EFAULT {
            return self.unbacked(vcpu, req, Unbacked::OwnerUnmapped);
        }
        let attempts = self
            .lend_failures
            .get(vcpu as usize)
            .map_or(LEND_ERROR_ATTEMPTS, |n| n + 1);
        // Not the guest's doing: say so, at the first failure and then
        // once per 1024.
        if self.counters.lend_errors % 1024 == 1 {
            let hint = if e.errno == Errno::ENOMEM {
                "; ENOMEM: Xen's paging memory for the guest may be used up \
                 (shadow_memory and gpu_hostmem_size in xl.cfg(5))"
            } else {
                ""
            };
            warn!(dom = %self.dom, error = %e, offset = off, failures = self.counters.lend_errors,
                  "lending failed: the access waits and is tried again, the guest is crashed if it keeps failing{hint}");
        }
        if attempts >= LEND_ERROR_ATTEMPTS {
            return Err(ServerError::LendFailed {
                offset: off & !(PAGE_SIZE - 1),
                attempts,
                error: e,
            });
        }
        if let Some(n) = self.lend_failures.get_mut(vcpu as usize) {
            *n = attempts;
        }
        self.defer(vcpu, req, Defer::Failed)
    }

    /// Lend, retrying `EBUSY` a few times, and record it in the ledger.
    fn lend(&mut self, bar_off: u64, first_gfn: u64, nr_pages: u64) -> Result<u64, PlatformError> {
        let nr = u32::try_from(nr_pages).unwrap_or(u32::MAX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.hm.lend(&self.dom, bar_off, first_gfn, nr) {
                Ok(n) => {
                    self.counters.lends += 1;
                    self.counters.pages_lent += u64::from(n);
                    if n > 0 {
                        self.ledger
                            .record(first_gfn, u64::from(nr), bar_off, u64::from(n));
                    }
                    return Ok(u64::from(n));
                }
                Err(e) if e.errno == Errno::EBUSY && attempt < LEND_BUSY_ATTEMPTS => continue,
                Err(e) => {
                    // A failed batch may have lent part of the range: revoke
                    // it so the ledger stays exact (revoke is vacuous for
                    // pages that were not lent).
                    if e.errno != Errno::EEXIST && !e.is_gone() {
                        let _ = self.hm.revoke(
                            &self.dom,
                            RevokeRange::Gfns {
                                first_gfn,
                                nr_pages,
                            },
                        );
                        self.ledger.forget(first_gfn, nr_pages);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Ask the kernel for the domain's registrations and lent pages, and
    /// make the server's view follow its answer, which is the truth even
    /// when empty: the cached registrations become the kernel's, and the
    /// ledger forgets the pages outside every registration that still has
    /// pages lent (the kernel revoked them when their backend unregistered
    /// or exited, or on invalidation, without telling us). Returns the
    /// kernel's answer; `None` if the query failed (the view is then left
    /// as it was).
    ///
    /// It costs one ioctl, so it is not done per fault: only at status,
    /// at a fault on an offset the cache does not know, after a lend that
    /// lent fewer pages than planned, and when the ledger says the
    /// lent-page limit is reached. A stale view in between is harmless: a
    /// lend at an offset no longer registered lends nothing and leads
    /// here, and the ledger only over-counts, which leads here at the
    /// limit check before anything is revoked to make room.
    fn sync_with_kernel(&mut self) -> Option<HostMemQuery> {
        match self.hm.query(&self.dom) {
            Ok(q) => {
                self.adopt(&q);
                Some(q)
            }
            Err(e) => {
                self.note_gone(&e);
                debug!(dom = %self.dom, error = %e, "registration query failed");
                None
            }
        }
    }

    fn adopt(&mut self, q: &HostMemQuery) {
        self.registry.replace_from(&q.regions);
        let forgotten = if q.lent_pages == 0 {
            self.ledger.forget_all().iter().map(|r| r.lent).sum()
        } else {
            let live: Vec<Range<u64>> = q
                .regions
                .iter()
                .filter(|r| r.lent_pages != Some(0))
                .map(|r| r.offset..r.offset.saturating_add(r.size))
                .collect();
            self.ledger.keep_within(&live)
        };
        if forgotten > 0 {
            debug!(dom = %self.dom, forgotten, kernel_lent = q.lent_pages,
                   "the kernel revoked pages the ledger had: forgotten");
        }
    }

    /// A status snapshot. `ask_kernel` adds the kernel's view.
    pub fn status(&mut self, ask_kernel: bool) -> Status {
        // Once known to be unreadable, not asked again (nor logged).
        let xen_retry = match self.xen_retry.unavailable() {
            Some(e) => Err(e.clone()),
            None => self.poll_xen_retry(Instant::now()).0,
        };
        let mut kernel_lent = None;
        let mut regs: Option<Vec<RegionInfo>> = None;
        if ask_kernel {
            // The kernel's answer, even empty, is the registrations; the
            // ledger follows it.
            if let Some(q) = self.sync_with_kernel() {
                kernel_lent = Some(q.lent_pages);
                regs = Some(q.regions);
            }
        }
        // Without it, the server's own cache, as last refreshed.
        let regs = regs.unwrap_or_else(|| self.registry.iter().copied().collect());
        Status {
            domid: self.dom.domid,
            unique_id: self.dom.unique_id(),
            state: if self.stopped {
                "stopped".into()
            } else if self.gone {
                "stopping".into()
            } else {
                "running".into()
            },
            bdf: self.cfg.sbdf.to_string(),
            bar_base: self.func.window().active_bar().map(|r| r.start),
            bar_size: self.cfg.bar_size,
            ioservid: Some(self.id),
            registrations: regs,
            ledger_lent_pages: self.ledger.lent_pages(),
            kernel_lent_pages: kernel_lent,
            counters: self.counters,
            xen_retry: xen_retry.as_ref().ok().copied(),
            xen_retry_error: xen_retry.err().map(|e| e.to_string()),
            device: self.func.summary(),
        }
    }

    /// Stop: disable the server, revoke every lent page, unmap the BAR,
    /// release the PCI function, close the channel, destroy the server.
    /// Returns the platform handles and what failed.
    pub fn shutdown(mut self) -> (D, H, TeardownReport) {
        let mut report = TeardownReport::default();
        let dom = self.dom;
        let id = self.id;
        // Xen's counters first, while the domain and the server exist: a
        // last refused answer is warned about like any other.
        if self.xen_retry.unavailable().is_none() {
            if let (Ok(x), _) = self.poll_xen_retry(Instant::now()) {
                info!(
                    %dom, completed = x.completed, resent = x.resent, refused = x.refused,
                    server_retries = self.counters.retries, faults = self.counters.bar_faults,
                    lends = self.counters.lends,
                    "Xen's RETRY counters of the domain at teardown"
                );
                report.xen_retry = Some(x);
            }
        }
        info!(%dom, id, "shutting down: disabling ioreq server");
        report.note(self.dm.set_server_state(&dom, id, false));
        info!(%dom, "revoking every lent page");
        report.note(self.hm.revoke(&dom, RevokeRange::All));
        self.ledger.forget_all();
        if let Some(r) = self.mmio.take() {
            report.note(self.dm.unmap_mmio(&dom, id, r.start, r.end - 1));
        }
        if let Some(r) = self.regs_mmio.take() {
            report.note(self.dm.unmap_mmio(&dom, id, r.start, r.end - 1));
        }
        self.func.release();
        report.note(self.dm.unmap_pcidev(&dom, id, self.cfg.sbdf));
        drop(self.chan.take());
        info!(%dom, id, "destroying ioreq server");
        report.note(self.dm.destroy_server(&dom, id));
        self.stopped = true;
        (self.dm, self.hm, report)
    }
}

/// The first part of `run` outside every range of `protect`, if any.
fn outside(run: Range<u64>, protect: &[Range<u64>]) -> Option<Range<u64>> {
    let mut start = run.start;
    while start < run.end {
        if let Some(p) = protect.iter().find(|p| p.contains(&start)) {
            start = p.end;
            continue;
        }
        let end = protect
            .iter()
            .filter(|p| p.start > start)
            .map(|p| p.start)
            .fold(run.end, u64::min);
        return Some(start..end);
    }
    None
}

/// The GFNs of a byte range.
fn gfns(r: &Range<u64>) -> Range<u64> {
    (r.start >> PAGE_SHIFT)..r.end.div_ceil(PAGE_SIZE)
}

/// For a slot in `state` on `vcpu`: if it holds an answer (IORESP_READY
/// or IORESP_RETRY) that a process wrote but died before notifying, send
/// the event Xen waits for, or the vCPU stays blocked in Xen for good. A
/// second event for an answer Xen has already seen is harmless (its wait
/// re-reads the state). Returns whether it sent one. Used by a restarted
/// server ([`Server::attach_with`]) and by the supervisor's give-up
/// fallback.
pub fn notify_unsent_answer<C: IoreqChannel + ?Sized>(
    chan: &C,
    vcpu: u32,
    state: u8,
) -> PlatformResult<bool> {
    if state != STATE_IORESP_READY && state != STATE_IORESP_RETRY {
        return Ok(false);
    }
    chan.notify(vcpu)?;
    Ok(true)
}

/// The guest-physical bytes a BAR request touches, `df` aware: element
/// `i` of `count` is at `addr + i * size`, or `addr - i * size` with `df`.
/// `None` for requests Xen does not produce (size not 1, 2, 4 or 8, or more
/// than [`MAX_REQUEST_BYTES`]).
pub fn request_span(req: &Ioreq) -> Option<Range<u64>> {
    if !matches!(req.size, 1 | 2 | 4 | 8) {
        return None;
    }
    let size = u64::from(req.size);
    let reps = u64::from(req.count.max(1));
    let len = reps.checked_mul(size).filter(|l| *l <= MAX_REQUEST_BYTES)?;
    let start = if req.df {
        req.addr.checked_sub(len - size)?
    } else {
        req.addr
    };
    let end = start.checked_add(len)?;
    Some(start..end)
}

/// The guest buffer of a `data_is_ptr` request, `df` aware as
/// [`request_span`]: element `i` at `data + i * size`, or `data - i *
/// size` with `df`. `None` for a buffer Xen does not produce.
pub fn data_span(req: &Ioreq) -> Option<Range<u64>> {
    request_span(&Ioreq {
        addr: req.data,
        ..*req
    })
}

/// The answer of a request whose handling failed fatally (the guest was
/// crashed just before: its vCPUs no longer run): all ones for a plain
/// read, nothing else.
fn fatal_answer(req: &Ioreq) -> Response {
    Response::ready(ones_if_read(req))
}

/// The answer of the supervisor's fallback after it gave up the server
/// (server disabled, every page revoked, no guest memory mapped): all ones
/// for a plain read, a dropped write; RETRY with nothing lent for
/// `data_is_ptr`, so that Xen, finding nothing mapped, fills the guest
/// buffer with ones after its resends. The server itself never answers
/// so for a buffer it can fill ([`Server`]'s `unbacked_copy`).
pub fn unbacked_answer(req: &Ioreq) -> Response {
    if req.data_is_ptr {
        Response::retry(0)
    } else {
        Response::ready(ones_if_read(req))
    }
}

fn ones_if_read(req: &Ioreq) -> u64 {
    if req.is_read() && !req.data_is_ptr {
        size_mask(req.size)
    } else {
        0
    }
}

//! The IOREQ server logic, generic over the platform traits.
//!
//! Setup is an explicit sequence of [`Stage`]s (create the server with
//! RETRY, open the ioreq page and event channels, claim the PCI function,
//! enable); a failure unwinds exactly the stages done. [`Server::drain`]
//! takes every READY slot: READY -> INPROCESS -> handle -> IORESP_READY or
//! IORESP_RETRY -> notify. PCI config cycles go to [`crate::pci`]; BAR
//! accesses lend the fault-around chunk through [`HostMem`] and answer
//! RETRY when pages are now lent, otherwise complete as an unbacked BAR
//! (reads all-ones, writes dropped). A BAR move revokes what was lent at
//! the old address and remaps the MMIO range. [`Server::shutdown`] and
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
use crate::limits::{Limits, RateLimiter, RetryAccounting};
use crate::pci::{BarChange, PciError, PciFunction, PciIds};
use crate::platform::{
    DeviceModel, DomainIdentity, Errno, HostMem, IoServId, IoreqChannel, PlatformError,
    RevokeRange, Wake,
};
use crate::registry::Registry;
use crate::status::{Counters, RegistrationStatus, Status};

/// How many times a lend that answered `EBUSY` is tried again at once.
pub const LEND_BUSY_ATTEMPTS: u32 = 3;

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
    /// Lent pages at a range the BAR no longer decodes could not be
    /// revoked: the server must stop and the domain be torn down.
    #[error("revoking pages of the old BAR range failed: {0}")]
    RevokeFailed(PlatformError),
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
    /// Fault rate limit.
    RateLimited,
    /// No registration at that offset.
    Unregistered,
    /// Lent-page limit.
    Limit,
    /// This vCPU used up its consecutive retries.
    RetryExhausted,
    /// The kernel refused the lend.
    LendFailed(Errno),
    /// `data_is_ptr` requests are not emulated.
    Unsupported,
    /// The domain is gone.
    DomainGone,
}

/// The answer to one ioreq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// Data for reads.
    pub data: u64,
    /// `STATE_IORESP_READY` or `STATE_IORESP_RETRY`.
    pub state: u8,
}

impl Response {
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

/// One IOREQ server for one domain.
pub struct Server<D: DeviceModel, H: HostMem> {
    dm: D,
    hm: H,
    dom: DomainIdentity,
    id: IoServId,
    chan: Option<D::Channel>,
    cfg: ServerConfig,
    pci: PciFunction,
    mmio: Option<Range<u64>>,
    registry: Registry,
    ledger: DomainLedger,
    retries: RetryAccounting,
    rate: RateLimiter,
    counters: Counters,
    gone: bool,
    stopped: bool,
}

impl<D: DeviceModel, H: HostMem> Server<D, H> {
    /// Set the server up for `dom`. On failure, the stages already done are
    /// undone and the platform handles are returned with the error.
    #[allow(clippy::result_large_err)]
    pub fn start(
        mut dm: D,
        hm: H,
        dom: DomainIdentity,
        cfg: ServerConfig,
    ) -> Result<Self, (ServerError, D, H)> {
        let pci = match PciFunction::new(cfg.ids, cfg.bar_size) {
            Ok(p) => p,
            Err(e) => return Err((e.into(), dm, hm)),
        };
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
        let nr_vcpus = chan.nr_vcpus();
        Ok(Server {
            dm,
            hm,
            dom,
            id,
            chan: Some(chan),
            pci,
            mmio: None,
            registry: Registry::new(),
            ledger: DomainLedger::default(),
            retries: RetryAccounting::new(nr_vcpus, cfg.limits.max_retries),
            rate: RateLimiter::new(cfg.limits.fault_rate, cfg.limits.fault_burst),
            counters: Counters::default(),
            cfg,
            gone: false,
            stopped: false,
        })
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

    /// The PCI function.
    pub fn pci(&self) -> &PciFunction {
        &self.pci
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

    /// Wait for events (bounded by `timeout`), then drain.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> Result<Flow, ServerError> {
        let Some(chan) = self.chan.as_mut() else {
            return Ok(Flow::DomainGone);
        };
        match chan.wait(timeout)? {
            Wake::Event | Wake::Timeout => self.drain(Instant::now()),
        }
    }

    /// Handle every READY slot once. A domain that goes away meanwhile
    /// gives [`Flow::DomainGone`], not an error. Any other error is fatal:
    /// the guest is shut down as crashed, with the error as the reason,
    /// rather than left waiting on a device that no longer answers.
    pub fn drain(&mut self, now: Instant) -> Result<Flow, ServerError> {
        match self.drain_slots(now) {
            Err(ServerError::Platform(e)) if e.is_gone() => {
                self.gone = true;
                Ok(Flow::DomainGone)
            }
            Err(e) => {
                self.crash_guest(&e);
                Err(e)
            }
            other => other,
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
            // happens (as an unbacked access if handling failed) before an
            // error goes up.
            let (resp, failed) = match self.handle(vcpu, &req, now) {
                Ok(resp) => (resp, None),
                Err(e) => (Response::ready(ones_if_read(&req)), Some(e)),
            };
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

    /// Handle one request (the slot itself is the caller's business).
    pub fn handle(
        &mut self,
        vcpu: u32,
        req: &Ioreq,
        now: Instant,
    ) -> Result<Response, ServerError> {
        self.counters.requests += 1;
        match req.kind {
            IOREQ_TYPE_PCI_CONFIG => {
                self.retries.reset(vcpu);
                self.pci_config(req)
            }
            IOREQ_TYPE_COPY => Ok(self.bar_access(vcpu, req, now)),
            IOREQ_TYPE_TIMEOFFSET | IOREQ_TYPE_INVALIDATE => Ok(Response::ready(req.data)),
            IOREQ_TYPE_PIO => {
                self.retries.reset(vcpu);
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

    fn pci_config(&mut self, req: &Ioreq) -> Result<Response, ServerError> {
        self.counters.pci_config += 1;
        let a = req.pci_config_address();
        if a.sbdf != self.cfg.sbdf {
            debug!(dom = %self.dom, sbdf = %a.sbdf, "config cycle for another function");
            return Ok(Response::ready(ones_if_read(req)));
        }
        if req.is_read() {
            return Ok(Response::ready(u64::from(self.pci.read(a.reg, req.size))));
        }
        let change = self.pci.write(a.reg, req.size, req.data as u32);
        self.apply_bar_change(change)?;
        Ok(Response::ready(0))
    }

    /// Apply a config-write diff: revoke and unmap the old range, then map
    /// the new one.
    fn apply_bar_change(&mut self, change: BarChange) -> Result<(), ServerError> {
        if change.is_empty() {
            return Ok(());
        }
        self.counters.bar_moves += 1;
        if let Some(old) = change.mmio_remove {
            info!(dom = %self.dom, start = old.start, end = old.end, "BAR range no longer decoded: revoking and unmapping");
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
            info!(dom = %self.dom, start = new.start, end = new.end, "BAR range decoded: mapping");
            match self.dm.map_mmio(&self.dom, self.id, new.start, new.end - 1) {
                Ok(()) => self.mmio = Some(new),
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

    fn unbacked(&mut self, vcpu: u32, req: &Ioreq, why: Unbacked) -> Response {
        self.retries.reset(vcpu);
        match why {
            Unbacked::RateLimited => self.counters.rate_limited += 1,
            Unbacked::RetryExhausted => self.counters.retry_exhausted += 1,
            Unbacked::Limit => self.counters.limit_refused += 1,
            Unbacked::LendFailed(_) => self.counters.lend_errors += 1,
            Unbacked::Unsupported => self.counters.unsupported += 1,
            _ => {}
        }
        if req.is_read() {
            self.counters.unbacked_reads += 1;
        } else {
            self.counters.unbacked_writes += 1;
        }
        debug!(dom = %self.dom, vcpu, addr = req.addr, reason = ?why, "BAR access refused: unbacked");
        Response::ready(ones_if_read(req))
    }

    fn bar_access(&mut self, vcpu: u32, req: &Ioreq, now: Instant) -> Response {
        self.counters.bar_faults += 1;
        let Some(bar) = self.pci.active_bar() else {
            return self.unbacked(vcpu, req, Unbacked::NotDecoded);
        };
        if !bar.contains(&req.addr) {
            return self.unbacked(vcpu, req, Unbacked::OutsideBar);
        }
        if self.gone {
            return self.unbacked(vcpu, req, Unbacked::DomainGone);
        }
        let gfn = req.addr >> PAGE_SHIFT;
        let off = req.addr - bar.start;
        if self.retries.consecutive(vcpu) >= self.cfg.limits.max_retries {
            self.retries.reset(vcpu);
            return self.unbacked(vcpu, req, Unbacked::RetryExhausted);
        }
        if !self.rate.allow(now) {
            return self.unbacked(vcpu, req, Unbacked::RateLimited);
        }
        let reg = match self.registry.lookup(off) {
            Some(r) => *r,
            None => {
                self.refresh_registry();
                match self.registry.lookup(off) {
                    Some(r) => *r,
                    None => return self.unbacked(vcpu, req, Unbacked::Unregistered),
                }
            }
        };
        let max = self.cfg.limits.max_lent_pages;
        let mut remaining = max.saturating_sub(self.ledger.lent_pages());
        if remaining < self.cfg.fault_around >> PAGE_SHIFT {
            // The ledger is an upper bound (the kernel revokes on
            // invalidation without telling us): ask for the real count.
            match self.hm.query(&self.dom) {
                Ok(q) => remaining = max.saturating_sub(q.lent_pages),
                Err(e) => self.note_gone(&e),
            }
        }
        let Some(plan) = fault_around::plan(
            off,
            self.cfg.fault_around,
            self.cfg.bar_size,
            reg.offset..reg.end(),
            remaining,
        ) else {
            return self.unbacked(vcpu, req, Unbacked::Limit);
        };
        let first_gfn = (bar.start + plan.offset) >> PAGE_SHIFT;
        let lent = match self.lend(plan.offset, first_gfn, plan.nr_pages) {
            Ok(n) => n,
            Err(e) if e.errno == Errno::EEXIST && plan.nr_pages > 1 => {
                // Part of the chunk is occupied (another vCPU's fault, or a
                // partly revoked chunk): lend just the faulting page.
                let page_off = off & !(PAGE_SIZE - 1);
                match self.lend(page_off, gfn, 1) {
                    Ok(n) => n,
                    Err(e) if e.errno == Errno::EEXIST => 1,
                    Err(e) => return self.lend_failed(vcpu, req, e),
                }
            }
            Err(e) if e.errno == Errno::EEXIST => 1,
            Err(e) => return self.lend_failed(vcpu, req, e),
        };
        if lent < plan.nr_pages {
            // Fewer pages than planned: the cached registrations may be
            // stale (the backend unregistered or registered again since
            // the last query), and what the kernel lent may not include the
            // faulting page. A RETRY would then only make Xen complete the
            // access as unbacked after one more round trip: ask the kernel
            // and answer now if nothing was lent or the page is no longer
            // registered.
            self.refresh_registry();
            if lent == 0 || self.registry.lookup(off).is_none() {
                return self.unbacked(vcpu, req, Unbacked::Unregistered);
            }
        }
        if !self.retries.try_retry(vcpu, gfn) {
            return self.unbacked(vcpu, req, Unbacked::RetryExhausted);
        }
        self.counters.retries += 1;
        Response::retry(0)
    }

    fn lend_failed(&mut self, vcpu: u32, req: &Ioreq, e: PlatformError) -> Response {
        let why = if e.is_gone() {
            self.gone = true;
            Unbacked::DomainGone
        } else if e.errno == Errno::ENOSPC {
            Unbacked::Limit
        } else {
            // Not the guest's doing: say so, on the first failure and then
            // once per 1024, since every access to those pages fails again.
            if self.counters.lend_errors % 1024 == 0 {
                let hint = if e.errno == Errno::ENOMEM {
                    "; ENOMEM: Xen's paging memory for the guest may be used up \
                     (shadow_memory and gpu_hostmem_size in xl.cfg(5))"
                } else {
                    ""
                };
                warn!(dom = %self.dom, error = %e, failures = self.counters.lend_errors + 1,
                      "lending failed, BAR accesses there read as all ones{hint}");
            }
            Unbacked::LendFailed(e.errno)
        };
        self.unbacked(vcpu, req, why)
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

    fn refresh_registry(&mut self) {
        match self.hm.query(&self.dom) {
            Ok(q) => self.registry.replace_from(&q.regions),
            Err(e) => {
                self.note_gone(&e);
                debug!(dom = %self.dom, error = %e, "registration query failed");
            }
        }
    }

    /// A status snapshot. `ask_kernel` adds the kernel's view.
    pub fn status(&mut self, ask_kernel: bool) -> Status {
        let mut kernel_lent = None;
        let mut regs: Vec<RegistrationStatus> = Vec::new();
        if ask_kernel {
            if let Ok(q) = self.hm.query(&self.dom) {
                kernel_lent = Some(q.lent_pages);
                regs = q
                    .regions
                    .iter()
                    .map(|r| RegistrationStatus {
                        id: r.id,
                        offset: r.offset,
                        size: r.size,
                        lent_pages: Some(r.lent_pages),
                        owner_pid: Some(r.owner_pid),
                    })
                    .collect();
            }
        }
        if regs.is_empty() {
            regs = self
                .registry
                .iter()
                .map(|r| RegistrationStatus {
                    id: r.id,
                    offset: r.offset,
                    size: r.size,
                    lent_pages: None,
                    owner_pid: None,
                })
                .collect();
        }
        Status {
            domid: self.dom.domid,
            uuid: self.dom.uid_string(),
            state: if self.stopped {
                "stopped".into()
            } else if self.gone {
                "stopping".into()
            } else {
                "running".into()
            },
            bdf: self.cfg.sbdf.to_string(),
            bar_base: self.pci.active_bar().map(|r| r.start),
            bar_size: self.cfg.bar_size,
            ioservid: Some(self.id),
            registrations: regs,
            ledger_lent_pages: self.ledger.lent_pages(),
            kernel_lent_pages: kernel_lent,
            counters: self.counters,
        }
    }

    /// Stop: disable the server, revoke every lent page, unmap the BAR,
    /// release the PCI function, close the channel, destroy the server.
    /// Returns the platform handles and what failed.
    pub fn shutdown(mut self) -> (D, H, TeardownReport) {
        let mut report = TeardownReport::default();
        let dom = self.dom;
        let id = self.id;
        info!(%dom, id, "shutting down: disabling ioreq server");
        report.note(self.dm.set_server_state(&dom, id, false));
        info!(%dom, "revoking every lent page");
        report.note(self.hm.revoke(&dom, RevokeRange::All));
        self.ledger.forget_all();
        if let Some(r) = self.mmio.take() {
            report.note(self.dm.unmap_mmio(&dom, id, r.start, r.end - 1));
        }
        report.note(self.dm.unmap_pcidev(&dom, id, self.cfg.sbdf));
        drop(self.chan.take());
        info!(%dom, id, "destroying ioreq server");
        report.note(self.dm.destroy_server(&dom, id));
        self.stopped = true;
        (self.dm, self.hm, report)
    }
}

fn ones_if_read(req: &Ioreq) -> u64 {
    if req.is_read() && !req.data_is_ptr {
        size_mask(req.size)
    } else {
        0
    }
}

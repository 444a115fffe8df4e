//! The guest's instructions on guest-physical memory, broken into ioreqs
//! the way Xen's instruction emulator breaks them, and Xen's handling of
//! the server's answers, including the RETRY contract.
//!
//! What Xen does (4.20 `hvm/emulate.c`), and so what the simulator does:
//! - A plain load or store is split at page boundaries; a part on a page
//!   that is memory (lent or RAM) is done on it, a part on a page routed
//!   to a server is sent as requests of the largest power of two not above
//!   the part's remaining size, at most 8 bytes, one after the other
//!   (`hvmemul_phys_mmio_access`). A load or store straddling two pages
//!   therefore sends requests for each page it does not find mapped.
//! - `rep stos` to an emulated page sends one `IOREQ_TYPE_COPY` write with
//!   `count` repetitions of the value (`data_is_ptr` = 0).
//! - `rep movs` with one side emulated sends one request with
//!   `data_is_ptr` = 1, `data` = the guest-physical address of the RAM
//!   side, `count` clipped so the RAM side stays on one page (or two for
//!   one straddling element), `df` as the guest set it; if that RAM side
//!   is not all memory, one element goes as a plain load and store. With
//!   both sides emulated Xen does one element at a time as a plain load
//!   and store; with neither, a memory copy.
//! - A repeated request is truncated at the page boundary of its first
//!   element on the emulated side (`hvmemul_do_io`), so it touches one
//!   page; a first element straddling two pages on the emulated side goes
//!   as a plain load and store instead (the rep hooks decline it,
//!   xen-patches 0017), split at the boundary like any plain access; the
//!   rest of the instruction goes as further requests.
//! - Element `i` of a request is at `addr + i * size`, or `addr - i * size`
//!   with `df` (and likewise `data`).
//!
//! RETRY ([`RetryRule::Contract`]): if every page the request touches is
//! memory, Xen performs the access on it and the request completes;
//! otherwise Xen sends the same request again, at most
//! [`XEN_IOREQ_MAX_RETRIES`] times, then completes it as unbacked (reads
//! all ones, `data_is_ptr` reads fill the guest buffer with ones, writes
//! dropped) and counts it. IORESP_READY means the server did the access:
//! for `data_is_ptr` Xen trusts that the server copied guest memory.

use gpu_hostmem_core::ioreq::{
    size_mask, Ioreq, IOREQ_READ, IOREQ_TYPE_COPY, IOREQ_WRITE, STATE_IOREQ_READY,
    STATE_IORESP_READY,
};
use gpu_hostmem_core::limits::XEN_IOREQ_MAX_RETRIES;
use gpu_hostmem_core::platform::{DomainIdentity, IoServId, RetryStats};

use crate::faults::Fault;
use crate::world::RetryRule;
use crate::{live, Access, Sim, PAGE};

/// Resends after which the simulator stops whatever the rule says.
const RESEND_GUARD: u32 = 64;

/// Largest repetition count Xen puts in one string request.
pub const MAX_REPS: u64 = 4096;

/// One guest instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Insn {
    /// A load of `size` bytes (1 to 16: `mov`, SSE) at `gpa`.
    Load {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes.
        size: u32,
    },
    /// A store of `data` (1 to 16 bytes) at `gpa`.
    Store {
        /// Guest-physical address.
        gpa: u64,
        /// The bytes stored.
        data: Vec<u8>,
    },
    /// `rep stos`: `count` elements of `size` bytes, the low bytes of
    /// `value`, from `gpa` up (or down with `df`).
    RepStos {
        /// Address of the first element.
        gpa: u64,
        /// Element size: 1, 2, 4 or 8.
        size: u32,
        /// Elements.
        count: u64,
        /// Direction flag.
        df: bool,
        /// The value stored.
        value: u64,
    },
    /// `rep movs`: `count` elements of `size` bytes from `src` to `dst`,
    /// upwards (or downwards with `df`, both addresses being those of the
    /// first element moved).
    RepMovs {
        /// First destination element.
        dst: u64,
        /// First source element.
        src: u64,
        /// Element size: 1, 2, 4 or 8.
        size: u32,
        /// Elements.
        count: u64,
        /// Direction flag.
        df: bool,
    },
}

impl Insn {
    /// The guest-physical byte ranges the instruction reads and writes:
    /// `(read, written)`, each `(start, len)`.
    pub fn footprint(&self) -> (Option<Extent>, Option<Extent>) {
        match *self {
            Insn::Load { gpa, size } => (Some((gpa, u64::from(size))), None),
            Insn::Store { gpa, ref data } => (None, Some((gpa, data.len() as u64))),
            Insn::RepStos {
                gpa,
                size,
                count,
                df,
                ..
            } => (None, Some(span(gpa, size, count, df))),
            Insn::RepMovs {
                dst,
                src,
                size,
                count,
                df,
            } => (
                Some(span(src, size, count, df)),
                Some(span(dst, size, count, df)),
            ),
        }
    }
}

/// A guest-physical byte range as `(start, len)`.
pub type Extent = (u64, u64);

/// `(start, len)` of `count` elements of `size` from `first` (df aware).
pub fn span(first: u64, size: u32, count: u64, df: bool) -> Extent {
    let len = u64::from(size) * count;
    let start = if df {
        first.wrapping_sub(len.saturating_sub(u64::from(size)))
    } else {
        first
    };
    (start, len)
}

/// What one instruction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InsnReport {
    /// `None` if the instruction completed; else why not
    /// ([`Access::Blocked`], [`Access::Gone`], [`Access::Crashed`]).
    pub stopped: Option<Access>,
    /// The bytes a load returned.
    pub data: Vec<u8>,
    /// Requests the server received (resends included).
    pub requests: u32,
    /// RETRY answers.
    pub retries: u32,
    /// Requests Xen sent again because a page was still not mapped.
    pub resends: u32,
    /// Requests completed by the server (IORESP_READY).
    pub emulated: u32,
    /// Requests Xen completed from memory after a RETRY.
    pub from_memory: u32,
    /// Requests Xen completed as unbacked after RETRY.
    pub unbacked: u32,
    /// Accesses to pages no server claims (Xen's default: ones, dropped).
    pub no_device: u32,
    /// Requests with `data_is_ptr` the old rule took as completed without
    /// copying ([`RetryRule::Reexecute`]).
    pub skipped: u32,
}

impl InsnReport {
    /// True if some part went to a server or nowhere (not all memory).
    pub fn faulted(&self) -> bool {
        self.requests > 0 || self.no_device > 0
    }
}

/// Xen's answer to one request, as the guest sees it.
enum Done {
    /// Read data (plain reads), or nothing.
    Data(u64),
}

impl Sim {
    /// Run one guest instruction on `vcpu`. `run` is called whenever the
    /// vCPU waits for the ioreq server (the server drains its slots).
    pub fn execute(
        &self,
        dom: &DomainIdentity,
        vcpu: u32,
        insn: &Insn,
        run: &mut dyn FnMut(),
    ) -> InsnReport {
        let mut rep = InsnReport::default();
        let r = match insn {
            Insn::Load { gpa, size } => {
                let mut buf = vec![0u8; *size as usize];
                let r = self.plain(dom, vcpu, *gpa, &mut buf, true, run, &mut rep);
                rep.data = buf;
                r
            }
            Insn::Store { gpa, data } => {
                let mut buf = data.clone();
                self.plain(dom, vcpu, *gpa, &mut buf, false, run, &mut rep)
            }
            Insn::RepStos {
                gpa,
                size,
                count,
                df,
                value,
            } => self.rep_stos(dom, vcpu, *gpa, *size, *count, *df, *value, run, &mut rep),
            Insn::RepMovs {
                dst,
                src,
                size,
                count,
                df,
            } => self.rep_movs(dom, vcpu, *dst, *src, *size, *count, *df, run, &mut rep),
        };
        if let Err(a) = r {
            rep.stopped = Some(a);
        }
        rep
    }

    /// The server claiming guest-physical `gpa` for `dom`, if any.
    fn claimant(&self, dom: &DomainIdentity, gpa: u64) -> Result<Option<IoServId>, Access> {
        let mut w = self.world.borrow_mut();
        let d = live(&mut w.domains, dom).ok_or(Access::Gone)?;
        Ok(d.servers
            .iter()
            .find(|(_, s)| s.enabled && s.mmio.iter().any(|&(a, b)| a <= gpa && gpa <= b))
            .map(|(id, _)| *id))
    }

    fn is_mem(&self, dom: &DomainIdentity, gpa: u64) -> bool {
        self.world.borrow().mapped(dom.domid, gpa / PAGE)
    }

    /// A plain load (`read`) or store of `buf.len()` bytes: per page, on
    /// memory or as chunked requests.
    #[allow(clippy::too_many_arguments)]
    fn plain(
        &self,
        dom: &DomainIdentity,
        vcpu: u32,
        gpa: u64,
        buf: &mut [u8],
        read: bool,
        run: &mut dyn FnMut(),
        rep: &mut InsnReport,
    ) -> Result<(), Access> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = gpa.wrapping_add(done as u64);
            let n = ((PAGE - a % PAGE) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            let on_mem = {
                let mut w = self.world.borrow_mut();
                live(&mut w.domains, dom).ok_or(Access::Gone)?;
                if read {
                    w.phys_read(dom.domid, a, part)
                } else {
                    w.phys_write(dom.domid, a, part)
                }
            };
            if !on_mem {
                self.plain_mmio(dom, vcpu, a, part, read, run, rep)?;
            }
            done += n;
        }
        Ok(())
    }

    /// One page's part of a plain access, not on memory.
    #[allow(clippy::too_many_arguments)]
    fn plain_mmio(
        &self,
        dom: &DomainIdentity,
        vcpu: u32,
        gpa: u64,
        part: &mut [u8],
        read: bool,
        run: &mut dyn FnMut(),
        rep: &mut InsnReport,
    ) -> Result<(), Access> {
        let Some(sid) = self.claimant(dom, gpa)? else {
            rep.no_device += 1;
            if read {
                part.fill(0xff);
            }
            return Ok(());
        };
        let mut chunk = 1usize << (usize::BITS - 1 - part.len().leading_zeros());
        chunk = chunk.min(8);
        let mut off = 0usize;
        while off < part.len() {
            let mut data = [0u8; 8];
            if !read {
                data[..chunk].copy_from_slice(&part[off..off + chunk]);
            }
            let req = Ioreq {
                addr: gpa.wrapping_add(off as u64),
                data: u64::from_le_bytes(data),
                count: 1,
                size: chunk as u32,
                vp_eport: vcpu,
                state: STATE_IOREQ_READY,
                data_is_ptr: false,
                dir: if read { IOREQ_READ } else { IOREQ_WRITE },
                df: false,
                kind: IOREQ_TYPE_COPY,
            };
            let Done::Data(v) = self.request(dom, vcpu, sid, req, run, rep)?;
            if read {
                part[off..off + chunk].copy_from_slice(&v.to_le_bytes()[..chunk]);
            }
            off += chunk;
            while chunk > part.len() - off && chunk > 1 {
                chunk >>= 1;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn rep_stos(
        &self,
        dom: &DomainIdentity,
        vcpu: u32,
        gpa: u64,
        size: u32,
        count: u64,
        df: bool,
        value: u64,
        run: &mut dyn FnMut(),
        rep: &mut InsnReport,
    ) -> Result<(), Access> {
        let s = u64::from(size);
        let bytes = value.to_le_bytes();
        let mut i = 0u64;
        while i < count {
            let a = elem(gpa, s, i, df);
            let sid = if self.is_mem(dom, a) {
                None
            } else {
                self.claimant(dom, a)?
            };
            let (Some(sid), false) = (sid, straddles(a, size)) else {
                // Memory (or nothing there), or an emulated element
                // straddling two pages (hvmemul_rep_stos declines it): one
                // element as a plain store, split at the page boundary.
                let mut b = bytes[..size as usize].to_vec();
                self.plain(dom, vcpu, a, &mut b, false, run, rep)?;
                i += 1;
                continue;
            };
            let reps = mmio_clip(a, size, (count - i).min(MAX_REPS), df);
            let req = Ioreq {
                addr: a,
                data: value & size_mask(size),
                count: reps as u32,
                size,
                vp_eport: vcpu,
                state: STATE_IOREQ_READY,
                data_is_ptr: false,
                dir: IOREQ_WRITE,
                df,
                kind: IOREQ_TYPE_COPY,
            };
            self.request(dom, vcpu, sid, req, run, rep)?;
            i += reps;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn rep_movs(
        &self,
        dom: &DomainIdentity,
        vcpu: u32,
        dst: u64,
        src: u64,
        size: u32,
        count: u64,
        df: bool,
        run: &mut dyn FnMut(),
        rep: &mut InsnReport,
    ) -> Result<(), Access> {
        let s = u64::from(size);
        let mut i = 0u64;
        while i < count {
            let (sa, da) = (elem(src, s, i, df), elem(dst, s, i, df));
            let (s_mem, d_mem) = (self.is_mem(dom, sa), self.is_mem(dom, da));
            let mmio = match (s_mem, d_mem) {
                (false, true) => Some((sa, da, IOREQ_READ)),
                (true, false) => Some((da, sa, IOREQ_WRITE)),
                _ => None,
            };
            let sid = match mmio {
                Some((m, _, _)) => self.claimant(dom, m)?,
                None => None,
            };
            // Xen takes references on the RAM side's page(s) first
            // (hvmemul_acquire_page); if that is not all memory, the
            // string form is unhandleable and one element goes plain.
            let ram_ok = mmio.is_some_and(|(_, ram, _)| {
                self.world
                    .borrow()
                    .range_mapped(dom.domid, ram, u64::from(size))
            });
            let straddle = mmio.is_some_and(|(m, _, _)| straddles(m, size));
            let (Some((m, ram, dir)), Some(sid), true, false) = (mmio, sid, ram_ok, straddle)
            else {
                // Both memory, both emulated, no server, a RAM side that
                // is not all memory, or an emulated element straddling two
                // pages (hvmemul_rep_movs declines it): one element as a
                // plain load and store, each split at page boundaries.
                let mut b = vec![0u8; size as usize];
                self.plain(dom, vcpu, sa, &mut b, true, run, rep)?;
                self.plain(dom, vcpu, da, &mut b, false, run, rep)?;
                i += 1;
                continue;
            };
            // The RAM side stays on its page (two for one straddling
            // element: hvmemul_do_io_addr), and so does the MMIO side.
            let page_off = ram % PAGE;
            let fit = if df {
                ((page_off + s - 1) % PAGE) / s
            } else {
                (PAGE - page_off) / s
            };
            let reps = mmio_clip(m, size, (count - i).min(MAX_REPS).min(fit.max(1)), df);
            let req = Ioreq {
                addr: m,
                data: ram,
                count: reps as u32,
                size,
                vp_eport: vcpu,
                state: STATE_IOREQ_READY,
                data_is_ptr: true,
                dir,
                df,
                kind: IOREQ_TYPE_COPY,
            };
            self.request(dom, vcpu, sid, req, run, rep)?;
            i += reps;
        }
        Ok(())
    }

    /// Send one request and handle the answer as Xen does.
    fn request(
        &self,
        dom: &DomainIdentity,
        vcpu: u32,
        sid: IoServId,
        req: Ioreq,
        run: &mut dyn FnMut(),
        rep: &mut InsnReport,
    ) -> Result<Done, Access> {
        let rule = self.world.borrow().opts.retry_rule;
        let mut resends = 0u32;
        loop {
            rep.requests += 1;
            let (state, data) = self.roundtrip(dom, vcpu, sid, req, run)?;
            if state == STATE_IORESP_READY {
                rep.emulated += 1;
                self.reset_retries(dom, vcpu);
                let v = if req.is_read() && !req.data_is_ptr {
                    data & size_mask(req.size)
                } else {
                    0
                };
                return Ok(Done::Data(v));
            }
            rep.retries += 1;
            let (lo, len) = span(req.addr, req.size, u64::from(req.count.max(1)), req.df);
            {
                let mut w = self.world.borrow_mut();
                if w.faults.take_counted(|f| match f {
                    Fault::RevokeBeforeRetryCheck(n) => Some(n),
                    _ => None,
                }) {
                    // An invalidation revokes a page of the request before
                    // Xen looks at it.
                    let last = lo.saturating_add(len.saturating_sub(1));
                    let gfn = (lo / PAGE..=last / PAGE).find(|g| {
                        w.domains
                            .get(&dom.domid)
                            .is_some_and(|d| d.p2m.contains_key(g))
                    });
                    if let Some(g) = gfn {
                        w.notifier_revoke_gfn(dom, g);
                    }
                }
                live(&mut w.domains, dom).ok_or(Access::Gone)?;
            }
            let all_mapped = self.world.borrow().range_mapped(dom.domid, lo, len);
            match rule {
                RetryRule::Contract => {
                    // Xen counts how each answer ends, as
                    // ioreq_complete_retry() does.
                    if req.kind == IOREQ_TYPE_COPY && all_mapped {
                        rep.from_memory += 1;
                        self.count_retry(dom, |c| &mut c.completed);
                        return self.perform(dom, &req);
                    }
                    resends += 1;
                    if resends > RESEND_GUARD {
                        // Not Xen: a guard far above its bound, so that a
                        // broken bound shows in the tests, not as a hang.
                        self.count_retry(dom, |c| &mut c.refused);
                        return self.complete_unbacked(dom, &req, rep);
                    }
                    if req.kind != IOREQ_TYPE_COPY || resends > XEN_IOREQ_MAX_RETRIES {
                        self.count_retry(dom, |c| &mut c.refused);
                        return self.complete_unbacked(dom, &req, rep);
                    }
                    rep.resends += 1;
                    self.count_retry(dom, |c| &mut c.resent);
                }
                RetryRule::Reexecute => {
                    let n = {
                        let mut w = self.world.borrow_mut();
                        let d = live(&mut w.domains, dom).ok_or(Access::Gone)?;
                        match d.vcpu_retries.get_mut(vcpu as usize) {
                            Some(r) => {
                                *r += 1;
                                *r
                            }
                            None => XEN_IOREQ_MAX_RETRIES + 1,
                        }
                    };
                    let page_mapped = self.is_mem(dom, req.addr);
                    if !page_mapped || n > XEN_IOREQ_MAX_RETRIES {
                        self.reset_retries(dom, vcpu);
                        return self.complete_unbacked(dom, &req, rep);
                    }
                    if req.data_is_ptr {
                        // The string instruction advanced as if the server
                        // had copied: the guest buffer (or the BAR) never
                        // sees the data.
                        rep.skipped += 1;
                        return Ok(Done::Data(0));
                    }
                    if all_mapped {
                        // Re-executed: the access reaches the memory.
                        rep.from_memory += 1;
                        return self.perform(dom, &req);
                    }
                    rep.resends += 1;
                }
            }
        }
    }

    /// Count one end of a RETRY answer in the domain's counters.
    fn count_retry(&self, dom: &DomainIdentity, which: fn(&mut RetryStats) -> &mut u64) {
        if let Some(d) = live(&mut self.world.borrow_mut().domains, dom) {
            *which(&mut d.retry_stats) += 1;
        }
    }

    /// Xen completes `req` from memory (every page is mapped).
    fn perform(&self, dom: &DomainIdentity, req: &Ioreq) -> Result<Done, Access> {
        let mut w = self.world.borrow_mut();
        let size = req.size as usize;
        let s = u64::from(req.size);
        let mut value = 0u64;
        for i in 0..u64::from(req.count.max(1)) {
            let a = elem(req.addr, s, i, req.df);
            let mut b = [0u8; 8];
            let ok = if req.is_read() {
                let ok = w.phys_read(dom.domid, a, &mut b[..size]);
                if req.data_is_ptr {
                    ok && w.phys_write(dom.domid, elem(req.data, s, i, req.df), &b[..size])
                } else {
                    value = u64::from_le_bytes(b);
                    ok
                }
            } else {
                let ok = if req.data_is_ptr {
                    w.phys_read(dom.domid, elem(req.data, s, i, req.df), &mut b[..size])
                } else {
                    b = req.data.to_le_bytes();
                    true
                };
                ok && w.phys_write(dom.domid, a, &b[..size])
            };
            if !ok {
                // A data pointer outside guest memory: Xen crashes the
                // domain (hvmemul_acquire_page).
                if let Some(d) = live(&mut w.domains, dom) {
                    d.dying = true;
                }
                return Err(Access::Crashed);
            }
        }
        Ok(Done::Data(value))
    }

    /// Xen completes `req` as unbacked and counts it.
    fn complete_unbacked(
        &self,
        dom: &DomainIdentity,
        req: &Ioreq,
        rep: &mut InsnReport,
    ) -> Result<Done, Access> {
        rep.unbacked += 1;
        let mut w = self.world.borrow_mut();
        let d = live(&mut w.domains, dom).ok_or(Access::Gone)?;
        d.unbacked += 1;
        if !req.is_read() {
            return Ok(Done::Data(0));
        }
        if !req.data_is_ptr {
            return Ok(Done::Data(size_mask(req.size)));
        }
        let s = u64::from(req.size);
        let ones = vec![0xffu8; req.size as usize];
        for i in 0..u64::from(req.count.max(1)) {
            if !w.phys_write(dom.domid, elem(req.data, s, i, req.df), &ones) {
                if let Some(d) = live(&mut w.domains, dom) {
                    d.dying = true;
                }
                return Err(Access::Crashed);
            }
        }
        Ok(Done::Data(0))
    }
}

/// Does the element of `size` bytes at `addr` straddle a page boundary?
/// Xen's rep hooks decline such a first element on their emulated side
/// (xen-patches 0017), so no request spans two pages.
fn straddles(addr: u64, size: u32) -> bool {
    PAGE - addr % PAGE < u64::from(size)
}

/// Xen truncates a repeated MMIO request at the page boundary of its
/// first element (`hvmemul_do_io`); a first element straddling the
/// boundary never gets here ([`straddles`]).
fn mmio_clip(addr: u64, size: u32, reps: u64, df: bool) -> u64 {
    if reps <= 1 {
        return reps;
    }
    let s = u64::from(size);
    let off = addr % PAGE;
    let tail = PAGE - off;
    if tail < s {
        1
    } else {
        reps.min((if df { off + s } else { tail }) / s).max(1)
    }
}

/// Address of element `i` of `size` bytes from `first`.
fn elem(first: u64, size: u64, i: u64, df: bool) -> u64 {
    if df {
        first.wrapping_sub(i * size)
    } else {
        first.wrapping_add(i * size)
    }
}

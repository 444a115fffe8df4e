//! The system under test: the real server logic (`gpu-hostmem-core`) on the
//! simulated platform, driven the way xl, the backends and the guest would.

use std::collections::BTreeMap;

use gpu_hostmem_core::limits::Limits;
use gpu_hostmem_core::limits::XEN_IOREQ_MAX_RETRIES;
use gpu_hostmem_core::pci::{COMMAND_MEMORY, REG_BAR0, REG_BAR1, REG_COMMAND};
use gpu_hostmem_core::platform::{DomainIdentity, Errno, IoServId};
use gpu_hostmem_core::server;
use gpu_hostmem_core::server::ServerConfig;
use gpu_hostmem_sim::harness::{byte_at, predict, test_config, Guest, Prediction};
use gpu_hostmem_sim::{AccessReport, Fault, Insn, InsnReport, Sim, SimOptions};

use super::strategies::{FaultKind, Form, Op, BAR_PAGES, FIRMWARE_BASE};

/// Guest RAM of every test guest: the RAM side of string instructions.
pub const RAM_GPA: u64 = 0x10_0000;
/// Its pages.
pub const RAM_PAGES: u64 = 16;

/// One instruction and what it did.
#[derive(Debug)]
pub struct ExecObs {
    pub insn: Insn,
    pub report: InsnReport,
    /// The exact outcome, predicted from the state before.
    pub want: Prediction,
    /// The bytes of `want.after` before the instruction.
    pub before: Vec<Option<u8>>,
    /// A string request over registered and unregistered BAR bytes at
    /// once: Xen completes it as unbacked as a whole.
    pub mixed: bool,
    pub bar: std::ops::Range<u64>,
}

/// What one transition showed.
#[derive(Debug, Default)]
pub struct Observation {
    /// Create succeeded.
    pub created: bool,
    /// The guest access, for Read/Write.
    pub access: Option<(u64, AccessReport)>,
    /// Pages lent to the domain before the access.
    pub lent_before: u64,
    /// Violations found while performing the transition.
    pub violations: Vec<String>,
    /// The instruction, for Exec.
    pub exec: Option<ExecObs>,
}

pub struct Sut {
    pub sim: Sim,
    pub cfg: ServerConfig,
    pub guests: BTreeMap<u8, Guest>,
    /// Identities (and server ids) of destroyed domains, per slot.
    pub old: BTreeMap<u8, Vec<(DomainIdentity, Option<IoServId>)>>,
    /// Slots whose domain was created while faults were armed or saw one.
    pub degraded: BTreeMap<u8, bool>,
}

/// RETRY answers for one request at most: the first and Xen's resends.
pub const MAX_RETRIES: u32 = XEN_IOREQ_MAX_RETRIES + 1;
pub const FAULT_AROUND: u64 = 64 * 1024;

impl Sut {
    pub fn new(max_lent_pages: u64, opts: SimOptions) -> Self {
        let limits = Limits {
            max_lent_pages,
            ..Limits::default()
        };
        Sut {
            sim: Sim::new(opts),
            cfg: test_config(BAR_PAGES * 4096, FAULT_AROUND, limits),
            guests: BTreeMap::new(),
            old: BTreeMap::new(),
            degraded: BTreeMap::new(),
        }
    }

    pub fn faults_armed(&self) -> bool {
        self.sim.with_world(|w| !w.faults.armed().is_empty())
    }

    pub fn is_dying(&self, slot: u8) -> bool {
        let Some(g) = self.guests.get(&slot) else {
            return false;
        };
        self.sim.with_world(|w| {
            w.domains
                .get(&g.ident.domid)
                .is_some_and(|d| d.dying || d.crashed.is_some())
        })
    }

    pub fn apply(&mut self, op: &Op, gpa_base: u64) -> Observation {
        let armed_before = self.armed_count();
        let mut obs = self.apply_inner(op, gpa_base);
        self.check_ledgers(&mut obs);
        if !matches!(op, Op::Fault(_)) {
            // A fault applies to the operation right after it, or never.
            let consumed = self.armed_count() < armed_before;
            if let Some(slot) = op_slot(op) {
                if consumed && self.guests.contains_key(&slot) {
                    self.degraded.insert(slot, true);
                }
            }
            self.sim.disarm_all();
        }
        obs
    }

    /// Every running server's ledger is an upper bound of what the
    /// kernel has lent to its guest: it forgets pages only when the
    /// kernel says they are no longer lent, never one that still is. (A
    /// domain that died in the middle of a lend is not held to it: its
    /// teardown revokes everything, whatever the ledger says.)
    fn check_ledgers(&self, obs: &mut Observation) {
        for g in self.guests.values() {
            let Some(s) = g.server.as_ref() else { continue };
            if self.is_dying_ident(&g.ident) {
                continue;
            }
            let (ledger, kernel) = (s.ledger().lent_pages(), self.sim.lent_pages(&g.ident));
            if ledger < kernel {
                obs.violations.push(format!(
                    "ledger of {} counts {ledger} lent pages, the kernel {kernel}",
                    g.ident
                ));
            }
        }
    }

    fn armed_count(&self) -> usize {
        self.sim.with_world(|w| w.faults.armed().len())
    }

    fn apply_inner(&mut self, op: &Op, gpa_base: u64) -> Observation {
        let mut obs = Observation::default();
        if let Some(g) = op_slot(op).and_then(|s| self.guests.get(&s)) {
            obs.lent_before = self.sim.lent_pages(&g.ident);
        }
        let armed = self.faults_armed();
        let sim = self.sim.clone();
        match *op {
            Op::Create { slot, vcpus } => {
                if self.guests.contains_key(&slot) {
                    return obs;
                }
                match Guest::create(&sim, u16::from(slot) + 1, vcpus, self.cfg) {
                    Ok(mut g) => {
                        // Firmware places and enables the BAR.
                        g.program_bar(&sim, FIRMWARE_BASE);
                        sim.add_guest_ram(&g.ident, RAM_GPA, RAM_PAGES);
                        let junk: Vec<u8> = (0..RAM_PAGES * 4096)
                            .map(|i| (i % 253) as u8 ^ 0xa5)
                            .collect();
                        sim.mem_write(&g.ident, RAM_GPA, &junk);
                        self.guests.insert(slot, g);
                        self.degraded.insert(slot, armed);
                        obs.created = true;
                    }
                    Err(e) => obs.violations.push(format!("create failed: {e}")),
                }
            }
            Op::Register { slot, id, page, nr } => {
                if let Some(g) = self.guests.get(&slot) {
                    let nr = nr.min(BAR_PAGES - page).max(1);
                    let _ = sim.register(&g.ident, u32::from(id), page * 4096, nr, 1000);
                }
            }
            Op::Unregister { slot, id } => {
                if let Some(g) = self.guests.get(&slot) {
                    let _ = sim.unregister(&g.ident, u32::from(id));
                }
            }
            Op::Migrate { slot, id, page } => {
                if let Some(g) = self.guests.get(&slot) {
                    let _ = sim.migrate_page(&g.ident, u32::from(id), page);
                }
            }
            Op::Read {
                slot,
                vcpu,
                page,
                size,
            } => {
                if let Some(g) = self.guests.get_mut(&slot) {
                    let gpa = gpa_base + page * 4096 + 0x10;
                    let r = g.read(&sim, vcpu % vcpus(&sim, g), gpa, size);
                    obs.access = Some((gpa, r));
                }
            }
            Op::Write { slot, vcpu, page } => {
                if let Some(g) = self.guests.get_mut(&slot) {
                    let gpa = gpa_base + page * 4096;
                    let r = g.write(&sim, vcpu % vcpus(&sim, g), gpa, 4, 0x55);
                    obs.access = Some((gpa, r));
                }
            }
            Op::MoveBar { slot, base } => {
                if let Some(g) = self.guests.get_mut(&slot) {
                    let b = base;
                    g.config(&sim, REG_BAR0, 4, Some(b as u32));
                    g.config(&sim, REG_BAR1, 4, Some((b >> 32) as u32));
                }
            }
            Op::ToggleDecode { slot } => {
                if let Some(g) = self.guests.get_mut(&slot) {
                    if let Some(cmd) = g.config(&sim, REG_COMMAND, 2, None).value() {
                        let cmd = cmd as u32 ^ u32::from(COMMAND_MEMORY);
                        g.config(&sim, REG_COMMAND, 2, Some(cmd));
                    }
                }
            }
            Op::ProbeBar { slot } => {
                if let Some(g) = self.guests.get_mut(&slot) {
                    let lo = g.config(&sim, REG_BAR0, 4, None).value();
                    let hi = g.config(&sim, REG_BAR1, 4, None).value();
                    g.config(&sim, REG_BAR0, 4, Some(!0));
                    g.config(&sim, REG_BAR1, 4, Some(!0));
                    if let (Some(lo), Some(hi)) = (lo, hi) {
                        g.config(&sim, REG_BAR0, 4, Some(lo as u32));
                        g.config(&sim, REG_BAR1, 4, Some(hi as u32));
                    }
                }
            }
            Op::KillServer { slot } => {
                if let Some(g) = self.guests.get_mut(&slot) {
                    g.kill_server();
                }
            }
            Op::Destroy { slot } => {
                if let Some(mut g) = self.guests.remove(&slot) {
                    self.destroy(slot, &mut g, &mut obs);
                }
            }
            Op::StaleTeardown { slot } => self.stale_teardown(slot, &mut obs),
            Op::FaultyRead {
                fault,
                slot,
                vcpu,
                page,
            } => {
                sim.arm(to_fault(fault));
                let armed = self.armed_count();
                if let Some(g) = self.guests.get_mut(&slot) {
                    let gpa = gpa_base + page * 4096 + 0x10;
                    let r = g.read(&sim, vcpu % vcpus(&sim, g), gpa, 8);
                    obs.access = Some((gpa, r));
                }
                if self.armed_count() < armed && self.guests.contains_key(&slot) {
                    self.degraded.insert(slot, true);
                }
            }
            Op::Exec { slot, vcpu, form } => {
                if let Some(g) = self.guests.get_mut(&slot) {
                    let insn = build(form, gpa_base);
                    let bar = gpa_base..gpa_base.saturating_add(BAR_PAGES * 4096);
                    let want = predict(&sim, &g.ident, &bar, &insn);
                    let before = want
                        .after
                        .iter()
                        .map(|&(a, _)| byte_at(&sim, &g.ident, &bar, a))
                        .collect();
                    let mixed = mixed(&sim, g, &bar, &insn);
                    let report = g.exec(&sim, vcpu % vcpus(&sim, g), &insn);
                    obs.exec = Some(ExecObs {
                        insn,
                        report,
                        want,
                        before,
                        mixed,
                        bar,
                    });
                }
            }
            Op::Fault(f) => sim.arm(to_fault(f)),
        }
        obs
    }

    /// `xl destroy`: the plugin's destroy hook (twice: idempotent), then
    /// Xen destroys the domain, then the hook once more (vacuous).
    fn destroy(&mut self, slot: u8, g: &mut Guest, obs: &mut Observation) {
        let dying = self.is_dying_ident(&g.ident);
        for round in 0..2 {
            let rep = g.destroy_hook(&self.sim);
            if !rep.is_clean() {
                obs.violations.push(format!(
                    "I2: destroy hook round {round} not clean: {:?}",
                    rep.errors
                ));
            }
            let lent = self.sim.lent_pages(&g.ident);
            if lent != 0 && !dying {
                obs.violations.push(format!(
                    "I2: {lent} pages still lent to {} after the destroy hook (round {round})",
                    g.ident
                ));
            }
        }
        match self.sim.destroy_domain(&g.ident) {
            Ok(dropped) if dropped != 0 && !dying => obs.violations.push(format!(
                "I2: Xen had to drop {dropped} lent pages of {} at destroy",
                g.ident
            )),
            Ok(_) => {}
            Err(e) => obs.violations.push(format!("destroy_domain: {e}")),
        }
        let rep = g.destroy_hook(&self.sim);
        if !rep.is_clean() {
            obs.violations.push(format!(
                "I2: destroy hook on a gone domain failed: {:?}",
                rep.errors
            ));
        }
        self.old.entry(slot).or_default().push((g.ident, g.servid));
    }

    fn is_dying_ident(&self, ident: &DomainIdentity) -> bool {
        self.sim.with_world(|w| {
            w.domains
                .get(&ident.domid)
                .is_some_and(|d| d.ident.uid == ident.uid && d.dying)
        })
    }

    /// Teardown by a recorded identity whose domid may have been reused:
    /// must change nothing of the domain that has the domid now (I5).
    fn stale_teardown(&mut self, slot: u8, obs: &mut Observation) {
        let Some(&(old, servid)) = self.old.get(&slot).and_then(|v| v.last()) else {
            return;
        };
        let snapshot = |sim: &Sim| {
            sim.with_world(|w| {
                w.domains.get(&old.domid).map(|d| {
                    (
                        d.ident,
                        d.p2m.clone(),
                        d.servers.keys().copied().collect::<Vec<_>>(),
                    )
                })
            })
        };
        let before = snapshot(&self.sim);
        let rep = server::teardown(
            &mut self.sim.device_model(),
            &mut self.sim.host_mem(),
            &old,
            servid,
        );
        if !rep.is_clean() {
            obs.violations.push(format!(
                "I2: teardown of gone {old} not vacuous: {:?}",
                rep.errors
            ));
        }
        let after = snapshot(&self.sim);
        if before != after {
            obs.violations.push(format!(
                "I5: teardown of old {old} changed the domain now at domid {}",
                old.domid
            ));
        }
    }

    /// Destroy everything; afterwards no host frame may be left referenced.
    pub fn finish(&mut self) -> Vec<String> {
        let mut obs = Observation::default();
        let slots: Vec<u8> = self.guests.keys().copied().collect();
        for slot in slots {
            if let Some(mut g) = self.guests.remove(&slot) {
                self.destroy(slot, &mut g, &mut obs);
            }
        }
        let left = self.sim.with_world(|w| w.frames.len());
        if left != 0 {
            obs.violations.push(format!(
                "leak: {left} host frames still referenced after all domains are gone"
            ));
        }
        obs.violations
    }
}

fn to_fault(f: FaultKind) -> Fault {
    match f {
        FaultKind::LendBusy(n) => Fault::LendBusy(n),
        FaultKind::LendPartial(after) => Fault::LendPartial {
            after,
            errno: Errno::EIO,
        },
        FaultKind::DomainDiesDuringLend(after) => Fault::DomainDiesDuringLend { after },
        FaultKind::RevokeFails => Fault::RevokeFails(Errno::EIO),
        FaultKind::MapMmioFails => Fault::MapMmio(Errno::ENOMEM),
        FaultKind::RevokeBeforeRetryCheck(n) => Fault::RevokeBeforeRetryCheck(n),
        FaultKind::CompleteFails => Fault::CompleteFails(Errno::EIO),
    }
}

fn vcpus(sim: &Sim, g: &Guest) -> u32 {
    sim.with_world(|w| {
        w.domains
            .get(&g.ident.domid)
            .map_or(1, |d| d.nr_vcpus.max(1))
    })
}

pub fn op_slot(op: &Op) -> Option<u8> {
    match *op {
        Op::Create { slot, .. }
        | Op::Register { slot, .. }
        | Op::Unregister { slot, .. }
        | Op::Migrate { slot, .. }
        | Op::Read { slot, .. }
        | Op::Write { slot, .. }
        | Op::MoveBar { slot, .. }
        | Op::ToggleDecode { slot }
        | Op::ProbeBar { slot }
        | Op::KillServer { slot }
        | Op::Destroy { slot }
        | Op::StaleTeardown { slot }
        | Op::FaultyRead { slot, .. }
        | Op::Exec { slot, .. } => Some(slot),
        Op::Fault(_) => None,
    }
}

const BAR_BYTES: u64 = BAR_PAGES * 4096;

/// `len` bytes of `size` elements fitting from BAR byte `at`: the count.
fn fit(at: u64, len: u64, size: u32) -> u64 {
    let room = BAR_BYTES.saturating_sub(at);
    (len.min(room) / u64::from(size)).max(1)
}

/// First element of `count` elements of `size` from `lo` upwards, as the
/// guest's registers give it (the highest with DF set).
fn first(lo: u64, size: u32, count: u64, df: bool) -> u64 {
    if df {
        lo + (count - 1) * u64::from(size)
    } else {
        lo
    }
}

/// The instruction of `form` with the BAR at `base`.
pub fn build(form: Form, base: u64) -> Insn {
    let at = |page: u64, off: u64, size: u64| (page * 4096 + off).min(BAR_BYTES - size);
    match form {
        Form::Load { page, off, size } => Insn::Load {
            gpa: base.wrapping_add(at(page, off, u64::from(size))),
            size,
        },
        Form::Store {
            page,
            off,
            size,
            seed,
        } => Insn::Store {
            gpa: base.wrapping_add(at(page, off, u64::from(size))),
            data: (0..size as u8).map(|k| k.wrapping_mul(29) ^ seed).collect(),
        },
        Form::RepStos {
            page,
            off,
            size,
            len,
            df,
            seed,
        } => {
            let lo = at(page, off, u64::from(size));
            let count = fit(lo, len, size);
            Insn::RepStos {
                gpa: base.wrapping_add(first(lo, size, count, df)),
                size,
                count,
                df,
                value: u64::from(seed).wrapping_mul(0x0101_0101_0101_0101) ^ 0x0f1e_2d3c_4b5a_6978,
            }
        }
        Form::RepMovs {
            to_bar,
            page,
            off,
            ram_off,
            size,
            len,
            df,
        } => {
            let lo = at(page, off, u64::from(size));
            let count = fit(lo, len, size);
            let bar = base.wrapping_add(first(lo, size, count, df));
            let ram = RAM_GPA + first(ram_off, size, count, df);
            let (dst, src) = if to_bar { (bar, ram) } else { (ram, bar) };
            Insn::RepMovs {
                dst,
                src,
                size,
                count,
                df,
            }
        }
        Form::BarToBar {
            dst_page,
            src_page,
            off,
            size,
            len,
            df,
        } => {
            let s = at(src_page, off, u64::from(size));
            let mut d = at(dst_page, off, u64::from(size));
            let count = fit(s.max(d), len, size);
            let bytes = count * u64::from(size);
            if s < d + bytes && d < s + bytes {
                // No overlap: memmove semantics are not what is tested.
                d = if s >= bytes { s - bytes } else { s + bytes };
            }
            Insn::RepMovs {
                dst: base.wrapping_add(first(d, size, count, df)),
                src: base.wrapping_add(first(s, size, count, df)),
                size,
                count,
                df,
            }
        }
    }
}

/// True for a string instruction with a BAR side covering registered and
/// unregistered bytes at once: one request may then span both, and Xen
/// completes such a request as unbacked as a whole. (BAR to BAR goes
/// element by element while both sides are emulated, but once one side is
/// lent the other side's elements go as string requests too.)
fn mixed(sim: &Sim, g: &Guest, bar: &std::ops::Range<u64>, insn: &Insn) -> bool {
    let (read, written) = insn.footprint();
    let sides = match insn {
        Insn::RepStos { .. } => vec![written],
        Insn::RepMovs { .. } => vec![read, written],
        _ => Vec::new(),
    };
    sides.into_iter().flatten().any(|(lo, len)| {
        let end = lo.saturating_add(len);
        let inside = lo >= bar.start && end <= bar.end;
        let touches = lo < bar.end && bar.start < end;
        if !touches {
            return false;
        }
        if !inside {
            return true;
        }
        let b = sim.backend_bytes(&g.ident, lo - bar.start, len);
        b.iter().any(Option::is_some) && b.iter().any(Option::is_none)
    })
}

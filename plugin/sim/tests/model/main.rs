//! Model-based property tests of the IOREQ server logic on the simulator.
//!
//! Random sequences of create / register / unregister / migrate / guest
//! read and write / BAR move, decode toggle and size probe / kill server /
//! destroy / stale teardown after domid reuse / injected faults. After
//! every transition the SUT's observation is checked against the
//! reference model, and the invariants are checked on the whole state:
//!
//! - I1: every lent page is registered, mapped by its backend, lent at the
//!   GFN of its BAR offset under the BAR as it is now; a guest never reads
//!   a page that is not the one currently registered (no stale page).
//! - I2: after the destroy hook, nothing is lent; the hook is idempotent
//!   and vacuous for a gone domain.
//! - I3: RETRY answers per request are bounded (Xen's resends), and
//!   every instruction form (loads and stores of 1 to 16 bytes, also
//!   straddling pages, `rep stos`, `rep movs` between RAM and the BAR and
//!   BAR to BAR, both directions) reads exactly the backend's bytes (all
//!   ones only where nobody registered) and writes exactly reach it, on the
//!   first touch and when lent. Where faults, limits or a killed server
//!   make the outcome nondeterministic, every byte read is still the
//!   backend's or all ones and every byte written is the one stored or
//!   the one before: never made up.
//! - I4: lent pages per domain stay under the limit.
//! - I5: no operation reaches a domain other than the one named, and a
//!   teardown by an old identity changes nothing of a reused domid.
//! - a request that fails to complete crashes its guest (no vCPU is left
//!   waiting); the crashed guest is torn down like any other (I2).
//! - no page reference leaks (reference counts match holders; after all
//!   domains are gone no frame is left).

mod reference;
mod strategies;
mod sut;

use gpu_hostmem_core::ioreq::size_mask;
use gpu_hostmem_sim::harness::Guest;
use gpu_hostmem_sim::{Access, Insn, SimOptions};
use proptest::prelude::*;
use proptest::test_runner::Config;

use reference::{Reference, ServerState};
use strategies::{op, Op, BAR_PAGES, FIRMWARE_BASE};
use sut::{op_slot, Sut, MAX_RETRIES};

/// Guest-physical base the model says a slot's accesses should use.
fn gpa_base(model: &Reference, op: &Op) -> u64 {
    op_slot(op)
        .and_then(|s| model.slots.get(&s))
        .map(|d| {
            if d.bar_base != 0 {
                d.bar_base
            } else {
                FIRMWARE_BASE
            }
        })
        .unwrap_or(FIRMWARE_BASE)
}

/// Check what a guest access returned against the model.
fn check_access(
    model: &Reference,
    sut: &Sut,
    op: &Op,
    gpa: u64,
    r: &gpu_hostmem_sim::AccessReport,
    near_limit: bool,
) -> Result<(), String> {
    let Some(slot) = op_slot(op) else {
        return Ok(());
    };
    let Some(d) = model.slots.get(&slot) else {
        return Ok(());
    };
    let Some(g) = sut.guests.get(&slot) else {
        return Ok(());
    };
    let size = match *op {
        Op::Read { size, .. } => size,
        Op::FaultyRead { .. } => 8,
        _ => 4,
    };
    let is_read = matches!(op, Op::Read { .. } | Op::FaultyRead { .. });
    let faulty = matches!(op, Op::FaultyRead { .. });
    let ones = if is_read { size_mask(size) } else { 0 };
    let degraded = sut.degraded.get(&slot).copied().unwrap_or(false);
    if r.retries > MAX_RETRIES {
        return Err(format!(
            "I3: {} RETRY answers for one access (max {MAX_RETRIES})",
            r.retries
        ));
    }
    let active = d.active_bar();
    let page = active.map(|b| (gpa - b) / 4096);
    match r.access {
        Access::Ram { frame, value } => {
            let Some(b) = active else {
                return Err(format!(
                    "I1: RAM at {gpa:#x} while the BAR is not decoded (stale mapping)"
                ));
            };
            let cur = sut.sim.registered_frame(&g.ident, (gpa - b) & !0xfff);
            if cur.map(|c| c.0) != Some(frame) {
                return Err(format!(
                    "I1: guest read frame {frame} (value {value:#x}) at {gpa:#x}, registered now: {cur:?} (stale page)"
                ));
            }
        }
        Access::Emulated { value } | Access::Unbacked { value } | Access::NoDevice { value } => {
            if value != ones {
                return Err(format!(
                    "access at {gpa:#x} returned {value:#x}, expected all-ones {ones:#x}"
                ));
            }
        }
        Access::Blocked | Access::Gone | Access::Crashed => {}
    }
    if d.dying || sut.is_dying(slot) {
        return Ok(());
    }
    // Exact predictions where nothing nondeterministic happened.
    let expect = match (active, d.server) {
        (None, _) => Some("nodevice"),
        (Some(_), ServerState::Killed) => None, // Blocked, or RAM if lent before
        (Some(_), ServerState::Gone) => None,
        (Some(_), ServerState::Running)
            if degraded || faulty || near_limit || model.faults_armed =>
        {
            None
        }
        (Some(_), ServerState::Running) => {
            let p = page.unwrap_or(BAR_PAGES);
            Some(if d.registered(p) { "ram" } else { "emulated" })
        }
    };
    let got = match r.access {
        Access::Ram { .. } => "ram",
        Access::Emulated { .. } => "emulated",
        Access::NoDevice { .. } => "nodevice",
        Access::Unbacked { .. } => "unbacked",
        Access::Blocked => "blocked",
        Access::Gone => "gone",
        Access::Crashed => "crashed",
    };
    if got == "crashed" {
        return Err("the domain was crashed by a bad ioreq answer".into());
    }
    if got == "blocked" && d.server == ServerState::Running {
        return Err(format!(
            "access at {gpa:#x} left the vCPU waiting on a running server"
        ));
    }
    if d.server == ServerState::Killed
        && active.is_some()
        && !degraded
        && !faulty
        && !matches!(got, "ram" | "blocked")
    {
        return Err(format!("killed server: access at {gpa:#x} gave {got}"));
    }
    if let Some(e) = expect {
        TALLY.with(|t| *t.borrow_mut().entry(format!("expect/{e}")).or_default() += 1);
    }
    match expect {
        Some(e) if e != got => Err(format!(
            "access at {gpa:#x}: expected {e}, got {got} ({r:?})"
        )),
        _ => Ok(()),
    }
}

/// Invariants over the whole state, after every transition.
fn check_invariants(model: &Reference, sut: &Sut, max_lent: u64) -> Result<(), String> {
    sut.sim.check_consistency()?;
    let bad = sut.sim.with_world(|w| {
        w.applied
            .iter()
            .find(|a| a.asked.uid != a.target_uid)
            .cloned()
    });
    if let Some(a) = bad {
        return Err(format!(
            "I5: {} asked for {} but changed uid {:02x?}",
            a.op, a.asked, a.target_uid
        ));
    }
    for (slot, g) in &sut.guests {
        let Some(d) = model.slots.get(slot) else {
            return Err(format!("slot {slot}: SUT has a guest the model does not"));
        };
        let p2m = sut.sim.p2m(&g.ident);
        if p2m.len() as u64 > max_lent {
            return Err(format!(
                "I4: {} pages lent to {}, limit {max_lent}",
                p2m.len(),
                g.ident
            ));
        }
        if p2m.is_empty() {
            continue;
        }
        let Some(base) = d.active_bar() else {
            return Err(format!(
                "I1: {} pages lent to {} while its BAR is not decoded",
                p2m.len(),
                g.ident
            ));
        };
        for (gfn, frame) in p2m {
            let gpa = gfn * 4096;
            if gpa < base || gpa >= base + BAR_PAGES * 4096 {
                return Err(format!(
                    "I1: gfn {gfn:#x} lent outside the BAR at {base:#x} (stale after move)"
                ));
            }
            let cur = sut.sim.registered_frame(&g.ident, gpa - base).map(|c| c.0);
            if cur != Some(frame) {
                return Err(format!(
                    "I1: gfn {gfn:#x} maps frame {frame}, registered there now: {cur:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Check an instruction against the backend's bytes.
/// A `rep movs` from BAR offsets nobody registered into guest RAM (one
/// `data_is_ptr` read per page of RAM): the server fills the buffer with
/// ones itself and answers READY, so every request makes one round trip
/// (no RETRY, no resend, nothing Xen completes as unbacked), and the
/// buffer holds ones over exactly `count * size` bytes from `dst` up, or
/// down with DF (`verify` then checks the bytes either side).
fn check_unbacked_copy(sut: &Sut, g: &Guest, e: &sut::ExecObs) -> Result<(), String> {
    let Insn::RepMovs {
        dst,
        src,
        size,
        count,
        df,
    } = e.insn
    else {
        return Ok(());
    };
    let (dlo, len) = gpu_hostmem_sim::span(dst, size, count, df);
    let (slo, _) = gpu_hostmem_sim::span(src, size, count, df);
    let inside = |lo: u64| lo >= e.bar.start && lo.saturating_add(len) <= e.bar.end;
    let touches = |lo: u64| lo < e.bar.end && e.bar.start < lo.saturating_add(len);
    if len == 0 || !inside(slo) || touches(dlo) {
        return Ok(());
    }
    let unregistered = sut
        .sim
        .backend_bytes(&g.ident, slo - e.bar.start, len)
        .iter()
        .all(Option::is_none);
    if !unregistered {
        return Ok(());
    }
    TALLY.with(|t| *t.borrow_mut().entry("unbacked copy".into()).or_default() += 1);
    let r = &e.report;
    if r.stopped.is_some() || r.retries > 0 || r.unbacked > 0 || r.emulated != r.requests {
        return Err(format!(
            "{:?}: a copy from unregistered offsets took RETRY or Xen's unbacked completion: {r:?}",
            e.insn
        ));
    }
    // No RAM there: nothing to fill (Xen went element by element).
    let Some(got) = sut.sim.mem_read(&g.ident, dlo, len as usize) else {
        return Ok(());
    };
    if got.iter().any(|b| *b != 0xff) {
        return Err(format!(
            "{:?}: guest buffer {dlo:#x}+{len:#x} is not all ones: {got:02x?}",
            e.insn
        ));
    }
    Ok(())
}

fn check_exec(model: &Reference, sut: &Sut, op: &Op, e: &sut::ExecObs) -> Result<(), String> {
    let Some(slot) = op_slot(op) else {
        return Ok(());
    };
    let (Some(d), Some(g)) = (model.slots.get(&slot), sut.guests.get(&slot)) else {
        return Ok(());
    };
    let r = &e.report;
    if r.unbacked > 0 {
        TALLY.with(|t| *t.borrow_mut().entry("unbacked".into()).or_default() += 1);
    }
    match r.stopped {
        Some(Access::Gone) => {
            TALLY.with(|t| *t.borrow_mut().entry("gone".into()).or_default() += 1)
        }
        Some(Access::Blocked) => {
            TALLY.with(|t| *t.borrow_mut().entry("blocked".into()).or_default() += 1)
        }
        _ => {}
    }
    if r.stopped == Some(Access::Crashed) {
        return Err(format!("{:?}: the domain was crashed", e.insn));
    }
    let distinct = r.requests - r.resends;
    if r.retries > MAX_RETRIES * distinct {
        return Err(format!(
            "I3: {} RETRY answers for {distinct} requests ({r:?})",
            r.retries
        ));
    }
    let degraded = sut.degraded.get(&slot).copied().unwrap_or(false);
    let exact = d.serving()
        && !sut.is_dying(slot)
        && d.active_bar() == Some(e.bar.start)
        && !degraded
        && !model.faults_armed
        && !e.mixed;
    if exact {
        TALLY.with(|t| *t.borrow_mut().entry("exact".into()).or_default() += 1);
        check_unbacked_copy(sut, g, e)?;
        if r.faulted() && r.requests > 0 && r.unbacked == 0 && r.from_memory > 0 {
            TALLY.with(|t| *t.borrow_mut().entry("exact/retry".into()).or_default() += 1);
        }
        return gpu_hostmem_sim::harness::verify(&sut.sim, &g.ident, &e.bar, &e.want, r)
            .map_err(|m| format!("I3: {:?}: {m}", e.insn));
    }
    if r.stopped.is_some() {
        return Ok(());
    }
    // Not exact, but nothing made up: a string request Xen completes as
    // unbacked fills a RAM buffer with ones.
    if let Some(want) = &e.want.load {
        for (k, w) in want.iter().enumerate() {
            let got = r.data.get(k).copied();
            if got != Some(*w) && got != Some(0xff) {
                return Err(format!(
                    "{:?}: load byte {k} is {got:02x?}: neither the backend's {w:02x} nor ones",
                    e.insn
                ));
            }
        }
    }
    for (&(a, w), b) in e.want.after.iter().zip(&e.before) {
        let got = gpu_hostmem_sim::harness::byte_at(&sut.sim, &g.ident, &e.bar, a);
        // Ones where the bytes came from the BAR (a copy from it that Xen
        // completed as unbacked), or into RAM.
        let from_bar = matches!(e.insn, Insn::RepMovs { src, .. } if e.bar.contains(&src));
        let ones_ok = got == Some(0xff) && (!e.bar.contains(&a) || from_bar);
        if got != Some(w) && got != *b && got.is_some() && !ones_ok {
            return Err(format!(
                "{:?}: byte at {a:#x} is {got:02x?}: neither stored {w:02x} nor the old {b:02x?}",
                e.insn
            ));
        }
    }
    Ok(())
}

fn run(ops: &[Op], max_lent: u64, opts: SimOptions) -> Result<(), TestCaseError> {
    let mut model = Reference::default();
    let mut sut = Sut::new(max_lent, opts);
    for (i, op) in ops.iter().enumerate() {
        model.faults_armed = sut.faults_armed();
        let obs = sut.apply(op, gpa_base(&model, op));
        if let Some(v) = obs.violations.first() {
            return Err(TestCaseError::fail(format!("step {i} {op:?}: {v}")));
        }
        if let Some((_, r)) = &obs.access {
            tally(r);
        }
        if let Some(e) = &obs.exec {
            check_exec(&model, &sut, op, e)
                .map_err(|m| TestCaseError::fail(format!("step {i} {op:?}: {m}")))?;
        }
        if let Some((gpa, r)) = &obs.access {
            let near_limit = obs.lent_before + (sut::FAULT_AROUND >> 12) > max_lent;
            check_access(&model, &sut, op, *gpa, r, near_limit)
                .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
        }
        // Nondeterministic outcomes of faults, as the SUT saw them: a
        // domain that died or was crashed during this step took no part of
        // it after that point, so it is marked before the model applies it.
        for (slot, d) in model.slots.iter_mut() {
            if sut.is_dying(*slot) {
                d.dying = true;
            }
        }
        model.apply(op, obs.created);
        if sut
            .guests
            .values()
            .any(|g| sut.sim.crash_reason(&g.ident).is_some())
        {
            TALLY.with(|t| *t.borrow_mut().entry("guest-crashed".into()).or_default() += 1);
        }
        for (slot, d) in model.slots.iter_mut() {
            if let Some(g) = sut.guests.get(slot) {
                if g.server.is_none() && d.server == ServerState::Running {
                    d.server = ServerState::Gone;
                }
            }
        }
        check_invariants(&model, &sut, max_lent)
            .map_err(|e| TestCaseError::fail(format!("after step {i} {op:?}: {e}")))?;
    }
    if let Some(v) = sut.finish().first() {
        return Err(TestCaseError::fail(format!("at the end: {v}")));
    }
    Ok(())
}

thread_local! {
    static TALLY: std::cell::RefCell<std::collections::BTreeMap<String, u64>> = Default::default();
}

/// Count access outcomes by kind (and RETRY count for BAR accesses).
fn tally(r: &gpu_hostmem_sim::AccessReport) {
    let k = match r.access {
        Access::Ram { .. } => format!("ram/{}", r.retries.min(2)),
        Access::Emulated { .. } => "emulated".to_string(),
        Access::Unbacked { .. } => "unbacked".into(),
        Access::NoDevice { .. } => "nodevice".into(),
        Access::Blocked => "blocked".into(),
        Access::Gone => "gone".into(),
        Access::Crashed => "crashed".into(),
    };
    TALLY.with(|t| *t.borrow_mut().entry(k).or_default() += 1);
}

/// The strategies must reach every kind of outcome, or the properties
/// above could pass vacuously.
#[test]
fn strategies_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strat = proptest::collection::vec(op(), 40..80);
    for _ in 0..300 {
        let ops = strat
            .new_tree(&mut runner)
            .map(|t| t.current())
            .unwrap_or_default();
        let _ = run(&ops, 1 << 20, SimOptions::default());
    }
    let seen = TALLY.with(|t| t.borrow().clone());
    eprintln!("outcomes: {seen:?}");
    for k in [
        "ram/0",
        "ram/1",
        "emulated",
        "nodevice",
        "blocked",
        "unbacked",
        "gone",
        "exact",
        "exact/retry",
        "unbacked copy",
        "guest-crashed",
    ] {
        assert!(
            seen.get(k).copied().unwrap_or(0) > 0,
            "no {k} access in {seen:?}"
        );
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(Config { cases: cases(), max_shrink_iters: 2000, ..Config::default() })]

    /// I1-I5 with no limit pressure: exact predictions where no fault ran.
    #[test]
    fn invariants_hold_over_random_lifecycles(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops, 1 << 20, SimOptions::default())?;
    }

    /// The same with a small lent-page limit (I4) and many faults.
    #[test]
    fn invariants_hold_under_lent_page_limit(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops, 40, SimOptions::default())?;
    }
}

/// Cases proptest found, kept as plain tests so they run whatever the seed.
mod found {
    use super::*;
    use strategies::FaultKind::{DomainDiesDuringLend, LendBusy};
    use strategies::Op::*;

    /// The backend unregisters and registers again: the server's cached
    /// registrations are stale, and a read of a page no longer registered
    /// must be answered at once (emulated), not with a RETRY that Xen can
    /// only complete as unbacked. Found by CI on 2026-11-26.
    #[test]
    fn stale_registration_read_is_emulated_at_once() {
        let ops = [
            Create { slot: 1, vcpus: 1 },
            Register {
                slot: 1,
                id: 0,
                page: 0,
                nr: 41,
            },
            FaultyRead {
                fault: LendBusy(1),
                slot: 1,
                vcpu: 0,
                page: 41,
            },
            Unregister { slot: 1, id: 0 },
            Register {
                slot: 1,
                id: 0,
                page: 40,
                nr: 1,
            },
            Read {
                slot: 1,
                vcpu: 0,
                page: 32,
                size: 1,
            },
        ];
        run(&ops, 40, SimOptions::default()).expect("invariants");
    }

    /// The same seed after that fix: lent pages must stay within the
    /// limit when the domain starts dying in the middle of a lend.
    #[test]
    fn limit_holds_when_the_domain_dies_mid_lend() {
        let ops = [
            Create { slot: 1, vcpus: 1 },
            Register {
                slot: 1,
                id: 0,
                page: 0,
                nr: 44,
            },
            FaultyRead {
                fault: LendBusy(1),
                slot: 1,
                vcpu: 0,
                page: 16,
            },
            Unregister { slot: 1, id: 0 },
            Register {
                slot: 1,
                id: 0,
                page: 38,
                nr: 25,
            },
            Read {
                slot: 1,
                vcpu: 0,
                page: 32,
                size: 1,
            },
            Register {
                slot: 1,
                id: 1,
                page: 3,
                nr: 34,
            },
            Read {
                slot: 1,
                vcpu: 0,
                page: 16,
                size: 1,
            },
            FaultyRead {
                fault: DomainDiesDuringLend(5),
                slot: 1,
                vcpu: 0,
                page: 32,
            },
            Write {
                slot: 1,
                vcpu: 0,
                page: 48,
            },
        ];
        run(&ops, 40, SimOptions::default()).expect("invariants");
    }

    /// BAR to BAR from unregistered offsets into a registered page whose
    /// last element straddles into a page not lent yet: Xen cannot take
    /// the RAM side's second page, so that element goes as a plain load
    /// and store. The simulator sent it as a string request and crashed
    /// the domain (found by the model test after the RETRY contract
    /// change).
    #[test]
    fn bar_to_bar_element_straddling_an_unlent_page() {
        let ops = [
            Create { slot: 0, vcpus: 1 },
            Register {
                slot: 0,
                id: 0,
                page: 11,
                nr: 21,
            },
            Exec {
                slot: 0,
                vcpu: 0,
                form: strategies::Form::BarToBar {
                    dst_page: 15,
                    src_page: 32,
                    off: 3665,
                    size: 2,
                    len: 432,
                    df: false,
                },
            },
        ];
        run(&ops, 1 << 20, SimOptions::default()).expect("invariants");
    }

    /// A copy from an unlent BAR page into a lent one (a `data_is_ptr`
    /// request whose guest memory is the lent page) at the lent-page
    /// limit: the server made room by revoking the very page Xen was to
    /// copy into, and the domain crashed. Found by the model test.
    #[test]
    fn room_is_never_made_from_the_pages_a_copy_uses() {
        let ops = [
            Create { slot: 1, vcpus: 1 },
            Register {
                slot: 1,
                id: 0,
                page: 0,
                nr: 64,
            },
            Read {
                slot: 1,
                vcpu: 0,
                page: 16,
                size: 1,
            },
            Read {
                slot: 1,
                vcpu: 0,
                page: 32,
                size: 1,
            },
            Exec {
                slot: 1,
                vcpu: 0,
                form: strategies::Form::BarToBar {
                    dst_page: 16,
                    src_page: 48,
                    off: 0,
                    size: 1,
                    len: 1,
                    df: false,
                },
            },
        ];
        run(&ops, 40, SimOptions::default()).expect("invariants");
    }

    /// A copy from a lent BAR page into an element straddling two chunks,
    /// the second lent already, at the lent-page limit: every run touched
    /// one of the pages to keep, so the server found nothing to revoke and
    /// the vCPU waited for ever. Found by the model test; the server now
    /// revokes the parts of runs outside those pages.
    #[test]
    fn room_is_made_from_parts_of_runs() {
        let ops = [
            Create { slot: 1, vcpus: 1 },
            Register {
                slot: 1,
                id: 0,
                page: 2,
                nr: 70,
            },
            Exec {
                slot: 1,
                vcpu: 0,
                form: strategies::Form::BarToBar {
                    dst_page: 63,
                    src_page: 16,
                    off: 4081,
                    size: 2,
                    len: 18,
                    df: true,
                },
            },
        ];
        run(&ops, 40, SimOptions::default()).expect("invariants");
    }
}

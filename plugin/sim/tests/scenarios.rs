//! Deterministic scenarios on the simulator: one behaviour per test.

use gpu_hostmem_core::ioreq::STATE_IORESP_READY;
use gpu_hostmem_core::limits::Limits;
use gpu_hostmem_core::platform::Errno;
use gpu_hostmem_core::server::{ServerError, Stage, LEND_ERROR_ATTEMPTS};
use gpu_hostmem_sim::harness::{predict, test_config, verify, Guest};
use gpu_hostmem_sim::{Access, Fault, Insn, RetryRule, Sim, SimOptions};

const MIB: u64 = 1 << 20;
const BASE: u64 = 0x1_0000_0000;

fn setup() -> (Sim, Guest) {
    let sim = Sim::new(SimOptions::default());
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let mut g = Guest::create(&sim, 3, 2, cfg).expect("create");
    g.program_bar(&sim, BASE);
    (sim, g)
}

/// Every lend attempt the server may make for one request fails with
/// `errno` (armed once per attempt, none lends a page).
fn fail_every_lend(sim: &Sim, errno: Errno) {
    for _ in 0..LEND_ERROR_ATTEMPTS {
        sim.arm(Fault::LendPartial { after: 0, errno });
    }
}

fn content(sim: &Sim, g: &Guest, off: u64) -> u64 {
    sim.registered_frame(&g.ident, off).expect("registered").1
}

fn backend_u64(sim: &Sim, g: &Guest, off: u64) -> u64 {
    let b: Vec<u8> = sim
        .backend_bytes(&g.ident, off, 8)
        .into_iter()
        .map(|b| b.expect("registered"))
        .collect();
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

#[test]
fn first_touch_lends_chunk_and_retry_reaches_ram() {
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 256, 100).expect("register");
    let r = g.read(&sim, 0, BASE + 0x1_2345, 8);
    assert_eq!(r.retries, 1);
    assert_eq!(r.access.value(), Some(backend_u64(&sim, &g, 0x1_2345)));
    assert!(matches!(r.access, Access::Ram { .. }));
    assert_eq!(sim.lent_pages(&g.ident), 16, "64 KiB fault-around");
    let r = g.read(&sim, 1, BASE + 0x1_3000, 4);
    assert_eq!(r.retries, 0, "neighbour page already lent");
    sim.check_consistency().expect("consistent");
}

#[test]
fn unregistered_offset_reads_all_ones_and_drops_writes() {
    let (sim, mut g) = setup();
    let r = g.read(&sim, 0, BASE + 0x5000, 4);
    assert_eq!(r.access, Access::Emulated { value: 0xffff_ffff });
    let r = g.write(&sim, 0, BASE + 0x5000, 4, 7);
    assert_eq!(r.access, Access::Emulated { value: 0 });
    assert_eq!(sim.lent_pages(&g.ident), 0);
    let c = g.server.as_ref().expect("server").counters();
    assert_eq!((c.unbacked_reads, c.unbacked_writes), (1, 1));
}

#[test]
fn config_space_reads_ids_and_sizes_bar() {
    let (sim, mut g) = setup();
    assert_eq!(
        g.config(&sim, 0, 4, None),
        Access::Emulated { value: 0x10f0_1af4 }
    );
    g.config(&sim, 0x10, 4, Some(0xffff_ffff));
    g.config(&sim, 0x14, 4, Some(0xffff_ffff));
    let lo = g.config(&sim, 0x10, 4, None).value().expect("lo");
    let hi = g.config(&sim, 0x14, 4, None).value().expect("hi");
    assert_eq!(!((hi << 32) | (lo & !0xf)) + 1, 64 * MIB);
    let other = gpu_hostmem_core::ioreq::Sbdf {
        seg: 0,
        bus: 0,
        dev: 6,
        func: 0,
    };
    let ident = g.ident;
    let at = gpu_hostmem_core::ioreq::PciConfigAddress {
        sbdf: other,
        reg: 0,
    };
    let a = sim.pci_config(&ident, 0, at, 4, None, &mut || {});
    assert_eq!(a, Access::NoDevice { value: 0xffff_ffff });
}

#[test]
fn bar_move_revokes_old_range_and_remaps() {
    // The new lower dword has every writable bit of a 64 MiB BAR set, as a
    // size probe would: it is an address all the same.
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 32, 100).expect("register");
    g.read(&sim, 0, BASE, 8);
    assert_eq!(sim.lent_pages(&g.ident), 16);
    let new = 0x2_fc00_0000u64;
    g.config(&sim, 0x10, 4, Some(new as u32));
    assert_eq!(
        sim.lent_pages(&g.ident),
        0,
        "the lower dword moves the BAR: the old range is revoked at once"
    );
    g.config(&sim, 0x14, 4, Some((new >> 32) as u32));
    let r = g.read(&sim, 0, BASE, 8);
    assert!(matches!(r.access, Access::NoDevice { .. }), "{r:?}");
    let r = g.read(&sim, 0, 0x1_fc00_0000 + 0x1000, 8);
    assert!(matches!(r.access, Access::NoDevice { .. }), "{r:?}");
    let r = g.read(&sim, 0, new + 0x1000, 8);
    assert_eq!(r.access.value(), Some(content(&sim, &g, 0x1000)));
    assert!(sim.p2m(&g.ident).iter().all(|(gfn, _)| gfn << 12 >= new));
    sim.check_consistency().expect("consistent");
}

#[test]
fn invalidation_revokes_and_refault_sees_new_page() {
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 16, 100).expect("register");
    let old = g.read(&sim, 0, BASE, 8).access.value();
    sim.migrate_page(&g.ident, 1, 0).expect("migrate");
    sim.check_consistency().expect("consistent");
    let r = g.read(&sim, 0, BASE, 8);
    assert_eq!(r.retries, 1);
    assert_ne!(r.access.value(), old);
    assert_eq!(r.access.value(), Some(content(&sim, &g, 0)));
    sim.unregister(&g.ident, 1).expect("unregister");
    assert_eq!(sim.lent_pages(&g.ident), 0);
    let r = g.read(&sim, 0, BASE, 8);
    assert_eq!(r.access, Access::Emulated { value: u64::MAX });
    sim.check_consistency().expect("consistent");
}

#[test]
fn killed_server_then_destroy_hook_leaves_nothing_lent() {
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 64, 100).expect("register");
    g.read(&sim, 0, BASE, 8);
    g.kill_server();
    assert_eq!(g.read(&sim, 0, BASE + 0x20_0000, 8).access, Access::Blocked);
    assert!(sim.lent_pages(&g.ident) > 0);
    assert!(g.destroy_hook(&sim).is_clean());
    assert_eq!(sim.lent_pages(&g.ident), 0);
    assert_eq!(
        sim.destroy_domain(&g.ident),
        Ok(0),
        "Xen had nothing left to drop"
    );
    assert!(
        g.destroy_hook(&sim).is_clean(),
        "idempotent on a gone domain"
    );
    sim.check_consistency().expect("consistent");
}

#[test]
fn teardown_of_old_identity_leaves_reused_domid_alone() {
    let (sim, mut old) = setup();
    old.kill_server();
    let _ = sim.destroy_domain(&old.ident);
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let mut new = Guest::create(&sim, 3, 1, cfg).expect("reuse domid 3");
    assert_ne!(new.ident, old.ident);
    new.program_bar(&sim, BASE);
    sim.register(&new.ident, 9, 0, 16, 200).expect("register");
    new.read(&sim, 0, BASE, 8);
    let before = sim.p2m(&new.ident);
    assert!(old.destroy_hook(&sim).is_clean());
    assert_eq!(sim.p2m(&new.ident), before);
    assert!(sim.with_world(|w| w.applied.iter().all(|a| a.asked.uid == a.target_uid)));
}

#[test]
fn setup_failure_unwinds_every_stage_done() {
    for (fault, stage) in [
        (Fault::CreateServer(Errno::EINVAL), Stage::CreateServer),
        (Fault::OpenChannel(Errno::ENOMEM), Stage::OpenChannel),
        (Fault::MapPciDev(Errno::EEXIST), Stage::MapPciDev),
        (Fault::Enable(Errno::EIO), Stage::Enable),
    ] {
        let sim = Sim::new(SimOptions::default());
        sim.arm(fault);
        let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
        match Guest::create(&sim, 1, 1, cfg) {
            Err(ServerError::Setup { stage: s, .. }) => assert_eq!(s, stage),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("setup should fail at {stage:?}"),
        }
        let servers = sim.with_world(|w| w.domains[&1].servers.len());
        assert_eq!(servers, 0, "stage {stage:?} left a server behind");
    }
}

#[test]
fn busy_lend_is_retried_then_deferred_until_it_succeeds() {
    // EBUSY (an invalidation running) a few times is retried at once;
    // longer, the request waits and is answered when the lend succeeds.
    // Before the server deferred, the second read got all ones.
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 16, 100).expect("register");
    sim.arm(Fault::LendBusy(2));
    assert!(matches!(
        g.read(&sim, 0, BASE, 8).access,
        Access::Ram { .. }
    ));
    sim.arm(Fault::LendBusy(10));
    sim.migrate_page(&g.ident, 1, 0).expect("migrate");
    let r = g.read(&sim, 0, BASE, 8);
    assert!(matches!(r.access, Access::Ram { .. }), "{r:?}");
    assert_eq!(r.access.value(), Some(content(&sim, &g, 0)));
    let c = g.server.as_ref().expect("server").counters();
    assert_eq!((c.deferred, c.unbacked_reads), (1, 0));
}

#[test]
fn lend_error_leaves_the_request_pending_then_serves_it_from_memory() {
    // A lend that fails mid-batch with an errno that is not one of the
    // transient ones (EIO, ENOMEM when Xen's paging memory for the guest
    // is used up): nothing stays half lent, the failure is counted, the
    // request waits (never all ones for registered memory), and the next
    // attempt lends the page and the read gets the backend's bytes.
    // Before, the read got all ones at once.
    for (after, errno) in [(5, Errno::EIO), (3, Errno::ENOMEM)] {
        let (sim, mut g) = setup();
        sim.register(&g.ident, 1, 0, 16, 100).expect("register");
        sim.arm(Fault::LendPartial { after, errno });
        let r = g.read(&sim, 0, BASE, 8);
        assert!(matches!(r.access, Access::Ram { .. }), "{errno:?}: {r:?}");
        assert_eq!(r.access.value(), Some(content(&sim, &g, 0)), "{errno:?}");
        let server = g.server.as_mut().expect("server");
        let c = server.status(false).counters;
        assert_eq!(
            (c.lend_errors, c.unbacked_reads, c.deferred),
            (1, 0, 1),
            "{errno:?}"
        );
        assert_eq!(server.pending(), 0);
        assert_eq!(sim.crash_reason(&g.ident), None);
        sim.check_consistency().expect("consistent");
    }
}

#[test]
fn efault_from_the_owner_is_unbacked_not_a_wait_nor_a_crash() {
    // privcmd answers EFAULT when the owner maps nothing at the registered
    // range any more (unmapped without unregistering, or its memory torn
    // down by the OOM reaper before it exits; 77 on real Xen): there are
    // no bytes to give and waiting brings none back. The access completes
    // as unbacked at once and the guest runs on.
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 16, 100).expect("register");
    fail_every_lend(&sim, Errno::EFAULT);
    let r = g.read(&sim, 0, BASE + 0x3008, 8);
    assert_eq!(r.access.value(), Some(u64::MAX), "{r:?}");
    assert_eq!(sim.crash_reason(&g.ident), None, "not crashed");
    let c = *g.server.as_ref().expect("server").counters();
    assert_eq!((c.lend_errors, c.deferred), (1, 0));
    assert_eq!(sim.lent_pages(&g.ident), 0);
    sim.check_consistency().expect("consistent");
}

#[test]
fn lend_error_then_unregistration_answers_unbacked_not_a_crash() {
    // The owner's cgroup refuses the pages (ENOMEM) until the OOM killer
    // ends it and its registration goes (77 on real Xen): the pending
    // request must then complete as unbacked, the offset being nobody's,
    // and the guest must not be crashed.
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 16, 100).expect("register");
    // Every lend fails, before and after the unregistration: only the
    // kernel's list of registrations tells the server the offset is free.
    fail_every_lend(&sim, Errno::ENOMEM);
    let ident = g.ident;
    let mut server = g.server.take().expect("server");
    let mut drains = 0;
    let mut run = || {
        drains += 1;
        if drains == 3 {
            sim.unregister(&ident, 1).expect("the owner goes");
        }
        server.drain(std::time::Instant::now()).expect("drain");
    };
    let r = sim.guest_access(&ident, 0, BASE + 0x3008, 8, None, &mut run);
    assert_eq!(r.access.value(), Some(u64::MAX), "{r:?}");
    assert_eq!(sim.crash_reason(&ident), None, "not crashed");
    assert_eq!(sim.lent_pages(&ident), 0);
    g.server = Some(server);
    sim.check_consistency().expect("consistent");
}

#[test]
fn persistent_lend_error_completes_the_request_and_crashes_the_guest() {
    // The same error at every attempt: after LEND_ERROR_ATTEMPTS the
    // server gives up on the request, completes it (the vCPU does not
    // wait for ever) and crashes the guest with a reason naming the errno
    // and the BAR offset. Registered memory never reads as all ones.
    for errno in [Errno::EIO, Errno::ENOMEM] {
        let (sim, mut g) = setup();
        let id = g.servid.expect("server id");
        sim.register(&g.ident, 1, 0, 16, 100).expect("register");
        fail_every_lend(&sim, errno);
        let r = g.read(&sim, 0, BASE + 0x3008, 8);
        assert_eq!(r.access, Access::Gone, "{errno:?}: {r:?}");
        assert_eq!(
            sim.slot_state(&g.ident, id, 0),
            Some(STATE_IORESP_READY),
            "completed: the vCPU does not wait for ever"
        );
        let why = sim.crash_reason(&g.ident).expect("the guest was crashed");
        assert!(
            why.contains(errno.name()) && why.contains("0x3000"),
            "reason: {why}"
        );
        assert_eq!(sim.lent_pages(&g.ident), 0, "nothing half lent");
        let c = *g.server.as_ref().expect("server").counters();
        assert_eq!(
            (c.lend_errors, c.unbacked_reads),
            (u64::from(LEND_ERROR_ATTEMPTS), 0),
            "{errno:?}"
        );
    }
}

#[test]
fn domain_dying_mid_lend_stops_server_and_destroy_is_total() {
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 16, 100).expect("register");
    sim.arm(Fault::DomainDiesDuringLend { after: 3 });
    let r = g.read(&sim, 0, BASE, 8);
    assert_eq!(r.access, Access::Gone);
    assert!(matches!(
        g.last_flow,
        Some(Ok(gpu_hostmem_core::server::Flow::DomainGone))
    ));
    assert!(g.destroy_hook(&sim).is_clean());
    // The domain is dying: only Xen's teardown can drop the 3 entries.
    assert_eq!(sim.destroy_domain(&g.ident), Ok(3));
    sim.check_consistency().expect("consistent");
}

#[test]
fn racing_revokes_are_resent_then_bounded_by_xen() {
    // An invalidation revokes the page between the server's lend and
    // Xen's check: Xen sends the same request again, and the server lends
    // again. Three races: the read still gets the backend's bytes. More
    // than Xen's 8 resends: Xen completes it as unbacked and counts it.
    let sim = Sim::new(SimOptions::default());
    let mut g =
        Guest::create(&sim, 1, 1, test_config(64 * MIB, 4096, Limits::default())).expect("create");
    g.program_bar(&sim, BASE);
    sim.register(&g.ident, 1, 0, 16, 100).expect("register");
    sim.arm(Fault::RevokeBeforeRetryCheck(3));
    let r = g.read(&sim, 0, BASE, 8);
    assert_eq!(r.retries, 4, "{r:?}");
    assert_eq!(r.access.value(), Some(content(&sim, &g, 0)));
    sim.disarm_all();
    sim.arm(Fault::RevokeBeforeRetryCheck(100));
    let r = g.read(&sim, 0, BASE + 0x1000, 8);
    assert_eq!(r.retries, 9, "one request and Xen's 8 resends: {r:?}");
    assert_eq!(r.access, Access::Unbacked { value: u64::MAX });
    assert_eq!(sim.xen_unbacked(&g.ident), 1);
    sim.check_consistency().expect("consistent");
}

#[test]
fn lent_page_limit_revokes_older_runs_and_reads_stay_exact() {
    // Past the limit, the server revokes runs lent earlier to make room
    // (the guest faults on them again) instead of answering all ones, as
    // it did before.
    let sim = Sim::new(SimOptions::default());
    let limits = Limits {
        max_lent_pages: 20,
        ..Limits::default()
    };
    let mut g =
        Guest::create(&sim, 1, 1, test_config(64 * MIB, 64 * 1024, limits)).expect("create");
    g.program_bar(&sim, BASE);
    sim.register(&g.ident, 1, 0, 64, 100).expect("register");
    for round in 0..2 {
        for p in 0..64 {
            let r = g.read(&sim, 0, BASE + p * 4096 + 8, 8);
            assert_eq!(
                r.access.value(),
                Some(backend_u64(&sim, &g, p * 4096 + 8)),
                "round {round} page {p}: {r:?}"
            );
            assert!(sim.lent_pages(&g.ident) <= 20);
        }
    }
    let c = g.server.as_ref().expect("server").counters();
    assert!(c.evicted_pages > 0, "{c:?}");
    assert_eq!(c.unbacked_reads, 0, "{c:?}");
    sim.check_consistency().expect("consistent");
}

#[test]
fn kernel_lent_page_limit_makes_room_too() {
    // ENOSPC from the kernel's own limit: the server revokes its older
    // runs and lends again. Before, the read got all ones.
    let sim = Sim::new(SimOptions {
        kernel_lent_limit: 20,
        ..SimOptions::default()
    });
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let mut g = Guest::create(&sim, 1, 1, cfg).expect("create");
    g.program_bar(&sim, BASE);
    sim.register(&g.ident, 1, 0, 64, 100).expect("register");
    for p in (0..64).step_by(16) {
        let r = g.read(&sim, 0, BASE + p * 4096, 8);
        assert_eq!(r.access.value(), Some(content(&sim, &g, p * 4096)), "{r:?}");
    }
    assert!(sim.lent_pages(&g.ident) <= 20);
    sim.check_consistency().expect("consistent");
}

#[test]
fn kernel_lent_page_limit_revokes_one_run_at_a_time() {
    // Limit 40 pages, chunks of 16: the third chunk needs one older run
    // revoked, not all of them.
    let sim = Sim::new(SimOptions {
        kernel_lent_limit: 40,
        ..SimOptions::default()
    });
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let mut g = Guest::create(&sim, 1, 1, cfg).expect("create");
    g.program_bar(&sim, BASE);
    sim.register(&g.ident, 1, 0, 64, 100).expect("register");
    for p in [0u64, 16, 32] {
        let r = g.read(&sim, 0, BASE + p * 4096, 8);
        assert_eq!(r.access.value(), Some(content(&sim, &g, p * 4096)), "{r:?}");
    }
    assert_eq!(sim.lent_pages(&g.ident), 32);
    let c = g.server.as_ref().expect("server").counters();
    assert_eq!(c.evicted_pages, 16, "{c:?}");
}

#[test]
fn limit_on_the_single_page_fallback_waits_too() {
    // The chunk's lend meets an occupied GFN (EEXIST), and the fallback
    // lend of the faulting page alone hits the limit (ENOSPC): the request
    // waits and is answered from memory. Before, that read got all ones.
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 16, 100).expect("register");
    sim.arm(Fault::LendPartial {
        after: 0,
        errno: Errno::EEXIST,
    });
    sim.arm(Fault::LendPartial {
        after: 0,
        errno: Errno::ENOSPC,
    });
    let r = g.read(&sim, 0, BASE + 0x3000, 8);
    assert_eq!(r.access.value(), Some(content(&sim, &g, 0x3000)), "{r:?}");
    let c = g.server.as_ref().expect("server").counters();
    assert_eq!((c.deferred, c.unbacked_reads), (1, 0), "{c:?}");
    sim.check_consistency().expect("consistent");
}

#[test]
fn rate_limit_delays_and_never_makes_up_data() {
    // A guest faulting faster than the rate: its requests wait (the slot
    // stays INPROCESS) and are answered from memory when the rate allows.
    // Before, the reads past the burst got all ones and the writes were
    // dropped.
    let sim = Sim::new(SimOptions::default());
    let limits = Limits {
        fault_rate: 10,
        fault_burst: 2,
        ..Limits::default()
    };
    let mut g = Guest::create(&sim, 1, 1, test_config(64 * MIB, 4096, limits)).expect("create");
    g.program_bar(&sim, BASE);
    sim.register(&g.ident, 1, 0, 16, 100).expect("register");
    let t0 = g.clock;
    for p in 0..6 {
        let r = g.read(&sim, 0, BASE + p * 4096, 8);
        assert_eq!(
            r.access.value(),
            Some(content(&sim, &g, p * 4096)),
            "page {p}: {r:?}"
        );
    }
    for p in 6..8 {
        g.write(&sim, 0, BASE + p * 4096, 8, 0x1122_3344_5566_7788);
        assert_eq!(backend_u64(&sim, &g, p * 4096), 0x1122_3344_5566_7788);
    }
    let c = g.server.as_ref().expect("server").counters();
    assert_eq!(c.deferred, 6, "{c:?}");
    assert_eq!((c.unbacked_reads, c.unbacked_writes), (0, 0));
    // 8 faults at 10 per second after a burst of 2: 600 ms at least.
    let waited = g.clock - t0;
    assert!(
        waited >= std::time::Duration::from_millis(600),
        "{waited:?}"
    );
    assert_eq!(g.server.as_ref().expect("server").pending(), 0);
}

const RAM: u64 = 0x10_0000;

/// A guest with RAM for string instructions and two registrations with a
/// hole between them: BAR pages 0..40 and 48..64 (fault-around 64 KiB).
fn setup_ram(opts: SimOptions) -> (Sim, Guest) {
    let sim = Sim::new(opts);
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let mut g = Guest::create(&sim, 3, 2, cfg).expect("create");
    g.program_bar(&sim, BASE);
    sim.register(&g.ident, 1, 0, 40, 100).expect("register");
    sim.register(&g.ident, 2, 48 * 4096, 16, 100)
        .expect("register");
    sim.add_guest_ram(&g.ident, RAM, 16);
    let junk: Vec<u8> = (0..16 * 4096).map(|i| (i % 251) as u8 ^ 0x5a).collect();
    assert!(sim.mem_write(&g.ident, RAM, &junk));
    (sim, g)
}

/// Run `insn`, twice if asked (first touch, then with the pages lent),
/// checking every byte against the prediction each time.
fn exact(sim: &Sim, g: &mut Guest, insn: &Insn) -> Result<(), String> {
    let bar = BASE..BASE + 64 * MIB;
    let p = predict(sim, &g.ident, &bar, insn);
    let r = g.exec(sim, 0, insn);
    verify(sim, &g.ident, &bar, &p, &r).map_err(|e| format!("{insn:?}: {e}"))?;
    sim.check_consistency()?;
    Ok(())
}

/// Every plain load and store size at every interesting offset, including
/// across a page, a fault-around chunk, and a registration's end, on the
/// first touch and when lent.
#[test]
fn plain_loads_and_stores_are_exact_byte_for_byte() {
    for off in [
        0u64,
        0x10,
        0xffd,
        0x1_0000 - 3,
        0x1_fff9,
        40 * 4096 - 4,
        48 * 4096 - 2,
    ] {
        for size in [1u32, 2, 4, 8, 16] {
            let (sim, mut g) = setup_ram(SimOptions::default());
            for round in 0..2 {
                let load = Insn::Load {
                    gpa: BASE + off,
                    size,
                };
                exact(&sim, &mut g, &load).unwrap_or_else(|e| panic!("round {round}: {e}"));
                let data: Vec<u8> = (0..size as u8)
                    .map(|k| k.wrapping_mul(37) ^ round)
                    .collect();
                let store = Insn::Store {
                    gpa: BASE + off,
                    data,
                };
                exact(&sim, &mut g, &store).unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
    }
}

/// `rep stos` (one request, the value repeated) in both directions and
/// every element size, first touch and when lent, across a chunk.
#[test]
fn rep_stos_is_exact_in_both_directions() {
    for df in [false, true] {
        for size in [1u32, 2, 4, 8] {
            let (sim, mut g) = setup_ram(SimOptions::default());
            for round in 0..2u64 {
                let count = 3000 / u64::from(size);
                let first = if df { 0x1_0800 } else { 0xf800 };
                let insn = Insn::RepStos {
                    gpa: BASE + first,
                    size,
                    count,
                    df,
                    value: 0xa1b2_c3d4_e5f6_0718 ^ round,
                };
                exact(&sim, &mut g, &insn)
                    .unwrap_or_else(|e| panic!("df {df} size {size} round {round}: {e}"));
            }
        }
    }
}

/// `rep movs` between RAM and the BAR (`data_is_ptr` requests) in both
/// directions of copy and of DF, first touch and when lent, starting
/// inside a chunk and crossing into the next; and BAR to BAR across two
/// chunks. Against the old RETRY rule the BAR-to-RAM copy on first touch
/// left the guest buffer as it was (Xen took the RETRY as a completed
/// copy): see `old_retry_rule_fails_the_exactness_checks`.
#[test]
fn rep_movs_is_exact_in_every_direction() {
    for df in [false, true] {
        for size in [1u32, 2, 4, 8] {
            let (sim, mut g) = setup_ram(SimOptions::default());
            let count = 5000 / u64::from(size);
            let len = count * u64::from(size);
            let (bar_first, ram_first) = if df {
                (
                    BASE + 0xf000 + len - u64::from(size),
                    RAM + 0x123 + len - u64::from(size),
                )
            } else {
                (BASE + 0xf003, RAM + 0x123)
            };
            for round in 0..2 {
                // First an element straddling two fault-around chunks
                // (0x1fffb..0x20003), as the first touch of both: one
                // request touching two pages, both of which must be lent.
                let straddle = Insn::RepMovs {
                    dst: RAM + 0x9000,
                    src: BASE + 0x2_0000 - 5 + if df { u64::from(size) } else { 0 },
                    size,
                    count: 2,
                    df,
                };
                exact(&sim, &mut g, &straddle)
                    .unwrap_or_else(|e| panic!("straddle df {df} size {size} round {round}: {e}"));
                let to_ram = Insn::RepMovs {
                    dst: ram_first,
                    src: bar_first,
                    size,
                    count,
                    df,
                };
                exact(&sim, &mut g, &to_ram)
                    .unwrap_or_else(|e| panic!("BAR->RAM df {df} size {size} round {round}: {e}"));
                let to_bar = Insn::RepMovs {
                    dst: bar_first + 0x1_0000,
                    src: ram_first + 0x4000,
                    size,
                    count,
                    df,
                };
                exact(&sim, &mut g, &to_bar)
                    .unwrap_or_else(|e| panic!("RAM->BAR df {df} size {size} round {round}: {e}"));
                let bar_to_bar = Insn::RepMovs {
                    dst: bar_first + 0x1_8000,
                    src: bar_first + 0x2_1000,
                    size,
                    count: count.min(300),
                    df,
                };
                exact(&sim, &mut g, &bar_to_bar)
                    .unwrap_or_else(|e| panic!("BAR->BAR df {df} size {size} round {round}: {e}"));
            }
        }
    }
}

/// A string element straddling a registered and an unregistered page, at
/// both ends of the hole (registered below 40 pages, unregistered up to 48,
/// registered again above), in both directions of DF, first touch and when
/// lent: the registered bytes are the backend's, the others all ones
/// (writes there dropped). Xen declines such an element in its rep hooks
/// (xen-patches 0017) and splits it like a plain access; before, it went
/// as one request over both pages, which Xen could not complete from
/// memory and completed as unbacked, ones for the registered part too.
#[test]
fn rep_element_straddling_registered_and_unregistered_is_exact() {
    for at in [40 * 4096u64, 48 * 4096] {
        for df in [false, true] {
            for size in [2u32, 4, 8] {
                let (sim, mut g) = setup_ram(SimOptions::default());
                let s = u64::from(size);
                // The first element starts 1 byte below the boundary; with
                // DF the second goes down, without it up.
                let first = BASE + at - 1;
                for round in 0..2u64 {
                    let what = format!("at {at:#x} df {df} size {size} round {round}");
                    let from_bar = Insn::RepMovs {
                        dst: RAM + 0x2000,
                        src: first,
                        size,
                        count: 3,
                        df,
                    };
                    exact(&sim, &mut g, &from_bar).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let to_bar = Insn::RepMovs {
                        dst: first,
                        src: RAM + 0x3000,
                        size,
                        count: 3,
                        df,
                    };
                    exact(&sim, &mut g, &to_bar).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let stos = Insn::RepStos {
                        gpa: first - 2 * s * u64::from(!df),
                        size,
                        count: 3,
                        df,
                        value: 0x1122_3344_5566_7788 ^ round,
                    };
                    exact(&sim, &mut g, &stos).unwrap_or_else(|e| panic!("{what}: {e}"));
                }
            }
        }
    }
}

/// A copy from BAR offsets nobody registered: the guest buffer must end
/// up all ones. The server fills it itself and answers IORESP_READY, one
/// round trip per request, as a device model does; before, it answered
/// RETRY with nothing lent and Xen sent every request 9 times, then
/// filled the buffer and counted a refused answer, which the server
/// warned about as a bypass of its memory. A store there changes
/// nothing.
#[test]
fn rep_movs_from_unregistered_offsets_fills_ones() {
    for df in [false, true] {
        let (sim, mut g) = setup_ram(SimOptions::default());
        let first = if df { 41 * 4096 + 4000 } else { 41 * 4096 };
        let insn = Insn::RepMovs {
            dst: RAM + if df { 4000 } else { 0 },
            src: BASE + first,
            size: 1,
            count: 4001,
            df,
        };
        let bar = BASE..BASE + 64 * MIB;
        let p = predict(&sim, &g.ident, &bar, &insn);
        let r = g.exec(&sim, 0, &insn);
        verify(&sim, &g.ident, &bar, &p, &r).unwrap_or_else(|e| panic!("df {df}: {e}"));
        // Without DF one request of 4001; with it 4000 on the page of the
        // first element, then one on the page below.
        let want = if df { 2 } else { 1 };
        assert_eq!(
            (r.requests, r.emulated, r.retries, r.unbacked, r.from_memory),
            (want, want, 0, 0, 0),
            "one round trip per request, answered READY: {r:?}"
        );
        let to_bar = Insn::RepMovs {
            dst: BASE + 42 * 4096,
            src: RAM,
            size: 8,
            count: 64,
            df: false,
        };
        let r2 = g.exec(&sim, 0, &to_bar);
        assert_eq!((r2.requests, r2.emulated, r2.retries), (1, 1, 0), "{r2:?}");
        assert_eq!(sim.lent_pages(&g.ident), 0, "nothing to lend there");
        assert_eq!(
            sim.xen_unbacked(&g.ident),
            0,
            "Xen completed nothing itself"
        );
        let server = g.server.as_mut().expect("server");
        let c = server.status(false).counters;
        assert_eq!(
            (
                c.buffer_fills,
                c.xen_fills,
                c.retries,
                c.unbacked_reads,
                c.unbacked_writes
            ),
            (u64::from(want), 0, 0, u64::from(want), 1)
        );
        assert_eq!(
            server.poll_xen_retry(std::time::Instant::now()).1,
            None,
            "no refused answer to warn about"
        );
    }
}

/// Every element size, both directions of DF, a buffer crossing a page
/// of RAM: a `data_is_ptr` read of unregistered offsets writes ones over
/// exactly `count * size` bytes of the guest buffer, from `data` up, or
/// down with DF, and not one byte either side (`verify` checks 16 bytes
/// each side). The server writes guest memory once per request.
#[test]
fn unbacked_string_read_fills_exactly_count_times_size_in_the_df_direction() {
    for df in [false, true] {
        for size in [1u32, 2, 4, 8] {
            let (sim, mut g) = setup_ram(SimOptions::default());
            let s = u64::from(size);
            let count = 24u64;
            // The buffer's elements cross from RAM page 2 into page 3.
            let ram_first = if df {
                RAM + 3 * 4096 + 8 * s
            } else {
                RAM + 3 * 4096 - 8 * s
            };
            let insn = Insn::RepMovs {
                dst: ram_first,
                src: BASE + 44 * 4096 + 0x100 + if df { (count - 1) * s } else { 0 },
                size,
                count,
                df,
            };
            let before = sim.with_world(|w| w.guest_ram_writes);
            let (lo, len) = gpu_hostmem_sim::span(ram_first, size, count, df);
            assert_eq!(len, count * s);
            let old = sim
                .mem_read(&g.ident, lo - 1, len as usize + 2)
                .expect("RAM");
            let bar = BASE..BASE + 64 * MIB;
            let p = predict(&sim, &g.ident, &bar, &insn);
            let r = g.exec(&sim, 0, &insn);
            verify(&sim, &g.ident, &bar, &p, &r)
                .unwrap_or_else(|e| panic!("df {df} size {size}: {e}"));
            let got = sim
                .mem_read(&g.ident, lo - 1, len as usize + 2)
                .expect("RAM");
            assert!(
                got[1..=len as usize].iter().all(|b| *b == 0xff),
                "df {df} size {size}: {got:02x?}"
            );
            let n = len as usize + 1;
            assert_eq!((got[0], got[n]), (old[0], old[n]), "either side");
            let writes = sim.with_world(|w| w.guest_ram_writes) - before;
            assert_eq!(u64::from(r.requests), writes, "df {df} size {size}: {r:?}");
            assert_eq!((r.retries, r.unbacked), (0, 0), "{r:?}");
        }
    }
}

/// A guest buffer the server cannot write (its foreign mapping fails):
/// the request is completed, so the vCPU does not wait for ever, and the
/// guest is crashed with a reason naming the buffer and the errno; its
/// buffer is never left as it was and reported done.
#[test]
fn unwritable_guest_buffer_completes_the_request_and_crashes_the_guest() {
    let (sim, mut g) = setup_ram(SimOptions::default());
    let id = g.servid.expect("server id");
    sim.arm(Fault::GuestMapFails(Errno::EIO));
    let r = g.exec(
        &sim,
        0,
        &Insn::RepMovs {
            dst: RAM + 0x2000,
            src: BASE + 41 * 4096,
            size: 4,
            count: 16,
            df: false,
        },
    );
    assert_eq!(r.stopped, Some(Access::Gone), "{r:?}");
    assert_eq!(
        sim.slot_state(&g.ident, id, 0),
        Some(STATE_IORESP_READY),
        "completed: the vCPU does not wait for ever"
    );
    let why = sim.crash_reason(&g.ident).expect("the guest was crashed");
    assert!(
        why.contains("0x102000") && why.contains("EIO"),
        "reason: {why}"
    );
}

/// Requests Xen does not make, put in the slot as a hostile or broken
/// hypervisor would: the guest controls `data`, `count`, `size` and `df`
/// through its instruction, so the server bounds them itself. A buffer
/// that wraps around the address space, or `count * size` above what one
/// request may touch, cannot be filled exactly: fatal. A buffer that is
/// not RAM (a hole) is refused by the mapping: fatal, nothing written.
/// A write never reads the buffer: dropped, whatever it names. Another
/// domain's RAM at the same address is never touched.
#[test]
fn hostile_data_pointers_are_bounded() {
    use gpu_hostmem_core::ioreq::{Ioreq, IOREQ_READ, IOREQ_TYPE_COPY, IOREQ_WRITE};
    let (sim, mut g) = setup_ram(SimOptions::default());
    // Another guest with RAM where this one has a hole.
    let other = sim.create_domain(9, 1).expect("other domain");
    sim.add_guest_ram(&other, 0x4000_0000, 1);
    let req = |data: u64, size: u32, count: u32, df: bool, dir: u8| Ioreq {
        addr: BASE + 41 * 4096,
        data,
        count,
        size,
        vp_eport: 0,
        state: 1,
        data_is_ptr: true,
        dir,
        df,
        kind: IOREQ_TYPE_COPY,
    };
    let now = g.clock;
    let server = g.server.as_mut().expect("server");
    let fatal = [
        (req(0x10, 8, 4, true, IOREQ_READ), "wraps below 0"),
        (req(u64::MAX - 8, 8, 4, false, IOREQ_READ), "wraps above"),
        (
            req(RAM, 8, u32::MAX, false, IOREQ_READ),
            "count * size overflows",
        ),
        (
            req(RAM, 8, 8193, false, IOREQ_READ),
            "more than a request touches",
        ),
        (req(RAM, 3, 4, false, IOREQ_READ), "element size"),
    ];
    for (r, what) in fatal {
        match server.handle(0, &r, now) {
            Err(ServerError::BadDataPointer { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    match server.handle(0, &req(0x4000_0000, 8, 4, false, IOREQ_READ), now) {
        Err(ServerError::GuestBuffer {
            gpa, len, error, ..
        }) => {
            assert_eq!((gpa, len, error.errno), (0x4000_0000, 32, Errno::EFAULT));
        }
        other => panic!("a hole: {other:?}"),
    }
    assert_eq!(
        sim.mem_read(&other, 0x4000_0000, 32),
        Some(vec![0u8; 32]),
        "another domain's RAM"
    );
    for data in [0x10, u64::MAX - 8, 0x4000_0000] {
        let r = server
            .handle(0, &req(data, 8, 4, false, IOREQ_WRITE), now)
            .expect("a write is dropped");
        assert_eq!(r.state, STATE_IORESP_READY);
    }
    // A buffer crossing two RAM pages is fine.
    let r = server
        .handle(0, &req(RAM + 4096 - 12, 8, 3, false, IOREQ_READ), now)
        .expect("two pages of RAM");
    assert_eq!(r.state, STATE_IORESP_READY);
    assert_eq!(
        sim.mem_read(&g.ident, RAM + 4096 - 12, 24),
        Some(vec![0xff; 24])
    );
}

/// The same checks under the old rule fail: they can catch what the
/// contract fixes.
#[test]
fn old_retry_rule_fails_the_exactness_checks() {
    let (sim, mut g) = setup_ram(SimOptions {
        retry_rule: RetryRule::Reexecute,
        ..SimOptions::default()
    });
    let insn = Insn::RepMovs {
        dst: RAM + 0x123,
        src: BASE + 0x1_0000 + 512,
        size: 1,
        count: 3000,
        df: false,
    };
    let e = exact(&sim, &mut g, &insn).expect_err("old rule loses the copy");
    assert!(e.contains("byte at"), "{e}");
    let insn = Insn::RepMovs {
        dst: BASE + 0x2_0000,
        src: RAM,
        size: 8,
        count: 100,
        df: false,
    };
    assert!(
        exact(&sim, &mut g, &insn).is_err(),
        "old rule drops the copy to the BAR"
    );
}

#[test]
fn failed_revoke_on_bar_move_completes_the_request_and_crashes_the_guest() {
    // Pages lent at the old BAR range cannot be revoked (ranged revoke and
    // the revoke-all fallback both fail): the server must not go on, but
    // it must not leave the vCPU INPROCESS either.
    let (sim, mut g) = setup();
    let id = g.servid.expect("server id");
    sim.register(&g.ident, 1, 0, 32, 100).expect("register");
    g.read(&sim, 0, BASE, 8);
    assert_eq!(sim.lent_pages(&g.ident), 16);
    sim.arm(Fault::RevokeFails(Errno::EIO));
    sim.arm(Fault::RevokeAllFails(Errno::EIO));
    let a = g.config(&sim, 0x14, 4, Some(2));
    assert_eq!(
        a,
        Access::Gone,
        "a crashed guest does not wait for an answer"
    );
    assert!(matches!(g.last_flow, Some(Err(_))), "{:?}", g.last_flow);
    assert_eq!(
        sim.slot_state(&g.ident, id, 0),
        Some(STATE_IORESP_READY),
        "the request was completed before the error was acted on"
    );
    let why = sim.crash_reason(&g.ident).expect("the guest was crashed");
    assert!(why.contains("revok"), "reason: {why}");
}

#[test]
fn failed_completion_crashes_the_guest_with_a_reason() {
    let (sim, mut g) = setup();
    sim.arm(Fault::CompleteFails(Errno::EIO));
    let r = g.read(&sim, 1, BASE + 0x5000, 4);
    assert_eq!(r.access, Access::Gone, "not left blocked: {r:?}");
    assert!(matches!(g.last_flow, Some(Err(_))), "{:?}", g.last_flow);
    let why = sim.crash_reason(&g.ident).expect("the guest was crashed");
    assert!(why.contains("ioreq complete"), "reason: {why}");
}

#[test]
fn domain_going_away_mid_request_is_not_a_crash() {
    let (sim, mut g) = setup();
    sim.arm(Fault::CompleteFails(Errno::ESRCH));
    g.read(&sim, 0, BASE + 0x5000, 4);
    assert!(matches!(
        g.last_flow,
        Some(Ok(gpu_hostmem_core::server::Flow::DomainGone))
    ));
    assert_eq!(sim.crash_reason(&g.ident), None);
}

/// A new server process attaching to the Xen server `servid` of `ident`
/// with the PCI state its dead predecessor saved.
fn reattach(
    sim: &Sim,
    ident: gpu_hostmem_core::platform::DomainIdentity,
    servid: gpu_hostmem_core::platform::IoServId,
    cfg: gpu_hostmem_core::server::ServerConfig,
    saved: &str,
) -> gpu_hostmem_sim::harness::SimServer {
    gpu_hostmem_core::server::Server::attach(
        sim.device_model(),
        sim.host_mem(),
        ident,
        servid,
        cfg,
        Some(saved),
    )
    .map_err(|(e, _, _)| e)
    .expect("attach with the saved state")
}

/// A guest whose server saves its PCI state (into the returned cell, as
/// the worker saves it to its file), with one 1024-page registration at
/// BAR offset 0: what the restart tests start from.
fn restart_setup() -> (Sim, Guest, std::rc::Rc<std::cell::RefCell<String>>) {
    use std::cell::RefCell;
    use std::rc::Rc;
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 1024, 100).expect("register");
    let saved = Rc::new(RefCell::new(String::new()));
    let to = Rc::clone(&saved);
    g.server
        .as_mut()
        .expect("server")
        .set_pci_saver(Box::new(move |s| {
            *to.borrow_mut() = s.to_owned();
            Ok(())
        }));
    (sim, g, saved)
}

/// vCPU 0's access at `gpa` (a write of `value`, else a read) during
/// which the server process is killed, after taking the request if
/// `took_it` (slot INPROCESS), and a new one attaches with the saved PCI
/// state. Returns the access and the new server, which `g` no longer
/// holds.
fn access_across_a_restart(
    sim: &Sim,
    g: &mut Guest,
    saved: &std::cell::RefCell<String>,
    took_it: bool,
    gpa: u64,
    value: Option<u64>,
) -> (
    gpu_hostmem_sim::AccessReport,
    Option<gpu_hostmem_sim::harness::SimServer>,
) {
    use gpu_hostmem_core::ioreq::STATE_IOREQ_INPROCESS;
    use std::time::Instant;
    let ident = g.ident;
    let servid = g.servid.expect("servid");
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let mut server = g.server.take();
    let mut restarted = false;
    let mut run = || {
        if !restarted {
            restarted = true;
            if took_it {
                assert!(sim.set_slot_state(&ident, servid, 0, STATE_IOREQ_INPROCESS));
            }
            drop(server.take()); // SIGKILL: its handles close
            server = Some(reattach(sim, ident, servid, cfg, &saved.borrow()));
        }
        if let Some(s) = server.as_mut() {
            s.drain(Instant::now()).expect("drain");
        }
    };
    let r = sim.guest_access(&ident, 0, gpa, 8, value, &mut run);
    assert!(restarted, "the server was killed during the access");
    (r, server)
}

/// Issue 16: the IOREQ server process is killed while a vCPU waits for
/// it, either before it saw the request (slot READY) or after it took it
/// (slot INPROCESS). A new process attaches to the same Xen server with
/// the PCI state the dead one saved, answers that request with the
/// backend's bytes, and the guest goes on; destroy leaves nothing.
#[test]
fn restarted_server_reattaches_and_answers_the_request_in_flight() {
    for took_it in [false, true] {
        let (sim, mut g, saved) = restart_setup();
        // The guest moves the BAR after the saver is set: the saved state
        // follows the move.
        let base = 0x2_4000_0000;
        g.program_bar(&sim, base);
        let r = g.read(&sim, 0, base + 0x1000, 8);
        assert!(matches!(r.access, Access::Ram { .. }), "{r:?}");
        assert_eq!(sim.lent_pages(&g.ident), 16);

        let off = 0x20_0000;
        let (r, server) = access_across_a_restart(&sim, &mut g, &saved, took_it, base + off, None);
        assert!(
            matches!(r.access, Access::Ram { .. }),
            "took_it={took_it}: {r:?}"
        );
        assert_eq!(r.access.value(), Some(backend_u64(&sim, &g, off)));
        assert_eq!(
            sim.lent_pages(&g.ident),
            16,
            "attach revoked the old chunk; only the new one is lent"
        );
        g.server = server;
        // The page lent before the kill was revoked: it faults in again.
        let r = g.read(&sim, 1, base + 0x1000, 8);
        assert_eq!(r.retries, 1, "{r:?}");
        assert_eq!(r.access.value(), Some(backend_u64(&sim, &g, 0x1000)));
        // A BAR move after the restart still revokes and remaps.
        g.program_bar(&sim, BASE);
        assert_eq!(sim.lent_pages(&g.ident), 0);
        let r = g.read(&sim, 0, BASE + off, 8);
        assert_eq!(r.access.value(), Some(backend_u64(&sim, &g, off)));
        assert!(g.destroy_hook(&sim).is_clean());
        assert_eq!(sim.lent_pages(&g.ident), 0);
        sim.check_consistency().expect("consistent");
    }
}

/// Issue 16, never a hang: the server process is killed after it wrote
/// its answer into the vCPU's slot (IORESP_READY, or IORESP_RETRY) but
/// before it notified Xen. Xen wakes the vCPU only on that event, so the
/// answer would wait there forever (seen on the test bed: 72's guest
/// blocked in Xen after a worker kill, run 20261206-140457-10786). The
/// process that attaches next must send it; the state stays for Xen to
/// consume.
#[test]
fn restarted_server_notifies_an_answer_the_dead_process_wrote() {
    use gpu_hostmem_core::ioreq::{STATE_IORESP_READY, STATE_IORESP_RETRY};
    for state in [STATE_IORESP_READY, STATE_IORESP_RETRY] {
        let (sim, mut g, saved) = restart_setup();
        let ident = g.ident;
        let servid = g.servid.expect("servid");
        let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
        assert!(sim.set_slot_state(&ident, servid, 0, state));
        let before = sim.notifications(&ident, servid).expect("server");
        drop(g.server.take()); // SIGKILL after complete, before notify
        let server = reattach(&sim, ident, servid, cfg, &saved.borrow());
        let after = sim.notifications(&ident, servid).expect("server");
        assert_eq!(
            after,
            before + 1,
            "state {state}: the answer the dead process wrote was not notified"
        );
        g.server = Some(server);
        assert!(g.destroy_hook(&sim).is_clean());
        sim.check_consistency().expect("consistent");
    }
}

/// Issue 16, "the guest continues with correct data", for a write: the
/// request in flight when the server process dies is a guest WRITE, seen
/// by the dead process (slot INPROCESS) or not (READY). After the new
/// process answers it, the backend's memory holds exactly the written
/// bytes and every other byte of those pages is what it was: the write is
/// neither lost nor applied anywhere else; the guest reads it back.
#[test]
fn restarted_server_completes_a_write_in_flight_exactly() {
    for took_it in [false, true] {
        let (sim, mut g, saved) = restart_setup();
        let base = 0x2_4000_0000;
        g.program_bar(&sim, base);
        let r = g.write(&sim, 0, base + 0x1000, 8, 0x1111_2222_3333_4444);
        assert!(matches!(r.access, Access::Ram { .. }), "{r:?}");
        assert_eq!(backend_u64(&sim, &g, 0x1000), 0x1111_2222_3333_4444);

        // Not 8-aligned, in a page nothing lent yet: the write faults.
        let off = 0x20_0123;
        let value = 0xfeed_face_0bad_f00d_u64 ^ u64::from(took_it);
        let page = off & !0xfff;
        let before: Vec<u8> = sim
            .backend_bytes(&g.ident, page, 0x2000)
            .into_iter()
            .map(|b| b.expect("registered"))
            .collect();
        assert_ne!(backend_u64(&sim, &g, off), value, "a write that changes");

        let (r, server) =
            access_across_a_restart(&sim, &mut g, &saved, took_it, base + off, Some(value));
        assert!(
            matches!(r.access, Access::Ram { .. }),
            "took_it={took_it}: {r:?}"
        );
        let mut want = before.clone();
        let at = (off - page) as usize;
        want[at..at + 8].copy_from_slice(&value.to_le_bytes());
        let after: Vec<u8> = sim
            .backend_bytes(&g.ident, page, 0x2000)
            .into_iter()
            .map(|b| b.expect("registered"))
            .collect();
        let wrong: Vec<usize> = (0..want.len()).filter(|i| after[*i] != want[*i]).collect();
        assert!(
            wrong.is_empty(),
            "took_it={took_it}: bytes at page offsets {wrong:x?} are not what the guest wrote"
        );
        // The write made before the kill is still there.
        assert_eq!(backend_u64(&sim, &g, 0x1000), 0x1111_2222_3333_4444);
        g.server = server;
        let r = g.read(&sim, 1, base + off, 8);
        assert_eq!(r.access.value(), Some(value), "the guest reads it back");
        assert!(g.destroy_hook(&sim).is_clean());
        assert_eq!(sim.lent_pages(&g.ident), 0);
        sim.check_consistency().expect("consistent");
    }
}

/// A saved PCI state that does not parse is refused: the restarted server
/// would otherwise decode the BAR somewhere the guest never put it.
#[test]
fn attach_refuses_a_malformed_saved_pci_state() {
    use gpu_hostmem_core::server::Server;
    let (sim, mut g) = setup();
    let servid = g.servid.expect("servid");
    drop(g.server.take());
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let r = Server::attach(
        sim.device_model(),
        sim.host_mem(),
        g.ident,
        servid,
        cfg,
        Some("10=zz"),
    );
    match r {
        Err((ServerError::Restore(e), _, _)) => assert!(
            e.downcast_ref::<gpu_hostmem_core::pci::PciError>()
                .is_some(),
            "{e}"
        ),
        Err((e, _, _)) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a malformed saved state was taken"),
    }
}

/// The server is killed after it applied a BAR move in Xen (old range
/// unmapped, new one mapped) but before it saved the PCI state and
/// completed the config write. The restarted server restores the stale
/// state (the BAR where it was), routes that range again, and then handles
/// the write still in flight: it converges on the new range alone, with
/// nothing lent at the old one and nothing left routed there.
#[test]
fn killed_between_a_bar_move_and_its_save_the_restart_converges() {
    use gpu_hostmem_core::ioreq::{PciConfigAddress, STATE_IOREQ_INPROCESS};
    use gpu_hostmem_core::pci::REG_BAR1;
    use gpu_hostmem_sim::harness::TEST_SBDF;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::Instant;

    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 1024, 100).expect("register");
    let saved = Rc::new(RefCell::new(String::new()));
    let frozen = Rc::new(Cell::new(false));
    let (to, dead) = (Rc::clone(&saved), Rc::clone(&frozen));
    g.server
        .as_mut()
        .expect("server")
        .set_pci_saver(Box::new(move |s| {
            if !dead.get() {
                *to.borrow_mut() = s.to_owned();
            }
            Ok(())
        }));
    let r = g.read(&sim, 0, BASE + 0x1000, 8);
    assert!(matches!(r.access, Access::Ram { .. }), "{r:?}");
    assert_eq!(sim.lent_pages(&g.ident), 16);

    let (ident, servid) = (g.ident, g.servid.expect("servid"));
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let mut server = g.server.take();
    let mut killed = false;
    let mut run = || {
        if !killed {
            killed = true;
            // The old process applies the move; its save is lost with it,
            // and so is its completion: the slot is still the dead one's.
            frozen.set(true);
            let request = sim.slot(&ident, servid, 0).expect("slot");
            server
                .as_mut()
                .expect("server")
                .drain(Instant::now())
                .expect("drain");
            assert!(sim.set_slot(&ident, servid, 0, request));
            assert!(sim.set_slot_state(&ident, servid, 0, STATE_IOREQ_INPROCESS));
            drop(server.take());
            server = Some(reattach(&sim, ident, servid, cfg, &saved.borrow()));
        }
        if let Some(s) = server.as_mut() {
            s.drain(Instant::now()).expect("drain");
        }
    };
    // The high dword moves the BAR from 0x1_0000_0000 to 0x2_0000_0000.
    let at = PciConfigAddress {
        sbdf: TEST_SBDF,
        reg: REG_BAR1,
    };
    let a = sim.pci_config(&ident, 0, at, 4, Some(2), &mut run);
    assert!(killed);
    assert_eq!(a, Access::Emulated { value: 0 });
    let new_base = 0x2_0000_0000;
    let routed = sim.with_world(|w| w.domains[&ident.domid].servers[&servid].mmio.clone());
    assert_eq!(
        routed,
        vec![(new_base, new_base + 64 * MIB - 1)],
        "only the new range is routed to the server"
    );
    assert_eq!(sim.lent_pages(&g.ident), 0, "nothing lent at the old range");
    g.server = server;
    let r = g.read(&sim, 1, new_base + 0x1000, 8);
    assert_eq!(r.access.value(), Some(backend_u64(&sim, &g, 0x1000)));
    let r = g.read(&sim, 1, BASE + 0x1000, 8);
    assert!(
        !matches!(r.access, Access::Ram { .. } | Access::Emulated { .. }),
        "the old range reaches nothing: {r:?}"
    );
    // The restarted server knows the new range is its own: the next move
    // unroutes it.
    g.program_bar(&sim, BASE);
    let routed = sim.with_world(|w| w.domains[&ident.domid].servers[&servid].mmio.clone());
    assert_eq!(routed, vec![(BASE, BASE + 64 * MIB - 1)]);
    assert!(g.destroy_hook(&sim).is_clean());
    sim.check_consistency().expect("consistent");
}

//! Deterministic scenarios on the simulator: one behaviour per test.

use gpu_hostmem_core::ioreq::STATE_IORESP_READY;
use gpu_hostmem_core::limits::Limits;
use gpu_hostmem_core::platform::Errno;
use gpu_hostmem_core::server::{ServerError, Stage};
use gpu_hostmem_sim::harness::{test_config, Guest};
use gpu_hostmem_sim::{Access, Fault, Sim, SimOptions};

const MIB: u64 = 1 << 20;
const BASE: u64 = 0x1_0000_0000;

fn setup() -> (Sim, Guest) {
    let sim = Sim::new(SimOptions::default());
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let mut g = Guest::create(&sim, 3, 2, cfg).expect("create");
    g.program_bar(&sim, BASE);
    (sim, g)
}

fn content(sim: &Sim, g: &Guest, off: u64) -> u64 {
    sim.registered_frame(&g.ident, off).expect("registered").1
}

#[test]
fn first_touch_lends_chunk_and_retry_reaches_ram() {
    let (sim, mut g) = setup();
    sim.register(&g.ident, 1, 0, 256, 100).expect("register");
    let r = g.read(&sim, 0, BASE + 0x1_2345, 8);
    assert_eq!(r.retries, 1);
    assert_eq!(r.access.value(), Some(content(&sim, &g, 0x1_2000)));
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
fn busy_lend_is_retried_then_gives_up() {
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
    assert_eq!(r.access, Access::Emulated { value: u64::MAX });
}

#[test]
fn partial_batch_failure_is_undone_counted_and_recovers() {
    // A lend that fails mid-batch, with any errno: EIO, or ENOMEM when
    // Xen's paging memory for the guest is used up. The access reads as
    // all ones, nothing stays half lent, the failure is counted, and once
    // the cause is gone the same page is lent.
    for (after, errno) in [(5, Errno::EIO), (3, Errno::ENOMEM)] {
        let (sim, mut g) = setup();
        sim.register(&g.ident, 1, 0, 16, 100).expect("register");
        sim.arm(Fault::LendPartial { after, errno });
        let r = g.read(&sim, 0, BASE, 8);
        assert_eq!(r.access, Access::Emulated { value: u64::MAX });
        assert_eq!(sim.lent_pages(&g.ident), 0, "partial progress revoked");
        let server = g.server.as_mut().expect("server");
        assert_eq!(server.ledger().lent_pages(), 0);
        let c = server.status(false).counters;
        assert_eq!((c.lend_errors, c.unbacked_reads), (1, 1), "{errno:?}");
        sim.check_consistency().expect("consistent");
        assert!(matches!(
            g.read(&sim, 0, BASE, 8).access,
            Access::Ram { .. }
        ));
        sim.check_consistency().expect("consistent");
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
fn racing_revokes_are_bounded_by_retry_limit() {
    let sim = Sim::new(SimOptions::default());
    let limits = Limits {
        max_retries: 3,
        ..Limits::default()
    };
    let mut g = Guest::create(&sim, 1, 1, test_config(64 * MIB, 4096, limits)).expect("create");
    g.program_bar(&sim, BASE);
    sim.register(&g.ident, 1, 0, 16, 100).expect("register");
    sim.arm(Fault::RacingRevoke(100));
    let r = g.read(&sim, 0, BASE, 8);
    assert!(r.retries <= 3, "{r:?}");
    assert_eq!(r.access.value(), Some(u64::MAX));
}

#[test]
fn lent_page_limit_is_enforced() {
    let sim = Sim::new(SimOptions::default());
    let limits = Limits {
        max_lent_pages: 20,
        ..Limits::default()
    };
    let mut g =
        Guest::create(&sim, 1, 1, test_config(64 * MIB, 64 * 1024, limits)).expect("create");
    g.program_bar(&sim, BASE);
    sim.register(&g.ident, 1, 0, 64, 100).expect("register");
    for p in 0..64 {
        g.read(&sim, 0, BASE + p * 4096, 8);
    }
    assert!(sim.lent_pages(&g.ident) <= 20);
    assert!(g.server.as_ref().expect("server").counters().limit_refused > 0);
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

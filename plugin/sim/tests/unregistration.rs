//! A backend drops a registration (munmap, UNREF of a blob, its process
//! exits): the kernel revokes what was lent of it at once and tells the
//! server nothing. The server's cached registrations and its ledger must
//! follow the kernel's view as soon as it next asks the kernel: status
//! shows what the kernel holds, a guest access there completes as
//! unbacked, and the lent-page limit is not held by pages no longer lent.

use gpu_hostmem_core::limits::Limits;
use gpu_hostmem_core::status::Status;
use gpu_hostmem_sim::harness::{test_config, Guest};
use gpu_hostmem_sim::{Access, Sim, SimOptions};

const MIB: u64 = 1 << 20;
const BASE: u64 = 0x1_0000_0000;
/// Pages of one fault-around chunk (64 KiB).
const CHUNK: u64 = 16;

fn setup(max_lent_pages: u64) -> (Sim, Guest) {
    let sim = Sim::new(SimOptions::default());
    let limits = Limits {
        max_lent_pages,
        ..Limits::default()
    };
    let cfg = test_config(64 * MIB, CHUNK * 4096, limits);
    let mut g = Guest::create(&sim, 3, 2, cfg).expect("create");
    g.program_bar(&sim, BASE);
    (sim, g)
}

fn status(g: &mut Guest, ask_kernel: bool) -> Status {
    g.server.as_mut().expect("server").status(ask_kernel)
}

#[test]
fn status_after_an_unregistration_shows_what_the_kernel_holds() {
    let (sim, mut g) = setup(Limits::default().max_lent_pages);
    sim.register(&g.ident, 1, 0, CHUNK, 100).expect("register");
    let r = g.read(&sim, 0, BASE + 0x1008, 8);
    assert!(matches!(r.access, Access::Ram { .. }), "{r:?}");
    let st = status(&mut g, true);
    assert_eq!(st.registrations.len(), 1);
    assert_eq!(
        (st.ledger_lent_pages, st.kernel_lent_pages),
        (CHUNK, Some(CHUNK))
    );
    sim.unregister(&g.ident, 1).expect("unregister");
    assert_eq!(sim.lent_pages(&g.ident), 0, "the notifier revoked them");
    let st = status(&mut g, true);
    assert!(
        st.registrations.is_empty(),
        "an empty answer of the kernel is the truth: {:?}",
        st.registrations
    );
    assert_eq!(st.kernel_lent_pages, Some(0));
    assert_eq!(st.ledger_lent_pages, 0, "the ledger follows the kernel");
    // Asked once, the server's own view (no kernel query) agrees too.
    let st = status(&mut g, false);
    assert!(st.registrations.is_empty(), "{:?}", st.registrations);
    assert_eq!(st.ledger_lent_pages, 0);
    sim.check_consistency().expect("consistent");
}

#[test]
fn a_fault_after_an_unregistration_is_unbacked_at_once() {
    let (sim, mut g) = setup(Limits::default().max_lent_pages);
    sim.register(&g.ident, 1, 0, 2 * CHUNK, 100)
        .expect("register");
    let r = g.read(&sim, 0, BASE, 8);
    assert!(matches!(r.access, Access::Ram { .. }), "{r:?}");
    sim.unregister(&g.ident, 1).expect("unregister");
    // The server still caches registration 1: a page it lent before and
    // one it never lent both complete as unbacked, without a RETRY.
    for off in [0x10u64, CHUNK * 4096 + 0x10] {
        let r = g.read(&sim, 0, BASE + off, 4);
        assert_eq!(
            r.access,
            Access::Emulated { value: 0xffff_ffff },
            "{off:#x}"
        );
        assert_eq!(r.retries, 0, "{off:#x}");
        let r = g.write(&sim, 1, BASE + off, 4, 7);
        assert_eq!(r.access, Access::Emulated { value: 0 }, "{off:#x}");
        assert_eq!(r.retries, 0, "{off:#x}");
    }
    assert_eq!(sim.lent_pages(&g.ident), 0);
    let c = *g.server.as_ref().expect("server").counters();
    assert_eq!((c.unbacked_reads, c.unbacked_writes), (2, 2), "{c:?}");
    assert_eq!(c.lend_errors, 0, "not a failed lend: {c:?}");
    assert_eq!(status(&mut g, false).ledger_lent_pages, 0);
    sim.check_consistency().expect("consistent");
}

/// An access to a registration that is gone must not revoke the pages of
/// a live one to make room for a lend that lends nothing.
#[test]
fn an_access_to_a_dropped_registration_evicts_nothing() {
    let (sim, mut g) = setup(CHUNK);
    sim.register(&g.ident, 1, 0, CHUNK, 100).expect("register");
    sim.register(&g.ident, 2, MIB, CHUNK, 100)
        .expect("register");
    // The first fault caches both registrations and fills the limit.
    let r = g.read(&sim, 0, BASE, 8);
    assert!(matches!(r.access, Access::Ram { .. }), "{r:?}");
    assert_eq!(sim.lent_pages(&g.ident), CHUNK);
    sim.unregister(&g.ident, 2).expect("unregister");
    let r = g.read(&sim, 0, BASE + MIB, 4);
    assert_eq!(r.access, Access::Emulated { value: 0xffff_ffff });
    assert_eq!(r.retries, 0);
    assert_eq!(
        sim.lent_pages(&g.ident),
        CHUNK,
        "registration 1 is still lent"
    );
    let c = *g.server.as_ref().expect("server").counters();
    assert_eq!((c.evicted_pages, c.limit_deferred), (0, 0), "{c:?}");
    sim.check_consistency().expect("consistent");
}

/// Pages the kernel revoked with their registration no longer count
/// against the lent-page limit, in the ledger either.
#[test]
fn the_limit_is_not_held_by_pages_the_kernel_revoked() {
    let (sim, mut g) = setup(2 * CHUNK);
    sim.register(&g.ident, 1, 0, CHUNK, 100).expect("register");
    sim.register(&g.ident, 2, MIB, 4 * CHUNK, 100)
        .expect("register");
    g.read(&sim, 0, BASE, 8);
    g.read(&sim, 0, BASE + MIB, 8);
    assert_eq!(sim.lent_pages(&g.ident), 2 * CHUNK, "at the limit");
    sim.unregister(&g.ident, 1).expect("unregister");
    assert_eq!(sim.lent_pages(&g.ident), CHUNK);
    // A chunk of registration 2 fits again, and nothing of it is evicted.
    let at = BASE + MIB + CHUNK * 4096;
    let r = g.read(&sim, 0, at, 8);
    assert!(matches!(r.access, Access::Ram { .. }), "{r:?}");
    assert_eq!(sim.lent_pages(&g.ident), 2 * CHUNK);
    let c = *g.server.as_ref().expect("server").counters();
    assert_eq!(c.evicted_pages, 0, "{c:?}");
    let st = status(&mut g, false);
    assert_eq!(
        st.ledger_lent_pages,
        2 * CHUNK,
        "the ledger counts what is lent, not what was"
    );
    let st = status(&mut g, true);
    assert_eq!(st.kernel_lent_pages, Some(st.ledger_lent_pages));
    assert_eq!(st.registrations.len(), 1);
    sim.check_consistency().expect("consistent");
}

/// A backend that exits drops all its registrations at once: the server
/// sees nothing registered and nothing lent, and serves a new backend's
/// registration at the same offsets.
#[test]
fn a_backend_that_exits_leaves_nothing_in_status_and_a_new_one_is_served() {
    let (sim, mut g) = setup(2 * CHUNK);
    for (id, off) in [(1, 0), (2, MIB)] {
        sim.register(&g.ident, id, off, CHUNK, 100)
            .expect("register");
        g.read(&sim, 0, BASE + off, 8);
    }
    assert_eq!(sim.lent_pages(&g.ident), 2 * CHUNK);
    for id in [1, 2] {
        sim.unregister(&g.ident, id).expect("unregister");
    }
    let st = status(&mut g, true);
    assert!(st.registrations.is_empty(), "{:?}", st.registrations);
    assert_eq!((st.ledger_lent_pages, st.kernel_lent_pages), (0, Some(0)));
    // The next backend registers other pages at the same offset: the
    // guest reaches them, not the old ones, and nothing is evicted.
    sim.register(&g.ident, 7, 0, 2 * CHUNK, 200)
        .expect("register");
    for off in [0, CHUNK * 4096] {
        let r = g.read(&sim, 0, BASE + off, 8);
        let want = sim.registered_frame(&g.ident, off).expect("registered");
        assert_eq!(
            r.access,
            Access::Ram {
                frame: want.0,
                value: want.1
            }
        );
    }
    let c = *g.server.as_ref().expect("server").counters();
    assert_eq!(c.evicted_pages, 0, "{c:?}");
    let st = status(&mut g, true);
    assert_eq!(st.registrations.len(), 1);
    assert_eq!(
        (st.ledger_lent_pages, st.kernel_lent_pages),
        (2 * CHUNK, Some(2 * CHUNK))
    );
    sim.check_consistency().expect("consistent");
}

/// The server asks the kernel when the ledger says the limit is reached,
/// and then learns what was revoked: the faults after that do not ask
/// again while there is room (before, the ledger kept the revoked pages
/// and every fault asked).
#[test]
fn after_learning_of_revoked_pages_faults_do_not_ask_the_kernel() {
    let (sim, mut g) = setup(3 * CHUNK);
    sim.register(&g.ident, 1, 0, 2 * CHUNK, 100)
        .expect("register");
    sim.register(&g.ident, 2, MIB, 3 * CHUNK, 100)
        .expect("register");
    for off in [0, CHUNK * 4096, MIB] {
        g.read(&sim, 0, BASE + off, 8);
    }
    assert_eq!(sim.lent_pages(&g.ident), 3 * CHUNK, "at the limit");
    sim.unregister(&g.ident, 1).expect("unregister");
    let queries = || sim.with_world(|w| w.queries);
    let before = queries();
    for chunk in 1..3 {
        let r = g.read(&sim, 0, BASE + MIB + chunk * CHUNK * 4096, 8);
        assert!(matches!(r.access, Access::Ram { .. }), "{r:?}");
    }
    assert_eq!(sim.lent_pages(&g.ident), 3 * CHUNK);
    assert_eq!(queries() - before, 1, "one query, at the first fault");
    let c = *g.server.as_ref().expect("server").counters();
    assert_eq!(c.evicted_pages, 0, "{c:?}");
    sim.check_consistency().expect("consistent");
}

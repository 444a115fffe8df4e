//! Xen's counters of the domain's RETRY answers (`XEN_DMOP_get_retry_stats`)
//! as the server reads them: shown in its status beside its own counters,
//! refused answers reported when their count goes up, read at teardown,
//! and a library without the call tolerated.

use std::time::Instant;

use gpu_hostmem_core::limits::Limits;
use gpu_hostmem_core::platform::{Errno, RetryStats};
use gpu_hostmem_core::retry_stats::RetryNews;
use gpu_hostmem_sim::harness::{test_config, Guest};
use gpu_hostmem_sim::{Access, Fault, Insn, Sim, SimOptions};

const MIB: u64 = 1 << 20;
const BASE: u64 = 0x1_0000_0000;
const RAM: u64 = 0x10_0000;

/// BAR pages 0..16 registered, guest RAM for a string copy.
fn setup(opts: SimOptions) -> (Sim, Guest) {
    let sim = Sim::new(opts);
    let cfg = test_config(64 * MIB, 4096, Limits::default());
    let mut g = Guest::create(&sim, 5, 1, cfg).expect("create");
    g.program_bar(&sim, BASE);
    sim.register(&g.ident, 1, 0, 16, 100).expect("register");
    sim.add_guest_ram(&g.ident, RAM, 1);
    (sim, g)
}

fn st(completed: u64, resent: u64, refused: u64) -> RetryStats {
    RetryStats {
        completed,
        resent,
        refused,
    }
}

#[test]
fn status_shows_how_xen_ended_each_retry_answer() {
    let (sim, mut g) = setup(SimOptions::default());
    // A first touch: lent, RETRY, Xen completes it from the page.
    let r = g.read(&sim, 0, BASE, 8);
    assert_eq!((r.retries, r.access.value().is_some()), (1, true));
    // Three invalidations race with Xen's check: three resends, then the
    // fourth answer is honoured.
    sim.arm(Fault::RevokeBeforeRetryCheck(3));
    let r = g.read(&sim, 0, BASE + 0x1000, 8);
    assert_eq!(r.retries, 4, "{r:?}");
    // A copy from an unregistered offset into RAM (data_is_ptr): the
    // server fills the buffer with ones and answers READY, no RETRY.
    let r = g.exec(
        &sim,
        0,
        &Insn::RepMovs {
            dst: RAM,
            src: BASE + 32 * 4096,
            size: 8,
            count: 4,
            df: false,
        },
    );
    assert_eq!((r.requests, r.emulated, r.unbacked), (1, 1, 0), "{r:?}");
    assert_eq!(sim.mem_read(&g.ident, RAM, 32), Some(vec![0xff; 32]));
    // The same copy into a lent page of the window (page 0): only Xen can
    // write there. The server answers RETRY with nothing lent, Xen sends
    // it 8 more times, then completes it as unbacked, the ones in the
    // lent page: one refused answer, which the server expected.
    let r = g.exec(
        &sim,
        0,
        &Insn::RepMovs {
            dst: BASE + 0x100,
            src: BASE + 32 * 4096,
            size: 8,
            count: 4,
            df: false,
        },
    );
    assert_eq!((r.requests, r.unbacked), (9, 1), "{r:?}");
    assert_eq!(
        sim.backend_bytes(&g.ident, 0x100, 32),
        vec![Some(0xff); 32],
        "Xen filled the lent page"
    );
    let (x, news) = g
        .server
        .as_mut()
        .expect("server")
        .poll_xen_retry(Instant::now());
    assert_eq!(x.map(|x| x.refused), Ok(1));
    assert_eq!(
        news, None,
        "the refused answer the server expected is no news"
    );

    let server = g.server.as_mut().expect("server");
    let s = server.status(false);
    let x = s.xen_retry.expect("Xen's counters");
    assert_eq!(x, st(2, 3 + 8, 1), "{}", s.to_text());
    assert_eq!((s.counters.buffer_fills, s.counters.xen_fills), (1, 1));
    assert!(
        s.to_text().contains(
            "rep reads   1 guest buffers filled with ones, 1 into lent memory left to Xen"
        ),
        "{}",
        s.to_text()
    );

    assert_eq!(s.xen_retry_error, None);
    // Every answer the server gave ended one way in Xen's accounting.
    assert_eq!(
        x.completed + x.resent + x.refused,
        s.counters.retries,
        "{}",
        s.to_text()
    );
    assert!(
        s.to_text()
            .contains("Xen RETRY   completed 2 (honoured), resent 11, refused 1"),
        "{}",
        s.to_text()
    );
}

#[test]
fn a_refused_answer_is_news_when_its_count_goes_up() {
    let (sim, mut g) = setup(SimOptions::default());
    let t0 = Instant::now();
    let (r, news) = g.server.as_mut().expect("server").poll_xen_retry(t0);
    assert_eq!((r, news), (Ok(st(0, 0, 0)), None));
    // Honoured answers are no news.
    assert!(g.read(&sim, 0, BASE, 8).access.value().is_some());
    let (r, news) = g.server.as_mut().expect("server").poll_xen_retry(t0);
    assert_eq!((r, news), (Ok(st(1, 0, 0)), None));
    // Xen completes a RETRY as unbacked (an access racing with more
    // revocations than its resends): reported once, with the count.
    sim.arm(Fault::RevokeBeforeRetryCheck(100));
    let r = g.read(&sim, 0, BASE + 0x2000, 8);
    assert_eq!(r.access, Access::Unbacked { value: u64::MAX });
    let (_, news) = g.server.as_mut().expect("server").poll_xen_retry(t0);
    assert_eq!(
        news,
        Some(RetryNews::Refused {
            by: 1,
            now: st(1, 8, 1)
        })
    );
    let (_, news) = g.server.as_mut().expect("server").poll_xen_retry(t0);
    assert_eq!(news, None, "no news without a new refused answer");
    sim.disarm_all();
}

#[test]
fn only_refused_answers_the_server_did_not_expect_are_news() {
    // Copies from an unregistered offset into a lent page, handed to Xen:
    // each ends refused by design, and is no news. A refused answer of
    // another kind among them still is, counted alone.
    let (sim, mut g) = setup(SimOptions::default());
    let t0 = Instant::now();
    assert!(g.read(&sim, 0, BASE, 8).access.value().is_some());
    let copy = Insn::RepMovs {
        dst: BASE + 0x100,
        src: BASE + 32 * 4096,
        size: 8,
        count: 4,
        df: false,
    };
    for _ in 0..3 {
        let r = g.exec(&sim, 0, &copy);
        assert_eq!((r.requests, r.unbacked), (9, 1), "{r:?}");
    }
    let (x, news) = g.server.as_mut().expect("server").poll_xen_retry(t0);
    assert_eq!((x.map(|x| x.refused), news), (Ok(3), None));
    sim.arm(Fault::RevokeBeforeRetryCheck(100));
    let r = g.read(&sim, 0, BASE + 0x2000, 8);
    sim.disarm_all();
    assert_eq!(r.access, Access::Unbacked { value: u64::MAX });
    assert_eq!(g.exec(&sim, 0, &copy).unbacked, 1);
    let (_, news) = g.server.as_mut().expect("server").poll_xen_retry(t0);
    assert_eq!(
        news,
        Some(RetryNews::Refused {
            by: 1,
            now: st(1, 8 * 5, 5)
        })
    );
    let s = g.server.as_mut().expect("server").status(false);
    assert_eq!(s.counters.xen_fills, 4);
}

#[test]
fn teardown_reads_xens_counters_before_the_server_goes() {
    let (sim, mut g) = setup(SimOptions::default());
    assert!(g.read(&sim, 0, BASE, 8).access.value().is_some());
    let report = g.stop_server().expect("a running server");
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.xen_retry, Some(st(1, 0, 0)));
}

#[test]
fn a_library_without_the_call_is_reported_once_not_fatal() {
    let (sim, mut g) = setup(SimOptions {
        no_retry_stats_call: true,
        ..SimOptions::default()
    });
    let server = g.server.as_mut().expect("server");
    let (r, news) = server.poll_xen_retry(Instant::now());
    let e = r.expect_err("no call");
    assert_eq!(
        (e.op, e.errno),
        ("xendevicemodel_get_retry_stats", Errno::ENOSYS)
    );
    assert_eq!(news, Some(RetryNews::Unavailable(e)));
    // The server works on; its status says why Xen's counters are missing.
    assert!(g.read(&sim, 0, BASE, 8).access.value().is_some());
    let s = g.server.as_mut().expect("server").status(false);
    assert_eq!((s.xen_retry, s.counters.retries), (None, 1));
    let why = s.xen_retry_error.clone().expect("a reason");
    assert!(
        why.contains("xendevicemodel_get_retry_stats") && why.contains("ENOSYS"),
        "{why}"
    );
    assert!(
        s.to_text().contains("Xen RETRY   unavailable: "),
        "{}",
        s.to_text()
    );
    let report = g.stop_server().expect("a running server");
    assert!(report.is_clean() && report.xen_retry.is_none());
}

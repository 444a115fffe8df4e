//! Arbitrary ioreqs (PCI config cycles, BAR accesses, anything) through the
//! real server on the simulator. The server must never panic, always answer
//! IORESP_READY or IORESP_RETRY, and leave the platform consistent: every
//! lent page registered and inside the BAR as it is now.
#![no_main]

use std::time::Instant;

use gpu_hostmem_core::ioreq::{
    Ioreq, PciConfigAddress, IOREQ_SIZE, IOREQ_TYPE_COPY, IOREQ_TYPE_PCI_CONFIG,
    STATE_IORESP_READY, STATE_IORESP_RETRY,
};
use gpu_hostmem_core::limits::Limits;
use gpu_hostmem_sim::harness::{test_config, Guest, TEST_SBDF};
use gpu_hostmem_sim::{Sim, SimOptions};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x1_0000_0000;
const BAR: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let sim = Sim::new(SimOptions::default());
    let cfg = test_config(BAR, 64 * 1024, Limits::default());
    let Ok(mut g) = Guest::create(&sim, 1, 2, cfg) else {
        return;
    };
    g.program_bar(&sim, BASE);
    if sim.register(&g.ident, 1, 0, 64, 1).is_err() {
        return;
    }
    let Some(mut server) = g.server.take() else {
        return;
    };
    let now = Instant::now();
    for chunk in data.chunks_exact(IOREQ_SIZE + 1) {
        let mode = chunk[0];
        let mut raw = [0u8; IOREQ_SIZE];
        raw.copy_from_slice(&chunk[1..]);
        let mut req = Ioreq::from_bytes(&raw);
        match mode % 3 {
            // A config cycle to our function (register from the input).
            0 => {
                req.kind = IOREQ_TYPE_PCI_CONFIG;
                req.addr = PciConfigAddress {
                    sbdf: TEST_SBDF,
                    reg: (req.addr as u32) & 0xfff,
                }
                .to_ioreq_addr();
            }
            // An MMIO access somewhere around the BAR.
            1 => {
                req.kind = IOREQ_TYPE_COPY;
                req.addr = BASE.wrapping_add(req.addr % (2 * BAR));
            }
            // Anything at all.
            _ => {}
        }
        let vcpu = u32::from(mode >> 4) % 3;
        let resp = match server.handle(vcpu, &req, now) {
            Ok(r) => r,
            Err(_) => break,
        };
        // Answered now, or left pending (rate limit, no room, busy kernel).
        assert!(
            resp.state == STATE_IORESP_READY
                || resp.state == STATE_IORESP_RETRY
                || resp.is_pending()
        );
        if let Err(e) = sim.check_consistency() {
            panic!("{e}");
        }
        // Every lent page lies inside the BAR as currently decoded.
        let p2m = sim.p2m(&g.ident);
        if !p2m.is_empty() {
            let Some(bar) = server.pci().active_bar() else {
                panic!("pages lent while the BAR is not decoded");
            };
            for (gfn, _) in p2m {
                assert!(bar.contains(&(gfn << 12)), "gfn {gfn:#x} outside {bar:?}");
            }
        }
    }
    let (_, _, report) = server.shutdown();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(sim.lent_pages(&g.ident), 0);
});

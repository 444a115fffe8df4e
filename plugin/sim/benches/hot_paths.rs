//! Benchmarks of the hot logic: ioreq dispatch, BAR-offset lookup, and
//! total teardown of many lent pages in the simulator. Each at several
//! sizes to show growth. Run: `cargo bench -p gpu-hostmem-sim --bench hot_paths`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use gpu_hostmem_core::ioreq::{
    Ioreq, PciConfigAddress, IOREQ_READ, IOREQ_TYPE_COPY, IOREQ_TYPE_PCI_CONFIG, STATE_IOREQ_READY,
};
use gpu_hostmem_core::limits::Limits;
use gpu_hostmem_core::platform::HostMem;
use gpu_hostmem_core::platform::RegionInfo;
use gpu_hostmem_core::registry::Registry;
use gpu_hostmem_sim::harness::{test_config, Guest, TEST_SBDF};
use gpu_hostmem_sim::{Sim, SimOptions};

const BASE: u64 = 0x10_0000_0000;

fn limits() -> Limits {
    Limits {
        fault_rate: u64::MAX / 2000,
        fault_burst: u64::MAX / 2000,
        max_lent_pages: 1 << 28,
        ..Limits::default()
    }
}

fn req(kind: u8, addr: u64) -> Ioreq {
    Ioreq {
        addr,
        data: 0,
        count: 1,
        size: 4,
        vp_eport: 0,
        state: STATE_IOREQ_READY,
        data_is_ptr: false,
        dir: IOREQ_READ,
        df: false,
        kind,
    }
}

/// One ioreq through `Server::handle`: a config read, and a BAR read of an
/// unregistered offset (registry miss, kernel query, unbacked answer).
fn dispatch(c: &mut Criterion) {
    let sim = Sim::new(SimOptions::default());
    let mut g = Guest::create(&sim, 1, 1, test_config(1 << 30, 2 << 20, limits())).expect("guest");
    g.program_bar(&sim, BASE);
    let mut server = g.server.take().expect("server");
    let now = Instant::now();
    let mut group = c.benchmark_group("ioreq_dispatch");
    group.throughput(Throughput::Elements(1));
    let cfg = req(
        IOREQ_TYPE_PCI_CONFIG,
        PciConfigAddress {
            sbdf: TEST_SBDF,
            reg: 0x10,
        }
        .to_ioreq_addr(),
    );
    group.bench_function("pci_config_read", |b| {
        b.iter(|| black_box(server.handle(0, black_box(&cfg), now).expect("handle")))
    });
    let bar = req(IOREQ_TYPE_COPY, BASE + 0x1000);
    group.bench_function("bar_read_unbacked", |b| {
        b.iter(|| black_box(server.handle(0, black_box(&bar), now).expect("handle")))
    });
    group.finish();

    // A full guest round trip through the shared slot: ioreq_t written by
    // "Xen", drained (READY -> INPROCESS -> IORESP_READY -> notify) for
    // 1, 4 and 16 vCPUs.
    let mut group = c.benchmark_group("ioreq_roundtrip");
    for vcpus in [1u32, 4, 16] {
        let sim = Sim::new(SimOptions::default());
        let mut g =
            Guest::create(&sim, 1, vcpus, test_config(1 << 30, 2 << 20, limits())).expect("guest");
        g.program_bar(&sim, BASE);
        group.throughput(Throughput::Elements(u64::from(vcpus)));
        group.bench_with_input(BenchmarkId::from_parameter(vcpus), &vcpus, |b, &n| {
            b.iter(|| {
                for v in 0..n {
                    black_box(g.read(&sim, v, BASE + 0x2000, 4));
                }
            })
        });
    }
    group.finish();
}

/// BAR offset -> registration with 1k, 10k and 100k registrations.
fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry_lookup");
    group.throughput(Throughput::Elements(1024));
    for n in [1_000u64, 10_000, 100_000] {
        let mut r = Registry::new();
        for i in 0..n {
            r.insert(RegionInfo::new(i as u32, i * 0x3000, 0x2000))
                .expect("insert");
        }
        // Pseudo-random probes over the whole range (hits and gaps).
        let probes: Vec<u64> = (0..1024u64)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) % (n * 0x3000))
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &probes, |b, p| {
            b.iter(|| {
                let mut hits = 0u32;
                for &off in p {
                    hits += u32::from(r.lookup(black_box(off)).is_some());
                }
                black_box(hits)
            })
        });
    }
    group.finish();
}

/// Total teardown (`Server::shutdown`: revoke all, unmap, destroy) of a
/// domain with 16k, 128k and 1M lent pages.
fn teardown(c: &mut Criterion) {
    let mut group = c.benchmark_group("teardown_lent_pages");
    group.sample_size(10);
    for pages in [1u64 << 14, 1 << 17, 1 << 20] {
        group.throughput(Throughput::Elements(pages));
        group.bench_with_input(BenchmarkId::from_parameter(pages), &pages, |b, &pages| {
            b.iter_batched(
                || {
                    let sim = Sim::new(SimOptions::default());
                    let mut g = Guest::create(&sim, 1, 1, test_config(1 << 33, 2 << 20, limits()))
                        .expect("guest");
                    g.program_bar(&sim, BASE);
                    sim.register(&g.ident, 1, 0, pages, 1).expect("register");
                    let mut hm = sim.host_mem();
                    let mut off = 0;
                    while off < pages {
                        let n = 512.min(pages - off);
                        hm.lend(&g.ident, off * 4096, (BASE >> 12) + off, n as u32)
                            .expect("lend");
                        off += n;
                    }
                    assert_eq!(sim.lent_pages(&g.ident), pages);
                    (sim, g)
                },
                |(sim, mut g)| {
                    let report = g.stop_server().expect("server");
                    assert!(report.is_clean());
                    assert_eq!(sim.lent_pages(&g.ident), 0);
                    (sim, g)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, dispatch, lookup, teardown);
criterion_main!(benches);

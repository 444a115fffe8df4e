//! The transport driven the way Linux 6.12's virtio_pci (modern) and
//! virtio_gpu drivers drive it: find the capabilities, reset, negotiate,
//! set up the control and cursor queues, DRIVER_OK, then notify and take
//! interrupts over INTx. Plus the refusals and a property test of the
//! state machine's invariants under arbitrary accesses.

use gpu_hostmem_core::pci::{COMMAND_INTX_DISABLE, COMMAND_MASTER, COMMAND_MEMORY, REG_COMMAND};
use gpu_hostmem_virtio_gpu::device::{
    GpuConfig, GpuDevice, F_CONTEXT_INIT, F_RESOURCE_BLOB, F_VIRGL,
};
use gpu_hostmem_virtio_gpu::layout::*;
use gpu_hostmem_virtio_gpu::transport::F_VERSION_1;
use gpu_hostmem_virtio_gpu::{Action, VirtioGpuPci};
use proptest::prelude::*;

const WINDOW: u64 = 1 << 30;
const WINDOW_BASE: u64 = 0x10_0000_0000;
const REGS_BASE: u64 = 0xfeb0_0000;

const ACK: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const NEEDS_RESET: u8 = 64;

struct Guest {
    dev: VirtioGpuPci<GpuDevice>,
    common: u64,
    isr: u64,
    device: u64,
    notify: u64,
    mult: u64,
    irq: bool,
}

impl Guest {
    /// hvmloader placing the BARs and Linux's pci_enable_device +
    /// pci_set_master, then vp_modern_probe finding the capabilities.
    fn boot(cfg: GpuConfig) -> Guest {
        let mut dev = VirtioGpuPci::new(WINDOW, 1, GpuDevice::new(cfg)).expect("device");
        dev.config_write(0x10, 4, WINDOW_BASE as u32 | 0xc);
        dev.config_write(0x14, 4, (WINDOW_BASE >> 32) as u32);
        dev.config_write(REG_BAR2, 4, REGS_BASE as u32);
        dev.config_write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
        let mut g = Guest {
            dev,
            common: 0,
            isr: 0,
            device: 0,
            notify: 0,
            mult: 0,
            irq: false,
        };
        let bar_base = |g: &Guest, bar: u8| -> u64 {
            let reg = 0x10 + u32::from(bar) * 4;
            let lo = u64::from(g.dev.config_read(reg, 4));
            if lo & 0x4 != 0 {
                (u64::from(g.dev.config_read(reg + 4, 4)) << 32) | (lo & !0xf)
            } else {
                lo & !0xf
            }
        };
        let mut pos = u32::from(g.dev.config_read(PCI_CAPABILITY_LIST, 1) as u8) & !3;
        while pos != 0 {
            let t = g.dev.config_read(pos + cap::CFG_TYPE, 1) as u8;
            let bar = g.dev.config_read(pos + cap::BAR, 1) as u8;
            let at = bar_base(&g, bar) + u64::from(g.dev.config_read(pos + cap::OFFSET, 4));
            match t {
                VIRTIO_PCI_CAP_COMMON_CFG => g.common = at,
                VIRTIO_PCI_CAP_ISR_CFG => g.isr = at,
                VIRTIO_PCI_CAP_DEVICE_CFG => g.device = at,
                VIRTIO_PCI_CAP_NOTIFY_CFG => {
                    g.notify = at;
                    g.mult = u64::from(g.dev.config_read(pos + cap::NOTIFY_MULT, 4));
                }
                VIRTIO_PCI_CAP_SHARED_MEMORY_CFG => {
                    assert_eq!(at, WINDOW_BASE, "shm region starts at the window");
                }
                _ => panic!("unexpected cfg_type {t}"),
            }
            pos = u32::from(g.dev.config_read(pos + cap::NEXT, 1) as u8) & !3;
        }
        assert!(g.common != 0 && g.isr != 0 && g.notify != 0 && g.device != 0);
        g
    }

    fn apply(&mut self, a: Action) -> Action {
        if let Some(level) = a.intx {
            assert_ne!(level, self.irq, "a level change that is no change");
            self.irq = level;
        }
        a
    }

    fn r(&mut self, addr: u64, size: u32) -> u64 {
        let (v, a) = self.dev.mmio_read(addr, size).expect("in BAR2");
        self.apply(a);
        v
    }

    fn w(&mut self, addr: u64, size: u32, v: u64) -> Action {
        let a = self.dev.mmio_write(addr, size, v).expect("in BAR2");
        self.apply(a)
    }

    fn status(&mut self) -> u8 {
        self.r(self.common + common::STATUS, 1) as u8
    }

    fn set_status(&mut self, s: u8) -> Action {
        self.w(self.common + common::STATUS, 1, u64::from(s))
    }

    fn device_features(&mut self) -> u64 {
        self.w(self.common + common::DFSELECT, 4, 0);
        let lo = self.r(self.common + common::DF, 4);
        self.w(self.common + common::DFSELECT, 4, 1);
        let hi = self.r(self.common + common::DF, 4);
        (hi << 32) | lo
    }

    fn set_driver_features(&mut self, f: u64) {
        self.w(self.common + common::GFSELECT, 4, 0);
        self.w(self.common + common::GF, 4, f & 0xffff_ffff);
        self.w(self.common + common::GFSELECT, 4, 1);
        self.w(self.common + common::GF, 4, f >> 32);
    }

    /// vp_modern_find_vqs / setup_vq for queue `i` with rings at `base`.
    fn setup_queue(&mut self, i: u16, base: u64) -> u16 {
        let c = self.common;
        self.w(c + common::Q_SELECT, 2, u64::from(i));
        let size = self.r(c + common::Q_SIZE, 2) as u16;
        assert!(size != 0, "queue {i} present");
        assert_eq!(self.r(c + common::Q_ENABLE, 2), 0);
        self.w(c + common::Q_SIZE, 2, u64::from(size));
        for (lo, addr) in [
            (common::Q_DESCLO, base),
            (common::Q_AVAILLO, base + 0x1000),
            (common::Q_USEDLO, base + 0x2000),
        ] {
            self.w(c + lo, 4, addr & 0xffff_ffff);
            self.w(c + lo + 4, 4, addr >> 32);
        }
        let noff = self.r(c + common::Q_NOFF, 2) as u16;
        self.w(c + common::Q_ENABLE, 2, 1);
        noff
    }

    /// The whole probe; returns the queues' notify offsets.
    fn probe(&mut self) -> (Action, [u16; 2]) {
        self.set_status(0);
        assert_eq!(self.status(), 0);
        self.set_status(ACK);
        self.set_status(ACK | DRIVER);
        let offered = self.device_features();
        self.set_driver_features(offered);
        self.set_status(ACK | DRIVER | FEATURES_OK);
        assert_ne!(self.status() & FEATURES_OK, 0, "features accepted");
        assert_eq!(self.r(self.common + common::NUMQ, 2), 2);
        let n0 = self.setup_queue(0, 0x10_0000);
        let n1 = self.setup_queue(1, 0x20_0000);
        let a = self.set_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        (a, [n0, n1])
    }

    fn kick(&mut self, noff: u16, value: u16) -> Action {
        self.w(
            self.notify + u64::from(noff) * self.mult,
            2,
            u64::from(value),
        )
    }
}

#[test]
fn linux_probe_negotiates_sets_up_both_queues_and_goes_live() {
    let mut g = Guest::boot(GpuConfig::default());
    let offered = g.device_features();
    assert_eq!(offered, F_VERSION_1 | F_RESOURCE_BLOB | F_CONTEXT_INIT);
    let (a, noff) = g.probe();
    assert!(a.activated);
    assert!(g.dev.transport().is_live());
    assert_eq!(g.dev.transport().negotiated_features(), offered);
    let q = g.dev.transport().queues();
    assert_eq!(
        (q[0].size, q[0].desc, q[0].driver, q[0].device),
        (256, 0x10_0000, 0x10_1000, 0x10_2000)
    );
    assert_eq!((q[1].size, q[1].desc), (16, 0x20_0000));
    assert!(q[0].enabled && q[1].enabled);
    assert_eq!(noff, [0, 1]);
    // struct virtio_gpu_config: no event, no scanout, no capset.
    assert_eq!(g.r(g.device + 8, 4), 0);
    assert_eq!(g.r(g.device + 12, 4), 0);
    // Notify the control queue, then the cursor queue.
    assert_eq!(g.kick(noff[0], 0).notify, Some(0));
    assert_eq!(g.kick(noff[1], 1).notify, Some(1));
}

#[test]
fn used_buffers_raise_inta_until_the_isr_is_read() {
    let mut g = Guest::boot(GpuConfig::default());
    g.probe();
    let a = g.dev.signal_used();
    assert_eq!(a.intx, Some(true));
    g.apply(a);
    assert_eq!(g.dev.signal_used().intx, None, "already asserted");
    assert_eq!(g.r(g.isr, 1), u64::from(VIRTIO_PCI_ISR_QUEUE));
    assert!(!g.irq, "reading the ISR lowered INTA");
    assert_eq!(g.r(g.isr, 1), 0, "and cleared it");
}

#[test]
fn config_change_bumps_generation_and_raises_the_config_bit() {
    let mut g = Guest::boot(GpuConfig::default());
    g.probe();
    let gen = g.r(g.common + common::CFGGENERATION, 1);
    g.dev.transport_mut().device_mut().raise_events(1);
    let a = g.dev.signal_config_change();
    g.apply(a);
    assert!(g.irq);
    assert_eq!(g.r(g.common + common::CFGGENERATION, 1), gen + 1);
    assert_eq!(g.r(g.device, 4), 1, "events_read");
    g.w(g.device + 4, 4, 1);
    assert_eq!(g.r(g.device, 4), 0, "events_clear cleared it");
    assert_eq!(g.r(g.isr, 1), u64::from(VIRTIO_PCI_ISR_CONFIG));
}

#[test]
fn features_ok_is_refused_without_version_1_or_with_a_bit_not_offered() {
    for (name, accept) in [
        ("no VERSION_1", F_RESOURCE_BLOB | F_CONTEXT_INIT),
        ("VIRGL not offered", F_VERSION_1 | F_VIRGL),
        ("ACCESS_PLATFORM not offered", F_VERSION_1 | (1 << 33)),
    ] {
        let mut g = Guest::boot(GpuConfig::default());
        g.set_status(ACK | DRIVER);
        g.set_driver_features(accept);
        g.set_status(ACK | DRIVER | FEATURES_OK);
        assert_eq!(
            g.status(),
            ACK | DRIVER,
            "{name}: FEATURES_OK reads back clear"
        );
        let a = g.set_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(!a.activated, "{name}");
        assert!(!g.dev.transport().is_live(), "{name}");
    }
    // VIRGL offered (a renderer is attached): the same set is accepted.
    let cfg = GpuConfig {
        features: F_VIRGL | F_RESOURCE_BLOB | F_CONTEXT_INIT,
        ..GpuConfig::default()
    };
    let mut g = Guest::boot(cfg);
    g.set_status(ACK | DRIVER);
    g.set_driver_features(F_VERSION_1 | F_VIRGL);
    g.set_status(ACK | DRIVER | FEATURES_OK);
    assert_eq!(g.status(), ACK | DRIVER | FEATURES_OK);
}

#[test]
fn driver_features_are_taken_only_between_driver_and_features_ok() {
    let mut g = Guest::boot(GpuConfig::default());
    g.set_status(ACK);
    g.set_driver_features(F_VERSION_1);
    assert_eq!(g.dev.transport().negotiated_features(), 0, "before DRIVER");
    g.set_status(ACK | DRIVER);
    g.set_driver_features(F_VERSION_1);
    g.set_status(ACK | DRIVER | FEATURES_OK);
    g.set_driver_features(F_VERSION_1 | F_RESOURCE_BLOB);
    assert_eq!(
        g.dev.transport().negotiated_features(),
        F_VERSION_1,
        "after FEATURES_OK"
    );
}

#[test]
fn driver_ok_needs_features_ok_and_cleared_bits_are_ignored() {
    let mut g = Guest::boot(GpuConfig::default());
    g.set_status(ACK | DRIVER);
    let a = g.set_status(ACK | DRIVER | DRIVER_OK);
    assert!(!a.activated);
    assert_eq!(g.status(), ACK | DRIVER);
    g.set_status(ACK);
    assert_eq!(g.status(), ACK | DRIVER, "a driver may not clear a bit");
}

#[test]
fn reset_returns_everything_to_the_initial_state_and_lowers_inta() {
    let mut g = Guest::boot(GpuConfig::default());
    g.probe();
    let a = g.dev.signal_used();
    g.apply(a);
    let a = g.set_status(0);
    assert!(a.reset);
    assert!(!g.irq, "INTA lowered by the reset");
    assert_eq!(g.status(), 0);
    assert_eq!(g.dev.transport().negotiated_features(), 0);
    for q in g.dev.transport().queues() {
        assert!(!q.enabled);
        assert_eq!((q.size, q.desc, q.driver, q.device), (q.max_size, 0, 0, 0));
    }
    assert_eq!(g.r(g.isr, 1), 0);
    // probe() resets once more; two resets in all.
    g.probe();
    assert_eq!(g.dev.transport().device().resets(), 3);
    assert!(g.dev.transport().is_live(), "a second probe works");
}

#[test]
fn queue_registers_are_locked_once_enabled_or_live() {
    let mut g = Guest::boot(GpuConfig::default());
    let (_, noff) = g.probe();
    let c = g.common;
    g.w(c + common::Q_SELECT, 2, 0);
    g.w(c + common::Q_SIZE, 2, 8);
    g.w(c + common::Q_DESCLO, 4, 0x5000);
    g.w(c + common::Q_ENABLE, 2, 0);
    let q = g.dev.transport().queues()[0];
    assert_eq!((q.size, q.desc, q.enabled), (256, 0x10_0000, true));
    // An absent queue reads size 0 and takes no write.
    g.w(c + common::Q_SELECT, 2, 2);
    assert_eq!(g.r(c + common::Q_SIZE, 2), 0);
    g.w(c + common::Q_ENABLE, 2, 1);
    assert_eq!(g.r(c + common::Q_ENABLE, 2), 0);
    assert_eq!(g.kick(noff[0], 0).notify, Some(0), "queue 0 still works");
}

#[test]
fn a_malformed_enabled_queue_at_driver_ok_means_needs_reset() {
    let mut g = Guest::boot(GpuConfig::default());
    g.set_status(ACK | DRIVER);
    g.set_driver_features(F_VERSION_1);
    g.set_status(ACK | DRIVER | FEATURES_OK);
    let c = g.common;
    g.w(c + common::Q_SELECT, 2, 0);
    g.w(c + common::Q_SIZE, 2, 100); // not a power of two
    g.w(c + common::Q_ENABLE, 2, 1);
    let a = g.set_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(!a.activated);
    assert_eq!(a.intx, Some(true), "configuration interrupt");
    assert_ne!(g.status() & NEEDS_RESET, 0);
    assert!(!g.dev.transport().is_live());
    assert_eq!(g.kick(0, 0).notify, None);
    assert_eq!(g.r(g.isr, 1), u64::from(VIRTIO_PCI_ISR_CONFIG));
    // The driver resets and the device works again.
    assert!(g.probe().0.activated);
}

#[test]
fn a_queue_error_sets_needs_reset_once_and_stops_notifications() {
    let mut g = Guest::boot(GpuConfig::default());
    let (_, noff) = g.probe();
    let a = g.dev.device_error();
    assert_eq!(g.apply(a).intx, Some(true), "configuration interrupt");
    assert_ne!(g.status() & NEEDS_RESET, 0);
    assert_eq!(g.dev.device_error(), Action::default(), "only once");
    assert_eq!(g.kick(noff[0], 0).notify, None);
    assert_eq!(g.r(g.isr, 1), u64::from(VIRTIO_PCI_ISR_CONFIG));
    // The driver gives up: FAILED is taken, NEEDS_RESET stays.
    let st = g.status() & !NEEDS_RESET;
    g.set_status(st | 128);
    assert_eq!(g.status(), st | 128 | NEEDS_RESET);
    assert!(
        g.probe().0.activated,
        "the driver's reset recovers the device"
    );
    assert_eq!(g.kick(noff[0], 0).notify, Some(0));
}

#[test]
fn notifications_count_only_for_a_live_enabled_queue_with_bus_mastering() {
    let mut g = Guest::boot(GpuConfig::default());
    assert_eq!(g.kick(0, 0).notify, None, "not live");
    let (_, noff) = g.probe();
    assert_eq!(
        g.kick(noff[0], 1).notify,
        None,
        "index disagrees with the address"
    );
    assert_eq!(g.kick(5, 5).notify, None, "no such queue");
    assert_eq!(
        g.w(g.notify + 2, 2, 0).notify,
        None,
        "not on a queue's address"
    );
    g.dev
        .config_write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
    assert_eq!(g.kick(noff[0], 0).notify, None, "bus mastering off");
    g.dev
        .config_write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
    assert_eq!(g.kick(noff[0], 0).notify, Some(0));
}

#[test]
fn intx_disable_masks_the_line_and_unmasking_restores_it() {
    let mut g = Guest::boot(GpuConfig::default());
    g.probe();
    let a = g.dev.signal_used();
    g.apply(a);
    let mem_master = COMMAND_MEMORY | COMMAND_MASTER;
    let (_, a) = g
        .dev
        .config_write(REG_COMMAND, 2, u32::from(mem_master | COMMAND_INTX_DISABLE));
    assert_eq!(g.apply(a).intx, Some(false));
    let (_, a) = g.dev.config_write(REG_COMMAND, 2, u32::from(mem_master));
    assert_eq!(g.apply(a).intx, Some(true), "still pending: raised again");
}

#[test]
fn msix_vectors_read_no_vector_without_an_msix_capability() {
    let mut g = Guest::boot(GpuConfig::default());
    g.w(g.common + common::MSIX, 2, 0);
    assert_eq!(
        g.r(g.common + common::MSIX, 2),
        u64::from(VIRTIO_MSI_NO_VECTOR)
    );
    g.w(g.common + common::Q_MSIX, 2, 1);
    assert_eq!(
        g.r(g.common + common::Q_MSIX, 2),
        u64::from(VIRTIO_MSI_NO_VECTOR)
    );
}

#[test]
fn only_the_register_bar_is_handled_here() {
    let mut g = Guest::boot(GpuConfig::default());
    assert!(
        g.dev.mmio_read(WINDOW_BASE, 4).is_none(),
        "the window is the server's"
    );
    assert!(g.dev.mmio_read(REGS_BASE + REGS_BAR_SIZE, 4).is_none());
    assert!(
        g.dev.mmio_read(REGS_BASE + REGS_BAR_SIZE - 2, 4).is_none(),
        "straddles the end"
    );
    g.dev.config_write(REG_COMMAND, 2, 0);
    assert!(g.dev.mmio_read(REGS_BASE, 4).is_none(), "decode off");
}

/// One guest access of any kind.
#[derive(Clone, Debug)]
enum Op {
    Cfg(u32, u32, u32),
    Read(u64, u32),
    Write(u64, u32, u64),
    Used,
    ConfigChange,
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop::sample::select(vec![1u32, 2, 4]);
    prop_oneof![
        (
            prop::sample::select(vec![0x04u32, 0x18, 0x3c]),
            size.clone(),
            any::<u32>()
        )
            .prop_map(|(r, s, v)| Op::Cfg(r - r % s, s, v)),
        (0u64..REGS_BAR_SIZE, size.clone()).prop_map(|(o, s)| Op::Read(o, s)),
        (0u64..64, size.clone(), 0u64..300).prop_map(|(o, s, v)| Op::Write(o, s, v)),
        (prop::sample::select(vec![20u64, 28, 22, 24]), 0u64..16).prop_map(|(o, v)| Op::Write(
            o,
            if o == 20 { 1 } else { 2 },
            v
        )),
        (0u64..4, Just(2u32), 0u64..4).prop_map(|(q, s, v)| Op::Write(NOTIFY_OFFSET + q * 4, s, v)),
        Just(Op::Used),
        Just(Op::ConfigChange),
    ]
}

proptest! {
    /// Whatever the guest does, the device never goes live without
    /// FEATURES_OK and VERSION_1, never agrees to a bit it did not offer,
    /// reports INTA exactly as ISR-and-not-masked, and notifies only live,
    /// enabled queues.
    #[test]
    fn state_machine_invariants_hold_under_arbitrary_accesses(ops in prop::collection::vec(op(), 1..200)) {
        let mut g = Guest::boot(GpuConfig::default());
        let offered = g.dev.transport().device().clone();
        let offered = gpu_hostmem_virtio_gpu::VirtioDevice::features(&offered);
        for o in ops {
            let a = match o {
                Op::Cfg(r, s, v) => g.dev.config_write(r, s, v).1,
                Op::Read(off, s) => match g.dev.mmio_read(REGS_BASE + off, s) {
                    Some((_, a)) => a,
                    None => Action::default(),
                },
                Op::Write(off, s, v) => g.dev.mmio_write(REGS_BASE + off, s, v).unwrap_or_default(),
                Op::Used => g.dev.signal_used(),
                Op::ConfigChange => g.dev.signal_config_change(),
            };
            if let Some(l) = a.intx {
                prop_assert_ne!(l, g.irq);
                g.irq = l;
            }
            let t = g.dev.transport();
            let st = t.status();
            if st & DRIVER_OK != 0 {
                prop_assert!(st & FEATURES_OK != 0);
            }
            if st & FEATURES_OK != 0 {
                prop_assert!(t.negotiated_features() & F_VERSION_1 != 0);
                prop_assert_eq!(t.negotiated_features() & !offered, 0);
            }
            if let Some(q) = a.notify {
                prop_assert!(t.is_live());
                prop_assert!(t.queues()[usize::from(q)].enabled);
                prop_assert!(g.dev.config().bus_master());
            }
            let want = t.isr() != 0 && !g.dev.config().intx_disabled();
            prop_assert_eq!(g.irq, want);
            prop_assert_eq!(g.dev.intx_level(), want);
        }
    }
}

//! The stage-1 device end to end in simulated guest memory: a Linux-like
//! driver probes it over MMIO, sets up both queues, and draws into a 2D
//! resource through the control queue; the device answers every command,
//! interrupts over INTx, and recovers from a hostile ring only through a
//! reset.

use gpu_hostmem_core::pci::{COMMAND_MASTER, COMMAND_MEMORY, REG_COMMAND};
use gpu_hostmem_virtio_gpu::blob::{self, TEST_CAPSET_ID};
use gpu_hostmem_virtio_gpu::device::GpuConfig;
use gpu_hostmem_virtio_gpu::engine::VirtioGpu;
use gpu_hostmem_virtio_gpu::gpu2d::{resp, HDR_LEN};
use gpu_hostmem_virtio_gpu::layout::*;
use gpu_hostmem_virtio_gpu::memory::{GuestMemory, SimMemory};
use gpu_hostmem_virtio_gpu::renderer::{
    BlobHandle, BlobRequest, MapCache, Renderer, RendererError,
};
use gpu_hostmem_virtio_gpu::Action;

const REGS: u64 = 0xfeb0_0000;
const COMMON: u64 = REGS + COMMON_OFFSET;
const NOTIFY: u64 = REGS + NOTIFY_OFFSET;
const ISR: u64 = REGS + ISR_OFFSET;
/// Control queue rings at 0x1_0000, cursor queue at 0x2_0000.
const RINGS: [u64; 2] = [0x1_0000, 0x2_0000];
const SIZE: u16 = 16;

struct Guest {
    dev: VirtioGpu,
    mem: SimMemory,
    irq: bool,
    avail_idx: [u16; 2],
    used_seen: [u16; 2],
    next_desc: [u16; 2],
    /// Where the last command's response went.
    last_resp: u64,
}

impl Guest {
    fn new() -> Guest {
        Guest::with(VirtioGpu::new(256 << 20, 1, GpuConfig::default(), 1 << 20).expect("device"))
    }

    fn with(dev: VirtioGpu) -> Guest {
        let mut g = Guest {
            dev,
            mem: SimMemory::new(4 << 20),
            irq: false,
            avail_idx: [0; 2],
            used_seen: [0; 2],
            next_desc: [0; 2],
            last_resp: 0,
        };
        g.dev.config_write(REG_BAR2, 4, REGS as u32);
        g.dev
            .config_write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
        g
    }

    fn apply(&mut self, a: Action) -> Action {
        if let Some(l) = a.intx {
            self.irq = l;
        }
        a
    }

    fn w(&mut self, addr: u64, size: u32, v: u64) -> Action {
        let a = self
            .dev
            .mmio_write(&mut self.mem, addr, size, v)
            .expect("BAR2");
        self.apply(a)
    }

    fn r(&mut self, addr: u64, size: u32) -> u64 {
        let (v, a) = self.dev.mmio_read(addr, size).expect("BAR2");
        self.apply(a);
        v
    }

    fn probe(&mut self) -> Action {
        self.w(COMMON + common::STATUS, 1, 0);
        self.avail_idx = [0; 2];
        self.used_seen = [0; 2];
        self.next_desc = [0; 2];
        for base in RINGS {
            // Fresh rings: zeroed avail and used areas.
            self.mem.write(base + 0x1000, &[0; 0x2000]).expect("zero");
        }
        self.w(COMMON + common::STATUS, 1, 3);
        self.w(COMMON + common::GFSELECT, 4, 1);
        self.w(COMMON + common::GF, 4, 1); // VERSION_1 (bit 32)
        self.w(COMMON + common::STATUS, 1, 3 | 8);
        for q in 0..2u16 {
            let base = RINGS[usize::from(q)];
            self.w(COMMON + common::Q_SELECT, 2, u64::from(q));
            self.w(COMMON + common::Q_SIZE, 2, u64::from(SIZE));
            self.w(COMMON + common::Q_DESCLO, 4, base);
            self.w(COMMON + common::Q_AVAILLO, 4, base + 0x1000);
            self.w(COMMON + common::Q_USEDLO, 4, base + 0x2000);
            self.w(COMMON + common::Q_ENABLE, 2, 1);
        }
        self.w(COMMON + common::STATUS, 1, 3 | 8 | 4)
    }

    fn desc(&mut self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write(RINGS[q] + 16 * u64::from(i), &b)
            .expect("desc");
    }

    fn publish(&mut self, q: usize, head: u16) {
        let slot = u64::from(self.avail_idx[q] % SIZE);
        self.mem
            .write(RINGS[q] + 0x1000 + 4 + 2 * slot, &head.to_le_bytes())
            .expect("ring");
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.mem
            .write(RINGS[q] + 0x1002, &self.avail_idx[q].to_le_bytes())
            .expect("idx");
    }

    /// Posts a command on the control queue (request at 0x10_0000 + 0x1000
    /// * n, response buffer after it) and kicks; returns the response type.
    fn command(&mut self, req: &[u8]) -> (Action, Option<u32>) {
        let n = u64::from(self.avail_idx[0] % SIZE);
        let (rq, rs) = (0x10_0000 + 0x2000 * n, 0x10_1000 + 0x2000 * n);
        self.mem.write(rq, req).expect("req");
        let d = self.next_desc[0];
        self.next_desc[0] = (d + 2) % SIZE;
        self.desc(0, d, rq, req.len() as u32, 1, d + 1);
        self.desc(0, d + 1, rs, 512, 2, 0);
        self.last_resp = rs;
        self.publish(0, d);
        let a = self.w(NOTIFY, 2, 0);
        let used = self.mem.read_u16(RINGS[0] + 0x2002).expect("used idx");
        if used == self.used_seen[0] {
            return (a, None);
        }
        self.used_seen[0] = used;
        (a, Some(self.mem.read_u32(rs).expect("resp")))
    }
}

fn hdr(ty: u32, words: &[u32]) -> Vec<u8> {
    let mut v = vec![0u8; HDR_LEN];
    v[0..4].copy_from_slice(&ty.to_le_bytes());
    for w in words {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

#[test]
fn a_driver_draws_into_a_2d_resource_through_the_control_queue() {
    let mut g = Guest::new();
    let a = g.probe();
    assert!(a.activated);
    assert!(g.dev.is_running());

    let (a, r) = g.command(&hdr(0x100, &[]));
    assert_eq!(r, Some(resp::OK_DISPLAY_INFO));
    assert_eq!(a.intx, Some(true), "INTA raised for the used buffer");
    assert_eq!(g.r(ISR, 1), u64::from(VIRTIO_PCI_ISR_QUEUE));
    assert!(!g.irq, "and lowered by the ISR read");

    // A 4x2 resource backed by guest memory at 0x30_0000.
    let pixels: Vec<u8> = (0..32).collect();
    g.mem.write(0x30_0000, &pixels).expect("pixels");
    assert_eq!(
        g.command(&hdr(0x101, &[5, 2, 4, 2])).1,
        Some(resp::OK_NODATA)
    );
    let mut attach = hdr(0x106, &[5, 1]);
    attach.extend_from_slice(&0x30_0000u64.to_le_bytes());
    attach.extend_from_slice(&32u32.to_le_bytes());
    attach.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(g.command(&attach).1, Some(resp::OK_NODATA));
    let mut transfer = hdr(0x105, &[0, 0, 4, 2]);
    transfer.extend_from_slice(&0u64.to_le_bytes());
    transfer.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(g.command(&transfer).1, Some(resp::OK_NODATA));
    assert_eq!(g.dev.gpu().resource_data(5), Some(&pixels[..]));
    assert_eq!(
        g.command(&hdr(0x104, &[0, 0, 4, 2, 5, 0])).1,
        Some(resp::OK_NODATA)
    );
    assert_eq!(g.command(&hdr(0x999, &[])).1, Some(resp::ERR_UNSPEC));
    assert_eq!(g.dev.served(), 6);
}

#[test]
fn no_interrupt_when_the_driver_suppresses_it() {
    let mut g = Guest::new();
    g.probe();
    g.mem
        .write(RINGS[0] + 0x1000, &1u16.to_le_bytes())
        .expect("NO_INTERRUPT");
    let (a, r) = g.command(&hdr(0x100, &[]));
    assert_eq!(r, Some(resp::OK_DISPLAY_INFO), "served all the same");
    assert_eq!(a.intx, None);
}

#[test]
fn an_unreadable_request_gets_an_error_and_the_device_goes_on() {
    let mut g = Guest::new();
    g.probe();
    let d = 0;
    g.desc(0, d, 0x3f_f000, 24, 1, 1); // in a hole, below
    g.desc(0, d + 1, 0x20_0000, 64, 2, 0);
    g.next_desc[0] = 2;
    g.mem.punch_hole(0x3ff);
    g.publish(0, d);
    g.w(NOTIFY, 2, 0);
    g.used_seen[0] = 1;
    assert_eq!(g.mem.read_u32(0x20_0000), Ok(resp::ERR_UNSPEC));
    assert!(g.dev.is_running());
    assert_eq!(g.command(&hdr(0x100, &[])).1, Some(resp::OK_DISPLAY_INFO));
}

#[test]
fn a_hostile_ring_stops_the_device_until_the_driver_resets_it() {
    let mut g = Guest::new();
    g.probe();
    assert_eq!(
        g.command(&hdr(0x101, &[5, 2, 4, 2])).1,
        Some(resp::OK_NODATA)
    );
    g.r(ISR, 1); // the driver's interrupt handler
    assert!(!g.irq);
    // A descriptor loop: 2 -> 3 -> 2.
    g.desc(0, 2, 0x10_0000, 24, 1, 3);
    g.desc(0, 3, 0x10_0000, 24, 1, 2);
    g.publish(0, 2);
    let a = g.w(NOTIFY, 2, 0);
    assert_eq!(a.intx, Some(true), "configuration interrupt");
    assert!(!g.dev.is_running());
    assert_ne!(g.r(COMMON + common::STATUS, 1) & 64, 0, "NEEDS_RESET");
    assert_eq!(g.r(ISR, 1), u64::from(VIRTIO_PCI_ISR_CONFIG));
    // Further kicks do nothing.
    assert_eq!(g.w(NOTIFY, 2, 0), Action::default());
    // The driver resets: resources are gone, the device works again.
    let a = g.w(COMMON + common::STATUS, 1, 0);
    assert!(a.reset);
    assert_eq!(g.dev.gpu().resource_data(5), None);
    assert!(g.probe().activated);
    assert_eq!(
        g.command(&hdr(0x101, &[5, 2, 4, 2])).1,
        Some(resp::OK_NODATA)
    );
}

#[test]
fn a_malformed_queue_at_driver_ok_never_starts_the_device() {
    let mut g = Guest::new();
    g.w(COMMON + common::STATUS, 1, 3);
    g.w(COMMON + common::GFSELECT, 4, 1);
    g.w(COMMON + common::GF, 4, 1);
    g.w(COMMON + common::STATUS, 1, 11);
    g.w(COMMON + common::Q_SELECT, 2, 0);
    g.w(COMMON + common::Q_DESCLO, 4, 0x1_0008); // not 16-aligned
    g.w(COMMON + common::Q_ENABLE, 2, 1);
    let a = g.w(COMMON + common::STATUS, 1, 15);
    assert!(!a.activated);
    assert!(!g.dev.is_running());
    assert_eq!(g.w(NOTIFY, 2, 0).notify, None);
}

#[test]
fn a_restarted_server_goes_on_from_the_saved_state() {
    let mut g = Guest::new();
    let fresh_len = g.dev.saved().len();
    g.probe();
    assert_eq!(g.command(&hdr(0x100, &[])).1, Some(resp::OK_DISPLAY_INFO));
    assert_eq!(g.command(&hdr(0x100, &[])).1, Some(resp::OK_DISPLAY_INFO));
    assert!(g.irq, "the ISR was not read: INTA is up");
    let saved = g.dev.saved();
    assert_eq!(saved.len(), fresh_len, "fixed length: rewritten in place");

    // The worker dies; a new one restores what was saved.
    let mut fresh = VirtioGpu::new(256 << 20, 1, GpuConfig::default(), 1 << 20).expect("device");
    let a = fresh.restore(&saved).expect("restore");
    assert_eq!(a.intx, Some(true), "INTA asserted again");
    assert!(fresh.is_running());
    assert_eq!(fresh.saved(), saved);
    g.dev = fresh;
    // The ring goes on at the third entry.
    assert_eq!(g.command(&hdr(0x100, &[])).1, Some(resp::OK_DISPLAY_INFO));
    assert_eq!(g.mem.read_u16(RINGS[0] + 0x2002), Ok(3));
    assert_eq!(g.r(ISR, 1), u64::from(VIRTIO_PCI_ISR_QUEUE));
}

#[test]
fn a_saved_state_the_device_could_not_be_in_is_refused() {
    let mut g = Guest::new();
    g.probe();
    let good = g.dev.saved();
    let with = |k: &str, v: &str| -> String {
        good.split(';')
            .map(|p| match p.split_once(':') {
                Some((key, _)) if key == k => format!("{k}:{v}"),
                _ => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join(";")
    };
    let q0 = good
        .split(';')
        .find_map(|p| p.strip_prefix("q0:"))
        .expect("q0")
        .to_string();
    let q0_with = |i: usize, v: &str| {
        let mut f: Vec<String> = q0.split('/').map(str::to_string).collect();
        f[i] = v.to_string();
        f.join("/")
    };
    let cases = [
        ("garbage", "nonsense".to_string()),
        ("empty", String::new()),
        ("DRIVER_OK without FEATURES_OK", with("st", "07")),
        ("unknown status bit", with("st", "1f")),
        ("features not offered", with("feat", "0000000300000000")),
        ("no VERSION_1", with("feat", "0000000000000018")),
        ("queue above its maximum", with("q0", &q0_with(0, "0200"))),
        (
            "misaligned ring, live",
            with("q0", &q0_with(2, "0000000000010008")),
        ),
        ("enabled not 0/1", with("q0", &q0_with(1, "2"))),
        ("short queue", with("q0", "0010/1")),
        ("bad inner PCI state", with("pci", "00=ffffffff")),
        ("missing queue", good.replace(";q1:", ";qx:")),
        ("duplicate key", format!("{good};gen:00")),
    ];
    for (name, s) in cases {
        let mut fresh =
            VirtioGpu::new(256 << 20, 1, GpuConfig::default(), 1 << 20).expect("device");
        let before = fresh.saved();
        assert!(fresh.restore(&s).is_err(), "{name} accepted");
        assert_eq!(fresh.saved(), before, "{name} changed something");
        assert!(!fresh.is_running(), "{name}");
    }
    // BAR2's bits below its size are not taken.
    let mut fresh = VirtioGpu::new(256 << 20, 1, GpuConfig::default(), 1 << 20).expect("device");
    fresh.restore(&with("bar2", "feb01234")).expect("restore");
    assert_eq!(fresh.config_read(REG_BAR2, 4), 0xfeb0_0000);
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Any value into any common-cfg field, at its own width.
        Common(u64, u64),
        Kick(u16),
        /// Any bytes anywhere in the rings and the first buffers.
        Poke(u64, Vec<u8>),
        ReadIsr,
    }

    fn op() -> impl Strategy<Value = Op> {
        let fields = prop::sample::select(vec![
            common::STATUS,
            common::GFSELECT,
            common::GF,
            common::Q_SELECT,
            common::Q_SIZE,
            common::Q_ENABLE,
            common::Q_DESCLO,
            common::Q_DESCHI,
            common::Q_AVAILLO,
            common::Q_AVAILHI,
            common::Q_USEDLO,
            common::Q_USEDHI,
        ]);
        prop_oneof![
            (fields, any::<u32>()).prop_map(|(f, v)| Op::Common(f, u64::from(v))),
            (0u16..3).prop_map(Op::Kick),
            (
                0x1_0000u64..0x12_0000,
                prop::collection::vec(any::<u8>(), 1..32)
            )
                .prop_map(|(a, b)| Op::Poke(a, b)),
            Just(Op::ReadIsr),
        ]
    }

    fn width(field: u64) -> u32 {
        match field {
            common::STATUS => 1,
            common::Q_SELECT | common::Q_SIZE | common::Q_ENABLE => 2,
            _ => 4,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// A live device under arbitrary register writes, ring contents
        /// and kicks never panics, serves only while live, and keeps its
        /// resources within the limit.
        #[test]
        fn arbitrary_drivers_never_break_the_device(ops in prop::collection::vec(op(), 1..120)) {
            let mut g = Guest::new();
            g.probe();
            for o in ops {
                match o {
                    Op::Common(f, v) => { g.w(COMMON + f, width(f), v & 0xffff_ffff); }
                    Op::Kick(q) => { g.w(NOTIFY + 4 * u64::from(q), 2, u64::from(q)); }
                    Op::Poke(a, b) => { g.mem.write(a, &b).expect("inside RAM"); }
                    Op::ReadIsr => { g.r(ISR, 1); }
                }
                if g.dev.is_running() {
                    prop_assert!(g.dev.pci().transport().is_live());
                }
                prop_assert!(g.dev.gpu().bytes() <= 1 << 20);
            }
        }
    }
}

/// A renderer that says yes and counts what is registered.
#[derive(Debug, Clone, Default)]
struct Yes(std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>);

impl Renderer for Yes {
    fn create_context(&mut self, _: u32, _: u32) -> Result<(), RendererError> {
        Ok(())
    }
    fn destroy_context(&mut self, _: u32) -> Result<(), RendererError> {
        Ok(())
    }
    fn create_blob(&mut self, r: BlobRequest) -> Result<BlobHandle, RendererError> {
        Ok(BlobHandle(u64::from(r.resource_id)))
    }
    fn map_blob(&mut self, h: BlobHandle, offset: u64) -> Result<MapCache, RendererError> {
        self.0.lock().expect("log").push((h.0, offset));
        Ok(MapCache::Cached)
    }
    fn unmap_blob(&mut self, h: BlobHandle) -> Result<(), RendererError> {
        self.0.lock().expect("log").retain(|m| m.0 != h.0);
        Ok(())
    }
    fn destroy_blob(&mut self, h: BlobHandle) -> Result<(), RendererError> {
        self.0.lock().expect("log").retain(|m| m.0 != h.0);
        Ok(())
    }
    fn capset(&mut self, capset: u32, version: u32, size: u32) -> Result<Vec<u8>, RendererError> {
        Ok((0..size).map(|i| (i ^ capset ^ version) as u8).collect())
    }
    fn submit(&mut self, _: u32, _: u32, _: &[u8]) -> Result<(), RendererError> {
        Ok(())
    }
}

fn ctx_hdr(ty: u32, ctx: u32, words: &[u32]) -> Vec<u8> {
    let mut v = hdr(ty, words);
    v[16..20].copy_from_slice(&ctx.to_le_bytes());
    v
}

#[test]
fn blobs_through_the_control_queue_share_ids_with_2d_and_go_at_reset() {
    let yes = Yes::default();
    let dev = VirtioGpu::with_renderer(
        256 << 20,
        1,
        GpuConfig::default().with_test_capset(),
        1 << 20,
        Box::new(yes.clone()),
    )
    .expect("device");
    let mut g = Guest::with(dev);
    // The option offers VIRGL (Linux needs it for HOST3D blobs) and one
    // capset; GET_CAPSET_INFO names it.
    g.w(COMMON + common::DFSELECT, 4, 0);
    assert_ne!(g.r(COMMON + common::DF, 4) & (1 << 0), 0, "VIRGL");
    assert_eq!(g.r(REGS + DEVICE_OFFSET + 12, 4), 1, "num_capsets");
    g.probe();
    assert_eq!(
        g.command(&hdr(0x108, &[0, 0])).1,
        Some(blob::resp::OK_CAPSET_INFO)
    );
    assert_eq!(g.mem.read_u32(g.last_resp + 24), Ok(TEST_CAPSET_ID));
    // GET_CAPSET: the renderer's bytes after the header, as many as offered.
    assert_eq!(
        g.command(&hdr(0x109, &[TEST_CAPSET_ID, 1])).1,
        Some(blob::resp::OK_CAPSET)
    );
    for i in 0..16u32 {
        let b = g
            .mem
            .read_u32(g.last_resp + 24 + u64::from(i & !3))
            .map(|w| (w >> (8 * (i % 4))) as u8);
        assert_eq!(b, Ok((i ^ TEST_CAPSET_ID ^ 1) as u8), "capset byte {i}");
    }
    let mut create_ctx = ctx_hdr(0x200, 1, &[0, TEST_CAPSET_ID]);
    create_ctx.extend_from_slice(&[0; 64]);
    assert_eq!(g.command(&create_ctx).1, Some(resp::OK_NODATA));
    let blob = |id: u32| {
        let mut v = ctx_hdr(0x10c, 1, &[id, 2, 1, 0]);
        v.extend_from_slice(&0u64.to_le_bytes());
        v.extend_from_slice(&(2u64 << 12).to_le_bytes());
        v
    };
    assert_eq!(g.command(&blob(5)).1, Some(resp::OK_NODATA));
    assert_eq!(
        g.command(&hdr(0x101, &[5, 2, 4, 2])).1,
        Some(resp::ERR_INVALID_RESOURCE_ID),
        "a 2D resource with a blob's id"
    );
    assert_eq!(
        g.command(&hdr(0x101, &[6, 2, 4, 2])).1,
        Some(resp::OK_NODATA)
    );
    assert_eq!(
        g.command(&blob(6)).1,
        Some(resp::ERR_INVALID_RESOURCE_ID),
        "a blob with a 2D resource's id"
    );
    // Fenced MAP_BLOB: map info and the fence come back.
    let mut map = hdr(0x208, &[5, 0]);
    map[4] = 1; // VIRTIO_GPU_FLAG_FENCE
    map[8..16].copy_from_slice(&77u64.to_le_bytes());
    map.extend_from_slice(&(1u64 << 20).to_le_bytes());
    assert_eq!(g.command(&map).1, Some(blob::resp::OK_MAP_INFO));
    assert_eq!(g.mem.read_u32(g.last_resp + 4), Ok(1), "fence flag");
    assert_eq!(g.mem.read_u32(g.last_resp + 8), Ok(77), "fence id");
    assert_eq!(g.mem.read_u32(g.last_resp + 24), Ok(1), "map_info CACHED");
    assert_eq!(*yes.0.lock().expect("log"), [(5, 1 << 20)]);
    assert_eq!(g.dev.blobs().mapped_at(5), Some(1 << 20));
    // UNREF of the 2D resource goes to 2D, of the blob to the blobs.
    assert_eq!(g.command(&hdr(0x102, &[6, 0])).1, Some(resp::OK_NODATA));
    assert_eq!(g.dev.gpu().bytes(), 0);
    assert!(g.dev.blobs().contains(5));
    assert_eq!(g.command(&blob(7)).1, Some(resp::OK_NODATA));
    assert_eq!(g.command(&hdr(0x102, &[7, 0])).1, Some(resp::OK_NODATA));
    assert!(!g.dev.blobs().contains(7));
    // A reset unmaps and destroys what is left.
    assert!(g.w(COMMON + common::STATUS, 1, 0).reset);
    assert!(!g.dev.blobs().contains(5));
    assert!(yes.0.lock().expect("log").is_empty(), "unmapped at reset");
    assert_eq!(g.dev.blobs().stats().contexts, 0);
}

#[test]
fn without_the_option_blob_commands_are_refused() {
    let mut g = Guest::new();
    g.w(COMMON + common::DFSELECT, 4, 0);
    assert_eq!(g.r(COMMON + common::DF, 4) & (1 << 0), 0, "no VIRGL");
    assert_eq!(g.r(REGS + DEVICE_OFFSET + 12, 4), 0, "no capset");
    g.probe();
    let mut create_ctx = ctx_hdr(0x200, 1, &[0, TEST_CAPSET_ID]);
    create_ctx.extend_from_slice(&[0; 64]);
    assert_eq!(g.command(&create_ctx).1, Some(resp::ERR_INVALID_PARAMETER));
    assert_eq!(
        g.command(&hdr(0x108, &[0, 0])).1,
        Some(resp::ERR_INVALID_PARAMETER),
        "no capset"
    );
    let mut map = hdr(0x208, &[5, 0]);
    map.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(g.command(&map).1, Some(resp::ERR_INVALID_RESOURCE_ID));
}

//! A driver in simulated memory that keeps many commands in flight on the
//! control queue (256 entries) and sees their responses come back in any
//! order: what a test of kept (fenced) responses needs. Shared with the
//! renderer's tests (`#[path]`).

#![allow(dead_code)] // each test binary uses its own part

use gpu_hostmem_core::pci::{COMMAND_MASTER, COMMAND_MEMORY, REG_COMMAND};
use gpu_hostmem_virtio_gpu::engine::VirtioGpu;
use gpu_hostmem_virtio_gpu::gpu2d::HDR_LEN;
use gpu_hostmem_virtio_gpu::layout::*;
use gpu_hostmem_virtio_gpu::memory::{GuestMemory, SimMemory};
use gpu_hostmem_virtio_gpu::Action;

pub const REGS: u64 = 0xfeb0_0000;
pub const COMMON: u64 = REGS + COMMON_OFFSET;
pub const NOTIFY: u64 = REGS + NOTIFY_OFFSET;
pub const ISR: u64 = REGS + ISR_OFFSET;
/// Control queue rings at 0x1_0000 (descriptors), +0x1000 (avail), +0x3000
/// (used); cursor queue at 0x8_0000.
pub const RINGS: [u64; 2] = [0x1_0000, 0x8_0000];
pub const SIZES: [u16; 2] = [256, 16];
/// Descriptor pairs of the control queue: 128 commands in flight.
pub const PAIRS: u16 = 128;
const BUFS: u64 = 0x10_0000;

/// `VIRTIO_GPU_FLAG_FENCE`.
pub const FLAG_FENCE: u32 = 1;
/// `VIRTIO_GPU_FLAG_INFO_RING_IDX`.
pub const FLAG_RING: u32 = 2;

/// A response the device returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resp {
    /// Which command (the number `post` gave).
    pub n: u64,
    pub ty: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ring: u8,
}

pub struct Guest {
    pub dev: VirtioGpu,
    pub mem: SimMemory,
    pub irq: bool,
    avail_idx: u16,
    used_seen: u16,
    posted: u64,
    /// Command number posted on each descriptor pair.
    on_pair: Vec<Option<u64>>,
    next_pair: u16,
}

impl Guest {
    pub fn with(dev: VirtioGpu) -> Guest {
        let mut g = Guest {
            dev,
            mem: SimMemory::new(16 << 20),
            irq: false,
            avail_idx: 0,
            used_seen: 0,
            posted: 0,
            on_pair: vec![None; usize::from(PAIRS)],
            next_pair: 0,
        };
        g.dev.config_write(REG_BAR2, 4, REGS as u32);
        g.dev
            .config_write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
        g
    }

    pub fn apply(&mut self, a: Action) -> Action {
        if let Some(l) = a.intx {
            self.irq = l;
        }
        a
    }

    pub fn w(&mut self, addr: u64, size: u32, v: u64) -> Action {
        let a = self
            .dev
            .mmio_write(&mut self.mem, addr, size, v)
            .expect("BAR2");
        self.apply(a)
    }

    pub fn r(&mut self, addr: u64, size: u32) -> u64 {
        let (v, a) = self.dev.mmio_read(addr, size).expect("BAR2");
        self.apply(a);
        v
    }

    /// A Linux-like probe to DRIVER_OK with both queues, fresh rings.
    pub fn probe(&mut self) -> Action {
        self.w(COMMON + common::STATUS, 1, 0);
        self.avail_idx = 0;
        self.used_seen = 0;
        self.next_pair = 0;
        self.on_pair = vec![None; usize::from(PAIRS)];
        for base in RINGS {
            self.mem.write(base + 0x1000, &[0; 0x4000]).expect("zero");
        }
        self.w(COMMON + common::STATUS, 1, 3);
        self.w(COMMON + common::GFSELECT, 4, 1);
        self.w(COMMON + common::GF, 4, 1); // VERSION_1 (bit 32)
        self.w(COMMON + common::STATUS, 1, 3 | 8);
        for q in 0..2u16 {
            let base = RINGS[usize::from(q)];
            self.w(COMMON + common::Q_SELECT, 2, u64::from(q));
            self.w(COMMON + common::Q_SIZE, 2, u64::from(SIZES[usize::from(q)]));
            self.w(COMMON + common::Q_DESCLO, 4, base);
            self.w(COMMON + common::Q_AVAILLO, 4, base + 0x1000);
            self.w(COMMON + common::Q_USEDLO, 4, base + 0x3000);
            self.w(COMMON + common::Q_ENABLE, 2, 1);
        }
        self.w(COMMON + common::STATUS, 1, 3 | 8 | 4)
    }

    fn desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write(RINGS[0] + 16 * u64::from(i), &b)
            .expect("desc");
    }

    /// Posts `req` on the next free descriptor pair (or, `reuse`, on the
    /// next pair whatever it holds: what a hostile driver does) without
    /// kicking; returns its number.
    pub fn post_with(&mut self, req: &[u8], reuse: bool) -> u64 {
        let pair = if reuse {
            let p = self.next_pair;
            self.next_pair = (p + 1) % PAIRS;
            p
        } else {
            let free = (0..PAIRS)
                .map(|k| (self.next_pair + k) % PAIRS)
                .find(|&p| self.on_pair[usize::from(p)].is_none())
                .expect("a free descriptor pair");
            self.next_pair = (free + 1) % PAIRS;
            free
        };
        let (rq, rs) = (
            BUFS + 0x1000 * u64::from(pair),
            BUFS + 0x1000 * u64::from(pair) + 0x800,
        );
        self.mem.write(rq, req).expect("req");
        self.mem.write(rs, &[0xee; 64]).expect("resp");
        let d = 2 * pair;
        self.desc(d, rq, req.len() as u32, 1, d + 1);
        self.desc(d + 1, rs, 512, 2, 0);
        let n = self.posted;
        self.posted += 1;
        self.on_pair[usize::from(pair)] = Some(n);
        let slot = u64::from(self.avail_idx % SIZES[0]);
        self.mem
            .write(RINGS[0] + 0x1000 + 4 + 2 * slot, &d.to_le_bytes())
            .expect("ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write(RINGS[0] + 0x1002, &self.avail_idx.to_le_bytes())
            .expect("idx");
        n
    }

    pub fn post(&mut self, req: &[u8]) -> u64 {
        self.post_with(req, false)
    }

    pub fn kick(&mut self) -> Action {
        self.w(NOTIFY, 2, 0)
    }

    /// Posts, kicks, and returns what came back.
    pub fn command(&mut self, req: &[u8]) -> (u64, Vec<Resp>) {
        let n = self.post(req);
        self.kick();
        (n, self.used())
    }

    /// The device's fence poll (as the server calls it).
    pub fn poll(&mut self) -> Vec<Resp> {
        let a = self.dev.poll_renderer(&mut self.mem);
        self.apply(a);
        self.used()
    }

    /// The used entries since the last call, in used-ring order.
    pub fn used(&mut self) -> Vec<Resp> {
        let idx = self.mem.read_u16(RINGS[0] + 0x3002).expect("used idx");
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % SIZES[0]);
            let head = self
                .mem
                .read_u32(RINGS[0] + 0x3004 + 8 * slot)
                .expect("used elem") as u16;
            self.used_seen = self.used_seen.wrapping_add(1);
            let pair = head / 2;
            let n = self.on_pair[usize::from(pair)]
                .take()
                .expect("a used entry for a descriptor in use");
            let rs = BUFS + 0x1000 * u64::from(pair) + 0x800;
            let mut h = [0u8; HDR_LEN];
            self.mem.read(rs, &mut h).expect("resp");
            out.push(Resp {
                n,
                ty: u32::from_le_bytes(h[0..4].try_into().expect("4")),
                flags: u32::from_le_bytes(h[4..8].try_into().expect("4")),
                fence_id: u64::from_le_bytes(h[8..16].try_into().expect("8")),
                ring: h[20],
            });
        }
        out
    }
}

/// A request: header (`flags`, `fence_id`, `ctx`, `ring`) and words.
pub fn req(ty: u32, flags: u32, fence_id: u64, ctx: u32, ring: u8, words: &[u32]) -> Vec<u8> {
    let mut v = vec![0u8; HDR_LEN];
    v[0..4].copy_from_slice(&ty.to_le_bytes());
    v[4..8].copy_from_slice(&flags.to_le_bytes());
    v[8..16].copy_from_slice(&fence_id.to_le_bytes());
    v[16..20].copy_from_slice(&ctx.to_le_bytes());
    v[20] = ring;
    for w in words {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

/// CTX_CREATE of `ctx` with `capset`.
pub fn ctx_create(ctx: u32, capset: u32) -> Vec<u8> {
    let mut v = req(0x200, 0, 0, ctx, 0, &[0, capset]);
    v.extend_from_slice(&[0; 64]);
    v
}

/// SUBMIT_3D of `stream` dwords in `ctx`; fenced with `fence` (id, ring
/// or None for the global timeline) if given.
pub fn submit(ctx: u32, fence: Option<(u64, Option<u8>)>, stream: &[u32]) -> Vec<u8> {
    let (flags, id, ring) = match fence {
        None => (0, 0, 0),
        Some((id, None)) => (FLAG_FENCE, id, 0),
        Some((id, Some(r))) => (FLAG_FENCE | FLAG_RING, id, r),
    };
    let mut v = req(0x207, flags, id, ctx, ring, &[4 * stream.len() as u32, 0]);
    for w in stream {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

/// Fenced GET_DISPLAY_INFO: a command the device does itself.
pub fn display_info(fence: Option<(u64, Option<u8>)>) -> Vec<u8> {
    let (flags, id, ring) = match fence {
        None => (0, 0, 0),
        Some((id, None)) => (FLAG_FENCE, id, 0),
        Some((id, Some(r))) => (FLAG_FENCE | FLAG_RING, id, r),
    };
    req(0x100, flags, id, 0, ring, &[])
}

/// The command numbers of `r`.
pub fn ns(r: &[Resp]) -> Vec<u64> {
    r.iter().map(|x| x.n).collect()
}

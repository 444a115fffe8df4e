//! The device side of the split ring against a driver that writes the
//! rings in simulated guest memory: round trips, index wrap-around,
//! interrupt suppression, resuming, every rule a hostile driver can break,
//! and a property test over arbitrary ring contents.

use gpu_hostmem_virtio_gpu::memory::{GuestMemory, MemError, SimMemory};
use gpu_hostmem_virtio_gpu::queue::{Buffer, QueueError, SplitQueue};
use gpu_hostmem_virtio_gpu::transport::QueueConfig;
use proptest::prelude::*;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// The driver's side of one queue, as Linux's virtio_ring lays it out.
struct Driver {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    next_desc: u16,
    last_used: u16,
}

impl Driver {
    fn new(size: u16, base: u64) -> (Driver, QueueConfig) {
        let d = Driver {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            next_desc: 0,
            last_used: 0,
        };
        let cfg = QueueConfig {
            max_size: size,
            size,
            enabled: true,
            desc: d.desc,
            driver: d.avail,
            device: d.used,
        };
        (d, cfg)
    }

    fn write_desc(&self, m: &mut SimMemory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        m.write(self.desc + 16 * u64::from(i), &b).expect("desc");
    }

    /// Posts buffers `(addr, len, device_writable)` as one chain.
    fn post(&mut self, m: &mut SimMemory, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let last = k + 1 == bufs.len();
            let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
            self.write_desc(m, i, addr, len, flags, self.next_desc);
        }
        self.publish(m, head);
        head
    }

    fn publish(&mut self, m: &mut SimMemory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        m.write(self.avail + 4 + 2 * slot, &head.to_le_bytes())
            .expect("ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write(self.avail + 2, &self.avail_idx.to_le_bytes())
            .expect("idx");
    }

    fn used(&mut self, m: &mut SimMemory) -> Vec<(u32, u32)> {
        let idx = m.read_u16(self.used + 2).expect("used idx");
        let mut out = Vec::new();
        while self.last_used != idx {
            let slot = u64::from(self.last_used % self.size);
            let at = self.used + 4 + 8 * slot;
            out.push((
                m.read_u32(at).expect("id"),
                m.read_u32(at + 4).expect("len"),
            ));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }
}

fn setup(size: u16) -> (SimMemory, Driver, SplitQueue) {
    let mem = SimMemory::new(1 << 20);
    let (d, cfg) = Driver::new(size, 0x1_0000);
    let q = SplitQueue::new(&cfg).expect("queue");
    (mem, d, q)
}

#[test]
fn a_command_and_its_response_round_trip() {
    let (mut m, mut d, mut q) = setup(8);
    m.write(0x4_0000, b"hdr-").expect("w");
    m.write(0x5_0000, b"body").expect("w");
    let head = d.post(
        &mut m,
        &[
            (0x4_0000, 4, false),
            (0x5_0000, 4, false),
            (0x6_0000, 16, true),
        ],
    );
    let chain = q.pop(&mut m).expect("valid").expect("posted");
    assert_eq!(chain.head, head);
    assert_eq!(chain.readable_len(), 8);
    assert_eq!(
        chain.writable,
        vec![Buffer {
            addr: 0x6_0000,
            len: 16
        }]
    );
    assert_eq!(chain.read_to_vec(&mut m, 1024).expect("read"), b"hdr-body");
    assert_eq!(
        chain.read_to_vec(&mut m, 6).expect("read"),
        b"hdr-bo",
        "limited"
    );
    let n = chain.write_from(&mut m, b"response").expect("write");
    q.push_used(&mut m, chain.head, n).expect("push");
    assert_eq!(d.used(&mut m), vec![(u32::from(head), 8)]);
    let mut r = [0u8; 8];
    m.read(0x6_0000, &mut r).expect("r");
    assert_eq!(&r, b"response");
    assert_eq!(q.pop(&mut m), Ok(None), "nothing more");
}

#[test]
fn indices_wrap_around_u16() {
    let (mut m, mut d, mut q) = setup(4);
    for round in 0..70_000u32 {
        let head = d.post(&mut m, &[(0x4_0000, 4, false), (0x5_0000, 4, true)]);
        let c = q.pop(&mut m).expect("valid").expect("posted");
        assert_eq!(c.head, head, "round {round}");
        q.push_used(&mut m, c.head, 4).expect("push");
        assert_eq!(d.used(&mut m), vec![(u32::from(head), 4)], "round {round}");
    }
    assert_eq!(q.next_avail(), (70_000u32 % 65_536) as u16);
}

#[test]
fn interrupts_follow_the_no_interrupt_flag() {
    let (mut m, _d, q) = setup(4);
    assert_eq!(q.wants_interrupt(&mut m), Ok(true));
    m.write(0x1_1000, &1u16.to_le_bytes()).expect("flags");
    assert_eq!(q.wants_interrupt(&mut m), Ok(false));
}

#[test]
fn a_resumed_queue_continues_where_the_last_one_stopped() {
    let (mut m, mut d, mut q) = setup(4);
    d.post(&mut m, &[(0x4_0000, 4, false)]);
    let c = q.pop(&mut m).expect("ok").expect("one");
    q.push_used(&mut m, c.head, 0).expect("push");
    let second = d.post(&mut m, &[(0x4_0000, 4, false)]);
    let (_, cfg) = Driver::new(4, 0x1_0000);
    let mut q2 = SplitQueue::resume(&cfg, q.next_avail(), q.next_used()).expect("resume");
    assert_eq!(q2.pop(&mut m).expect("ok").expect("two").head, second);
}

#[test]
fn a_disabled_or_malformed_queue_is_refused() {
    let (_, cfg) = Driver::new(8, 0x1_0000);
    for bad in [
        QueueConfig {
            enabled: false,
            ..cfg
        },
        QueueConfig { size: 6, ..cfg },
        QueueConfig {
            desc: cfg.desc + 8,
            ..cfg
        },
        QueueConfig {
            device: cfg.device + 2,
            ..cfg
        },
        // Rings that would end beyond 2^64: the device's index arithmetic
        // must never overflow.
        QueueConfig {
            desc: u64::MAX - 15,
            ..cfg
        },
        QueueConfig {
            driver: u64::MAX - 1,
            ..cfg
        },
        QueueConfig {
            device: u64::MAX - 3,
            ..cfg
        },
    ] {
        assert_eq!(SplitQueue::new(&bad), Err(QueueError::Malformed), "{bad:?}");
    }
}

#[test]
fn every_rule_a_hostile_driver_can_break_is_an_error() {
    // The available index jumps past the queue size.
    let (mut m, d, mut q) = setup(4);
    m.write(d.avail + 2, &5u16.to_le_bytes()).expect("w");
    assert!(matches!(
        q.pop(&mut m),
        Err(QueueError::AvailIndex { ahead: 5, .. })
    ));

    // A head out of range.
    let (mut m, mut d, mut q) = setup(4);
    d.publish(&mut m, 4);
    assert_eq!(q.pop(&mut m), Err(QueueError::Index(4)));

    // A next out of range.
    let (mut m, mut d, mut q) = setup(4);
    d.write_desc(&mut m, 0, 0x4_0000, 4, NEXT, 9);
    d.publish(&mut m, 0);
    assert_eq!(q.pop(&mut m), Err(QueueError::Index(9)));

    // A loop: 0 -> 1 -> 0.
    let (mut m, mut d, mut q) = setup(4);
    d.write_desc(&mut m, 0, 0x4_0000, 4, NEXT, 1);
    d.write_desc(&mut m, 1, 0x4_0000, 4, NEXT, 0);
    d.publish(&mut m, 0);
    assert_eq!(q.pop(&mut m), Err(QueueError::Loop(0)));

    // Readable after writable.
    let (mut m, mut d, mut q) = setup(4);
    d.write_desc(&mut m, 0, 0x4_0000, 4, WRITE | NEXT, 1);
    d.write_desc(&mut m, 1, 0x4_0000, 4, 0, 0);
    d.publish(&mut m, 0);
    assert_eq!(q.pop(&mut m), Err(QueueError::Order(1)));

    // Indirect, not negotiated.
    let (mut m, mut d, mut q) = setup(4);
    d.write_desc(&mut m, 0, 0x4_0000, 16, INDIRECT, 0);
    d.publish(&mut m, 0);
    assert_eq!(q.pop(&mut m), Err(QueueError::Indirect(0)));

    // addr + len overflows; the total length overflows 32 bits.
    let (mut m, mut d, mut q) = setup(4);
    d.write_desc(&mut m, 0, u64::MAX - 2, 4, 0, 0);
    d.publish(&mut m, 0);
    assert_eq!(q.pop(&mut m), Err(QueueError::Overflow(0)));
    let (mut m, mut d, mut q) = setup(4);
    d.write_desc(&mut m, 0, 0, u32::MAX, NEXT, 1);
    d.write_desc(&mut m, 1, 0, 1, 0, 0);
    d.publish(&mut m, 0);
    assert_eq!(q.pop(&mut m), Err(QueueError::Overflow(1)));

    // The descriptor table on a page the device cannot map.
    let (mut m, mut d, mut q) = setup(4);
    d.publish(&mut m, 0);
    m.punch_hole(0x1_0000 >> 12);
    assert_eq!(
        q.pop(&mut m),
        Err(QueueError::Memory(MemError::Unmapped { gfn: 0x10 }))
    );

    // A buffer there: the chain is fine, copying from it is not.
    let (mut m, mut d, mut q) = setup(4);
    d.post(&mut m, &[(0x8_0000, 4, false)]);
    m.punch_hole(0x80);
    let c = q.pop(&mut m).expect("ok").expect("one");
    assert_eq!(
        c.read_to_vec(&mut m, 64),
        Err(MemError::Unmapped { gfn: 0x80 })
    );
}

proptest! {
    /// Whatever the driver writes into the descriptor table and the
    /// available ring, pop ends (no loop, no panic) with an error or a
    /// chain that obeys every rule.
    #[test]
    fn arbitrary_rings_give_valid_chains_or_errors(
        table in prop::collection::vec(any::<u8>(), 16 * 8),
        ring in prop::collection::vec(any::<u16>(), 8),
        avail_idx in any::<u16>(),
        start in any::<u16>(),
    ) {
        let mut m = SimMemory::new(1 << 20);
        let (d, cfg) = Driver::new(8, 0x1_0000);
        m.write(d.desc, &table).expect("table");
        for (i, h) in ring.iter().enumerate() {
            m.write(d.avail + 4 + 2 * i as u64, &h.to_le_bytes()).expect("ring");
        }
        m.write(d.avail + 2, &avail_idx.to_le_bytes()).expect("idx");
        let mut q = SplitQueue::resume(&cfg, start, start).expect("queue");
        for _ in 0..16 {
            match q.pop(&mut m) {
                Ok(None) | Err(_) => break,
                Ok(Some(c)) => {
                    prop_assert!(c.head < 8);
                    prop_assert!(c.readable.len() + c.writable.len() <= 8);
                    prop_assert!(c.readable_len() + c.writable_len() <= u64::from(u32::MAX));
                    for b in c.readable.iter().chain(&c.writable) {
                        prop_assert!(b.addr.checked_add(u64::from(b.len)).is_some());
                    }
                }
            }
        }
    }
}

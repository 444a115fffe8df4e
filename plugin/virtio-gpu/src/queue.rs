//! The device side of a split virtqueue (virtio 1.2, 2.7) over
//! [`GuestMemory`].
//!
//! The guest owns the rings and may write anything into them at any time.
//! Every index and descriptor is copied once and checked before use; a
//! ring that breaks a rule is an error ([`QueueError`]), after which the
//! device must stop using the queue and set NEEDS_RESET
//! ([`crate::transport::Transport::set_needs_reset`]). Rules checked:
//!
//! - the available index moves by at most the queue size;
//! - a head and every `next` is below the queue size;
//! - a chain has at most queue-size descriptors (no loops);
//! - device-writable descriptors come after all device-readable ones;
//! - `addr + len` does not overflow and the chain's total length fits in
//!   32 bits;
//! - no indirect descriptors: `VIRTIO_RING_F_INDIRECT_DESC` is not offered.
//!
//! No `VIRTIO_RING_F_EVENT_IDX` either: the driver suppresses interrupts
//! with `VRING_AVAIL_F_NO_INTERRUPT` only.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

use crate::memory::{GuestMemory, MemError};
use crate::transport::QueueConfig;

/// Size of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// Offset of `idx` in the driver (available) and device (used) areas.
const IDX: u64 = 2;
/// Offset of the ring in the driver and device areas.
const RING: u64 = 4;
/// Size of one used element (`id` u32, `len` u32).
const USED_ELEM: u64 = 8;

/// A rule the driver's ring broke, or memory the device could not reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue configuration is not a usable split ring.
    #[error("queue configuration is not a well-formed split ring")]
    Malformed,
    /// The available index moved by more than the queue size.
    #[error("available index {avail} is {ahead} ahead of {next}, queue size {size}")]
    AvailIndex {
        /// The driver's index.
        avail: u16,
        /// Ours.
        next: u16,
        /// The distance.
        ahead: u16,
        /// Queue size.
        size: u16,
    },
    /// A head or `next` index at or above the queue size.
    #[error("descriptor index {0} out of range")]
    Index(u16),
    /// A chain longer than the queue (a loop).
    #[error("descriptor chain from {0} longer than the queue")]
    Loop(u16),
    /// A device-readable descriptor after a device-writable one.
    #[error("readable descriptor {0} after a writable one")]
    Order(u16),
    /// An indirect descriptor (not negotiated).
    #[error("indirect descriptor {0} without VIRTIO_RING_F_INDIRECT_DESC")]
    Indirect(u16),
    /// `addr + len` overflows, or the chain's length does not fit 32 bits.
    #[error("descriptor {0} range overflows")]
    Overflow(u16),
    /// Guest memory could not be read or written.
    #[error("guest memory: {0}")]
    Memory(#[from] MemError),
}

/// One buffer of a chain: guest-physical start and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A descriptor chain taken from the available ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The head's index, to return in the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Buffer>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Buffer>,
}

impl Chain {
    /// Total bytes of the readable part.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Total bytes of the writable part.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Copies up to `limit` bytes of the readable part out of guest memory.
    pub fn read_to_vec(
        &self,
        mem: &mut impl GuestMemory,
        limit: usize,
    ) -> Result<Vec<u8>, MemError> {
        let total = usize::try_from(self.readable_len()).unwrap_or(usize::MAX);
        let mut out = vec![0u8; total.min(limit)];
        let mut at = 0;
        for b in &self.readable {
            if at == out.len() {
                break;
            }
            let n = (b.len as usize).min(out.len() - at);
            mem.read(b.addr, &mut out[at..at + n])?;
            at += n;
        }
        Ok(out)
    }

    /// Writes `data` into the writable part, as far as it goes; returns the
    /// bytes written (the `len` of the used element).
    pub fn write_from(&self, mem: &mut impl GuestMemory, data: &[u8]) -> Result<u32, MemError> {
        let mut at = 0;
        for b in &self.writable {
            if at == data.len() {
                break;
            }
            let n = (b.len as usize).min(data.len() - at);
            mem.write(b.addr, &data[at..at + n])?;
            at += n;
        }
        // The writable part is at most u32::MAX bytes (checked at pop).
        Ok(u32::try_from(at).unwrap_or(u32::MAX))
    }
}

/// The device's state of one split virtqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

impl SplitQueue {
    /// The queue the driver configured, from its first entry.
    pub fn new(cfg: &QueueConfig) -> Result<Self, QueueError> {
        Self::resume(cfg, 0, 0)
    }

    /// The queue at the given ring positions (a restarted worker resumes
    /// where the saved state says).
    pub fn resume(cfg: &QueueConfig, next_avail: u16, next_used: u16) -> Result<Self, QueueError> {
        if !cfg.enabled || !cfg.is_well_formed() {
            return Err(QueueError::Malformed);
        }
        Ok(SplitQueue {
            size: cfg.size,
            desc: cfg.desc,
            avail: cfg.driver,
            used: cfg.device,
            next_avail,
            next_used,
        })
    }

    /// Where the device is in the available ring.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Where the device is in the used ring.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Takes the next available chain, if the driver posted one.
    pub fn pop(&mut self, mem: &mut impl GuestMemory) -> Result<Option<Chain>, QueueError> {
        let avail_idx = mem.read_u16(self.avail + IDX)?;
        let ahead = avail_idx.wrapping_sub(self.next_avail);
        if ahead == 0 {
            return Ok(None);
        }
        if ahead > self.size {
            return Err(QueueError::AvailIndex {
                avail: avail_idx,
                next: self.next_avail,
                ahead,
                size: self.size,
            });
        }
        // Read the ring entry and descriptors only after the index (the
        // driver wrote them before it published the index).
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail % self.size);
        let head = mem.read_u16(self.avail + RING + 2 * slot)?;
        let chain = self.walk(mem, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    fn walk(&self, mem: &mut impl GuestMemory, head: u16) -> Result<Chain, QueueError> {
        let mut chain = Chain {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
        };
        let mut index = head;
        let mut total: u64 = 0;
        for _ in 0..self.size {
            if index >= self.size {
                return Err(QueueError::Index(index));
            }
            let mut d = [0u8; DESC_SIZE as usize];
            mem.read(self.desc + DESC_SIZE * u64::from(index), &mut d)?;
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
            let flags = u16::from_le_bytes(d[12..14].try_into().unwrap_or_default());
            let next = u16::from_le_bytes(d[14..16].try_into().unwrap_or_default());
            if u32::from(flags) & VRING_DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect(index));
            }
            total += u64::from(len);
            if addr.checked_add(u64::from(len)).is_none() || total > u64::from(u32::MAX) {
                return Err(QueueError::Overflow(index));
            }
            let buf = Buffer { addr, len };
            if u32::from(flags) & VRING_DESC_F_WRITE != 0 {
                chain.writable.push(buf);
            } else if chain.writable.is_empty() {
                chain.readable.push(buf);
            } else {
                return Err(QueueError::Order(index));
            }
            if u32::from(flags) & VRING_DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            index = next;
        }
        Err(QueueError::Loop(head))
    }

    /// Returns a chain to the driver with `len` bytes written.
    pub fn push_used(
        &mut self,
        mem: &mut impl GuestMemory,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        let slot = u64::from(self.next_used % self.size);
        let mut elem = [0u8; USED_ELEM as usize];
        elem[0..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..8].copy_from_slice(&len.to_le_bytes());
        mem.write(self.used + RING + USED_ELEM * slot, &elem)?;
        // The element must be visible before the index that publishes it.
        fence(Ordering::Release);
        self.next_used = self.next_used.wrapping_add(1);
        mem.write(self.used + IDX, &self.next_used.to_le_bytes())?;
        Ok(())
    }

    /// Whether the driver wants an interrupt for used buffers now.
    pub fn wants_interrupt(&self, mem: &mut impl GuestMemory) -> Result<bool, QueueError> {
        fence(Ordering::SeqCst);
        let flags = mem.read_u16(self.avail)?;
        Ok(u32::from(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0)
    }
}

//! The shared ioreq page: one 32-byte `ioreq_t` per vCPU, written by Xen and
//! by us concurrently. Never handed out as `&mut`: the slot is copied out
//! with volatile reads after an Acquire load of the state byte, and our
//! response is written with volatile stores before a Release store of the
//! state byte (the layout and decoding live in `gpu_hostmem_core::ioreq`).

use gpu_hostmem_core::ioreq::{Ioreq, IOREQ_SIZE, IOREQ_STATE_OFFSET};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

/// Size of the ioreq page.
pub const PAGE_SIZE: usize = 4096;
/// vCPU slots in one ioreq page.
pub const MAX_SLOTS: u32 = (PAGE_SIZE / IOREQ_SIZE) as u32;

const OFF_DATA: usize = 8;
const OFF_VP_EPORT: usize = 24;
const STATE_MASK: u8 = 0x0f;

/// The vCPU slots of a mapped ioreq page.
#[derive(Debug)]
pub struct IoreqSlots {
    base: NonNull<u8>,
    nr: u32,
}

impl IoreqSlots {
    /// Wraps `nr` slots starting at `base`.
    ///
    /// # Safety
    /// `base` must point to at least `nr * IOREQ_SIZE` bytes, 8-byte
    /// aligned, readable and writable for the lifetime of the returned value,
    /// and only ever accessed by other parties (Xen) with the ioreq protocol.
    pub unsafe fn from_raw(base: NonNull<u8>, nr: u32) -> Self {
        Self { base, nr }
    }

    /// Number of slots.
    pub fn len(&self) -> u32 {
        self.nr
    }

    /// Whether there is no slot.
    pub fn is_empty(&self) -> bool {
        self.nr == 0
    }

    fn slot(&self, vcpu: u32) -> Option<*mut u8> {
        if vcpu >= self.nr {
            return None;
        }
        // SAFETY: in bounds of the region promised by `from_raw`.
        Some(unsafe { self.base.as_ptr().add(vcpu as usize * IOREQ_SIZE) })
    }

    fn flags(&self, slot: *mut u8) -> &AtomicU8 {
        // SAFETY: the state byte is inside the slot, valid for `self`'s
        // lifetime; every access we make to it goes through this atomic (Xen
        // uses its own barriers). AtomicU8 has the alignment of u8.
        unsafe { AtomicU8::from_ptr(slot.add(IOREQ_STATE_OFFSET)) }
    }

    /// The state of a slot (Acquire), or None for an out-of-range vCPU.
    pub fn state(&self, vcpu: u32) -> Option<u8> {
        let slot = self.slot(vcpu)?;
        Some(self.flags(slot).load(Ordering::Acquire) & STATE_MASK)
    }

    /// Copies the whole slot out: the state byte with Acquire first, then
    /// the other bytes (volatile: Xen may write them at any time).
    pub fn read(&self, vcpu: u32) -> Option<Ioreq> {
        let slot = self.slot(vcpu)?;
        let mut b = [0u8; IOREQ_SIZE];
        b[IOREQ_STATE_OFFSET] = self.flags(slot).load(Ordering::Acquire);
        for (i, byte) in b.iter_mut().enumerate() {
            if i != IOREQ_STATE_OFFSET {
                // SAFETY: `i < IOREQ_SIZE`, so `slot + i` is a byte of this
                // vCPU's slot, which `from_raw`'s contract keeps readable
                // for `self`'s lifetime; a byte read has no alignment
                // requirement, and volatile because Xen may write it.
                *byte = unsafe { slot.add(i).read_volatile() };
            }
        }
        Some(Ioreq::from_bytes(&b))
    }

    /// The event channel port Xen assigned to `vcpu` (0 until the server is
    /// enabled: Xen writes the ports when it enables the server).
    pub fn vp_eport(&self, vcpu: u32) -> Option<u32> {
        let slot = self.slot(vcpu)?;
        // SAFETY: in bounds; 4-byte aligned (base 8-aligned, slot 32 bytes).
        Some(unsafe { slot.add(OFF_VP_EPORT).cast::<u32>().read_volatile() })
    }

    /// Release-stores `state`, keeping the other bit-fields of the byte.
    pub fn set_state(&self, vcpu: u32, state: u8) -> bool {
        let Some(slot) = self.slot(vcpu) else {
            return false;
        };
        let atom = self.flags(slot);
        let old = atom.load(Ordering::Relaxed);
        atom.store(
            (old & !STATE_MASK) | (state & STATE_MASK),
            Ordering::Release,
        );
        true
    }

    /// Writes `data`, then Release-stores `state` (IORESP_READY or
    /// IORESP_RETRY).
    pub fn complete(&self, vcpu: u32, data: u64, state: u8) -> bool {
        let Some(slot) = self.slot(vcpu) else {
            return false;
        };
        // SAFETY: in bounds; 8-byte aligned. Xen does not touch the slot
        // while it is INPROCESS.
        unsafe { slot.add(OFF_DATA).cast::<u64>().write_volatile(data) };
        self.set_state(vcpu, state)
    }

    /// Test/simulation helper: writes a whole request into a slot, the
    /// state byte last with Release (what Xen does when it posts a request).
    pub fn post(&self, vcpu: u32, req: &Ioreq) -> bool {
        let Some(slot) = self.slot(vcpu) else {
            return false;
        };
        let bytes = req.to_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if i != IOREQ_STATE_OFFSET {
                // SAFETY: `i < IOREQ_SIZE`, so `slot + i` is a byte of this
                // vCPU's slot, writable for `self`'s lifetime (`from_raw`);
                // the state byte is not written here, so a reader that
                // sees READY sees these bytes (Release below).
                unsafe { slot.add(i).write_volatile(*b) };
            }
        }
        self.flags(slot)
            .store(bytes[IOREQ_STATE_OFFSET], Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_hostmem_core::ioreq::{
        IOREQ_READ, IOREQ_TYPE_COPY, STATE_IOREQ_INPROCESS, STATE_IOREQ_READY, STATE_IORESP_READY,
        STATE_IORESP_RETRY,
    };

    #[repr(C, align(4096))]
    struct Page([u8; PAGE_SIZE]);

    fn with_slots(nr: u32, f: impl FnOnce(&IoreqSlots, &Page)) {
        let mut p = Box::new(Page([0; PAGE_SIZE]));
        let base = NonNull::new(p.0.as_mut_ptr()).expect("non-null");
        // SAFETY: the page is 4 KiB, 4096-aligned, and outlives `s`.
        let s = unsafe { IoreqSlots::from_raw(base, nr) };
        f(&s, &p);
    }

    fn mmio_read() -> Ioreq {
        Ioreq {
            addr: 0xf000_0010,
            data: 0,
            count: 1,
            size: 4,
            vp_eport: 33,
            state: STATE_IOREQ_READY,
            data_is_ptr: false,
            dir: IOREQ_READ,
            df: false,
            kind: IOREQ_TYPE_COPY,
        }
    }

    #[test]
    fn request_round_trip_through_the_page() {
        with_slots(2, |s, _| {
            assert!(s.post(1, &mmio_read()));
            assert_eq!(s.state(0), Some(0), "vCPU 0 untouched");
            assert_eq!(s.state(1), Some(STATE_IOREQ_READY));
            assert_eq!(s.read(1), Some(mmio_read()));
            assert_eq!(s.vp_eport(1), Some(33));
            assert!(s.set_state(1, STATE_IOREQ_INPROCESS));
            assert!(s.complete(1, 0xdead_beef, STATE_IORESP_READY));
            let done = s.read(1).expect("slot");
            assert_eq!(done.state, STATE_IORESP_READY);
            assert_eq!(done.data, 0xdead_beef);
            assert_eq!(done.dir, IOREQ_READ, "other bit-fields kept");
        });
    }

    #[test]
    fn bytes_land_at_the_c_offsets() {
        // Offsets checked against xen/include/public/hvm/ioreq.h with gcc:
        // vp_eport at 24, the state:4/data_is_ptr/dir/df byte at 30, type at 31.
        with_slots(1, |s, p| {
            s.post(0, &mmio_read());
            s.complete(0, 0x1122_3344, STATE_IORESP_RETRY);
            assert_eq!(p.0[8..12], 0x1122_3344u32.to_le_bytes());
            assert_eq!(p.0[24..28], 33u32.to_le_bytes());
            assert_eq!(p.0[30], 0b0010_0000 | STATE_IORESP_RETRY);
            assert_eq!(p.0[31], IOREQ_TYPE_COPY);
        });
    }

    #[test]
    fn out_of_range_vcpu_is_refused() {
        with_slots(1, |s, _| {
            assert_eq!(s.state(1), None);
            assert_eq!(s.read(5), None);
            assert!(!s.set_state(1, STATE_IOREQ_INPROCESS));
            assert!(!s.complete(1, 0, STATE_IORESP_READY));
            assert!(!s.post(1, &mmio_read()));
            assert_eq!(s.vp_eport(1), None);
        });
    }
}

//! Guest memory as the device model sees it: fallible copies in and out at
//! guest-physical addresses. On Xen the implementation maps the guest's
//! frames on demand through the worker's restricted foreignmemory handle
//! (stage 1c); [`SimMemory`] is the same contract over a vector, with holes,
//! for tests and the simulator.
//!
//! Everything read from guest memory is a copy: the guest can change its
//! memory at any time, so the device parses what it copied once and never
//! reads the same field twice expecting the same value.

/// Why a guest memory access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// `addr + len` does not fit in 64 bits.
    #[error("guest range at {addr:#x} + {len:#x} overflows")]
    Overflow {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// Some page of the range is not guest RAM the device may map (a
    /// hole, MMIO, a lent page of the window, ballooned out).
    #[error("guest page {gfn:#x} cannot be mapped")]
    Unmapped {
        /// The first frame that failed.
        gfn: u64,
    },
}

/// Copies to and from guest-physical memory. On an error a prefix of the
/// range may have been copied (as a DMA that faults part way would); the
/// caller then fails the request as a whole.
pub trait GuestMemory {
    /// Fills `buf` from guest memory at `addr`.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Writes `buf` to guest memory at `addr`.
    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), MemError>;

    /// Drops every mapping held (the device was reset or detached): a
    /// mapping keeps a reference to the guest's page. Nothing to do for
    /// memory that maps nothing.
    fn forget_mappings(&mut self) {}

    /// Reads a little-endian u16.
    fn read_u16(&mut self, addr: u64) -> Result<u16, MemError> {
        let mut b = [0; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian u32.
    fn read_u32(&mut self, addr: u64) -> Result<u32, MemError> {
        let mut b = [0; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian u64.
    fn read_u64(&mut self, addr: u64) -> Result<u64, MemError> {
        let mut b = [0; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

const PAGE_SHIFT: u32 = 12;

fn end_of(addr: u64, len: usize) -> Result<u64, MemError> {
    addr.checked_add(len as u64).ok_or(MemError::Overflow {
        addr,
        len: len as u64,
    })
}

/// Guest RAM `[0, size)` in a vector, with pages that cannot be mapped.
#[derive(Clone, Debug)]
pub struct SimMemory {
    ram: Vec<u8>,
    holes: std::collections::BTreeSet<u64>,
}

impl SimMemory {
    /// `size` bytes of zeroed RAM from address 0.
    pub fn new(size: usize) -> Self {
        SimMemory {
            ram: vec![0; size],
            holes: Default::default(),
        }
    }

    /// Makes the page of `gfn` unmappable (as a lent or MMIO page is).
    pub fn punch_hole(&mut self, gfn: u64) {
        self.holes.insert(gfn);
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, MemError> {
        let end = end_of(addr, len)?;
        if len == 0 {
            return Ok(0..0);
        }
        let first = addr >> PAGE_SHIFT;
        let last = (end - 1) >> PAGE_SHIFT;
        if let Some(&gfn) = self.holes.range(first..=last).next() {
            return Err(MemError::Unmapped { gfn });
        }
        if end > self.ram.len() as u64 {
            let gfn = (addr.max(self.ram.len() as u64)) >> PAGE_SHIFT;
            return Err(MemError::Unmapped { gfn });
        }
        Ok(addr as usize..end as usize)
    }
}

impl GuestMemory for SimMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.ram[r]);
        Ok(())
    }

    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), MemError> {
        let r = self.range(addr, buf.len())?;
        self.ram[r].copy_from_slice(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_memory_refuses_holes_the_end_and_overflow() {
        let mut m = SimMemory::new(4 * 4096);
        m.write(4096 - 2, &[1, 2, 3, 4])
            .expect("straddles two pages");
        assert_eq!(m.read_u32(4096 - 2), Ok(0x0403_0201));
        m.punch_hole(2);
        assert_eq!(m.read_u32(2 * 4096 + 8), Err(MemError::Unmapped { gfn: 2 }));
        assert_eq!(
            m.write(2 * 4096 - 2, &[0; 4]),
            Err(MemError::Unmapped { gfn: 2 }),
            "a straddle into the hole"
        );
        assert_eq!(
            m.read_u16(4 * 4096 - 1),
            Err(MemError::Unmapped { gfn: 4 }),
            "past the end"
        );
        assert_eq!(
            m.read_u16(1 << 40),
            Err(MemError::Unmapped { gfn: 1 << 28 })
        );
        assert!(matches!(
            m.read_u64(u64::MAX - 3),
            Err(MemError::Overflow { .. })
        ));
        assert_eq!(
            m.read(u64::MAX, &mut []),
            Ok(()),
            "empty reads touch nothing"
        );
    }
}

//! The emulated PCI function: a type-0 configuration header with one 64-bit
//! prefetchable memory BAR (BAR0/BAR1), as a pure value.
//!
//! Writes go through per-register writable masks, so sizing by writing
//! all-ones and reading back needs no special case: the BAR's mask is
//! `!(size - 1)` over both dwords. The address is decoded from both dwords
//! after every write, as on hardware (and in QEMU and crosvm): a lower-dword
//! write moves the BAR at once, and a probe done with memory decode on moves
//! it for as long as the registers say so. The BAR is decoded only while
//! COMMAND.memory is set, its address is not 0 and it ends within
//! [`MAX_DECODE_END`]. A config write returns the MMIO diff ([`BarChange`]);
//! the caller applies it to Xen and the ledger.

use std::ops::Range;

/// Offset of VENDOR_ID/DEVICE_ID.
pub const REG_ID: u32 = 0x00;
/// Offset of COMMAND/STATUS.
pub const REG_COMMAND: u32 = 0x04;
/// Offset of REVISION/CLASS.
pub const REG_CLASS: u32 = 0x08;
/// Offset of the header-type dword.
pub const REG_HEADER: u32 = 0x0c;
/// Offset of BAR0 (lower dword of our 64-bit BAR).
pub const REG_BAR0: u32 = 0x10;
/// Offset of BAR1 (upper dword of our 64-bit BAR).
pub const REG_BAR1: u32 = 0x14;
/// Offset of SUBSYSTEM_VENDOR_ID/SUBSYSTEM_ID.
pub const REG_SUBSYSTEM: u32 = 0x2c;
/// Offset of INTERRUPT_LINE/PIN.
pub const REG_INTERRUPT: u32 = 0x3c;

/// COMMAND bit: memory space decode.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// COMMAND bit: bus master.
pub const COMMAND_MASTER: u16 = 1 << 2;
/// COMMAND bit: INTx disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// BAR low-dword type bits: memory, 64-bit, prefetchable.
pub const BAR_MEM64_PREFETCH: u32 = 0b1100;
/// Bits of a memory BAR's low dword that are not address bits.
pub const BAR_MEM_FLAGS_MASK: u32 = 0xf;

/// Smallest BAR we emulate (1 MiB).
pub const MIN_BAR_SIZE: u64 = 1 << 20;
/// Largest BAR we emulate (64 GiB).
pub const MAX_BAR_SIZE: u64 = 1 << 36;

/// End (exclusive) of the guest-physical addresses a BAR can decode:
/// x86-64's widest physical address (52 bits). A BAR placed beyond it (an
/// upper dword of all ones during a size probe, say) decodes nothing, as no
/// access can reach it; QEMU likewise leaves a BAR that wraps unmapped.
pub const MAX_DECODE_END: u64 = 1 << 52;

/// Size of the configuration space we emulate (the legacy 256 bytes;
/// extended registers read as zero and ignore writes).
pub const CONFIG_SPACE_SIZE: u32 = 256;
const NUM_DWORDS: usize = (CONFIG_SPACE_SIZE / 4) as usize;

/// Class code: processing accelerator (0x12), no programming interface.
pub const CLASS_PROCESSING_ACCELERATOR: u32 = 0x12_00_00;

/// Why a [`PciFunction`] cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// A saved state ([`PciFunction::restore`]) that does not parse.
    #[error("saved PCI state {0:?} is malformed")]
    BadSavedState(String),
    /// BAR size out of range or not a power of two.
    #[error("BAR size {0:#x} is not a power of two in [1 MiB, 64 GiB]")]
    BadBarSize(u64),
}

/// Identification registers of the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem: u16,
    /// Revision.
    pub revision: u8,
}

/// The MMIO effect of a config write: ranges of guest-physical addresses
/// (half-open) that stop or start being decoded as the BAR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BarChange {
    /// Range no longer decoded (unmap, revoke what was lent there).
    pub mmio_remove: Option<Range<u64>>,
    /// Range now decoded (map).
    pub mmio_add: Option<Range<u64>>,
}

impl BarChange {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.mmio_remove.is_none() && self.mmio_add.is_none()
    }
}

/// The configuration space of our single PCI function.
#[derive(Clone, Debug)]
pub struct PciFunction {
    regs: [u32; NUM_DWORDS],
    writable: [u32; NUM_DWORDS],
    bar_size: u64,
}

impl PciFunction {
    /// A function with a 64-bit prefetchable memory BAR of `bar_size` bytes.
    pub fn new(ids: PciIds, bar_size: u64) -> Result<Self, PciError> {
        if !bar_size.is_power_of_two() || !(MIN_BAR_SIZE..=MAX_BAR_SIZE).contains(&bar_size) {
            return Err(PciError::BadBarSize(bar_size));
        }
        let mut regs = [0u32; NUM_DWORDS];
        let mut writable = [0u32; NUM_DWORDS];
        regs[idx(REG_ID)] = u32::from(ids.vendor) | (u32::from(ids.device) << 16);
        regs[idx(REG_CLASS)] = CLASS_PROCESSING_ACCELERATOR << 8 | u32::from(ids.revision);
        regs[idx(REG_SUBSYSTEM)] =
            u32::from(ids.subsystem_vendor) | (u32::from(ids.subsystem) << 16);
        // COMMAND is the low half; STATUS (high half) is read-only zero.
        writable[idx(REG_COMMAND)] =
            u32::from(COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE);
        regs[idx(REG_BAR0)] = BAR_MEM64_PREFETCH;
        writable[idx(REG_BAR0)] = !((bar_size - 1) as u32) & !BAR_MEM_FLAGS_MASK;
        writable[idx(REG_BAR1)] = !((bar_size - 1) >> 32) as u32;
        // Cache line size and latency timer are plain scratch registers.
        writable[idx(REG_HEADER)] = 0x0000_ffff;
        // Interrupt line is scratch; pin 0: no interrupt.
        writable[idx(REG_INTERRUPT)] = 0x0000_00ff;
        Ok(PciFunction {
            regs,
            writable,
            bar_size,
        })
    }

    /// Size of the BAR in bytes.
    pub fn bar_size(&self) -> u64 {
        self.bar_size
    }

    /// The COMMAND register.
    pub fn command(&self) -> u16 {
        self.regs[idx(REG_COMMAND)] as u16
    }

    /// Guest-physical range the BAR decodes now, if any: decode enabled,
    /// an address other than 0, and the whole BAR below [`MAX_DECODE_END`].
    pub fn active_bar(&self) -> Option<Range<u64>> {
        if self.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        let base = self.bar_base();
        let end = base.checked_add(self.bar_size)?;
        (base != 0 && end <= MAX_DECODE_END).then_some(base..end)
    }

    /// The address in BAR0/BAR1 now (0 if none), whether decoded or not.
    pub fn bar_base(&self) -> u64 {
        let lo = self.regs[idx(REG_BAR0)] & !BAR_MEM_FLAGS_MASK;
        let hi = self.regs[idx(REG_BAR1)];
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Read `size` (1, 2 or 4) bytes at `reg`. Accesses that are
    /// misaligned, cross a dword, or are outside the space read all-ones
    /// (out-of-range) or zero (extended space).
    pub fn read(&self, reg: u32, size: u32) -> u32 {
        if !access_ok(reg, size) {
            return all_ones(size);
        }
        if reg >= CONFIG_SPACE_SIZE {
            return 0;
        }
        let shift = (reg & 3) * 8;
        (self.regs[idx(reg)] >> shift) & (all_ones(size))
    }

    /// Write `size` bytes of `value` at `reg`; returns the MMIO diff.
    pub fn write(&mut self, reg: u32, size: u32, value: u32) -> BarChange {
        if !access_ok(reg, size) || reg >= CONFIG_SPACE_SIZE {
            return BarChange::default();
        }
        let before = self.active_bar();
        let i = idx(reg);
        let shift = (reg & 3) * 8;
        let lane = all_ones(size) << shift;
        let mask = self.writable[i] & lane;
        self.regs[i] = (self.regs[i] & !mask) | ((value << shift) & mask);
        diff(before, self.active_bar())
    }

    /// The guest-written state (every dword with writable bits, masked),
    /// as `RR=VVVVVVVV` pairs in register order: what a restarted server
    /// needs to decode the BAR where the guest put it. Always the same
    /// length for a given function, so it can be rewritten in place.
    pub fn saved(&self) -> String {
        self.writable
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0)
            .map(|(i, w)| format!("{:02x}={:08x}", i * 4, self.regs[i] & w))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Restores what [`PciFunction::saved`] wrote. Only writable bits are
    /// taken (a damaged or hostile file cannot change the ids or the BAR
    /// size); anything malformed is refused and changes nothing.
    pub fn restore(&mut self, saved: &str) -> Result<(), PciError> {
        let bad = || PciError::BadSavedState(saved.chars().take(80).collect());
        let mut regs = self.regs;
        for pair in saved.trim().split(',') {
            let (r, v) = pair.split_once('=').ok_or_else(bad)?;
            let reg = u32::from_str_radix(r, 16).map_err(|_| bad())?;
            let val = u32::from_str_radix(v, 16).map_err(|_| bad())?;
            if reg % 4 != 0 || reg >= CONFIG_SPACE_SIZE {
                return Err(bad());
            }
            let i = idx(reg);
            let w = self.writable[i];
            if w == 0 {
                return Err(bad());
            }
            regs[i] = (regs[i] & !w) | (val & w);
        }
        self.regs = regs;
        Ok(())
    }
}

fn diff(before: Option<Range<u64>>, after: Option<Range<u64>>) -> BarChange {
    if before == after {
        BarChange::default()
    } else {
        BarChange {
            mmio_remove: before,
            mmio_add: after,
        }
    }
}

fn idx(reg: u32) -> usize {
    (reg / 4) as usize
}

fn all_ones(size: u32) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

fn access_ok(reg: u32, size: u32) -> bool {
    matches!(size, 1 | 2 | 4) && reg % size == 0 && reg < 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: PciIds = PciIds {
        vendor: 0x1af4,
        device: 0x10f0,
        subsystem_vendor: 0x1af4,
        subsystem: 0x0001,
        revision: 1,
    };
    const GIB: u64 = 1 << 30;

    fn func(size: u64) -> PciFunction {
        PciFunction::new(IDS, size).expect("valid size")
    }

    fn program(f: &mut PciFunction, base: u64) -> BarChange {
        let mut c = f.write(REG_BAR0, 4, base as u32);
        let c2 = f.write(REG_BAR1, 4, (base >> 32) as u32);
        if c.is_empty() {
            c = c2;
        }
        c
    }

    #[test]
    fn saved_state_round_trips_and_only_writable_bits_restore() {
        let mut f = func(GIB);
        program(&mut f, 0x1_4000_0000);
        f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        f.write(REG_INTERRUPT, 1, 0x0b);
        let s = f.saved();
        assert_eq!(s.len(), func(GIB).saved().len(), "fixed length");
        let mut g = func(GIB);
        assert_eq!(g.active_bar(), None);
        g.restore(&s).expect("restore");
        assert_eq!(g.active_bar(), Some(0x1_4000_0000..0x1_4000_0000 + GIB));
        assert_eq!(g.read(REG_INTERRUPT, 1), 0x0b);
        assert_eq!(g.saved(), s);
        // Read-only bits (ids, BAR type and size bits) never change.
        let mut h = func(GIB);
        h.restore("00=ffffffff").unwrap_err();
        h.restore("10=ffffffff,04=ffffffff").expect("masked");
        assert_eq!(h.read(REG_ID, 4), func(GIB).read(REG_ID, 4));
        assert_eq!(h.read(REG_BAR0, 4), 0xc000_0000 | BAR_MEM64_PREFETCH);
        for bad in ["", "zz", "10=", "11=00000000", "100=0", "10=1,x"] {
            let mut k = func(GIB);
            let before = k.saved();
            assert!(k.restore(bad).is_err(), "{bad:?}");
            assert_eq!(k.saved(), before, "{bad:?} changed nothing");
        }
    }

    #[test]
    fn rejects_bar_sizes_outside_range_or_not_power_of_two() {
        for s in [0, 4096, MIN_BAR_SIZE - 1, 3 << 20, MAX_BAR_SIZE * 2] {
            assert_eq!(
                PciFunction::new(IDS, s).err(),
                Some(PciError::BadBarSize(s))
            );
        }
        assert!(PciFunction::new(IDS, MIN_BAR_SIZE).is_ok());
        assert!(PciFunction::new(IDS, MAX_BAR_SIZE).is_ok());
    }

    #[test]
    fn ids_and_class_read_back_and_are_read_only() {
        let mut f = func(GIB);
        assert_eq!(f.read(0, 2), 0x1af4);
        assert_eq!(f.read(2, 2), 0x10f0);
        f.write(0, 4, 0);
        assert_eq!(f.read(0, 4), 0x10f0_1af4);
        assert_eq!(f.read(0x0b, 1), 0x12);
        assert_eq!(f.read(0x08, 1), 1);
    }

    #[test]
    fn mem_bar_size_probe_returns_size_for_small_and_huge_bars() {
        for size in [MIN_BAR_SIZE, GIB, 4 * GIB, MAX_BAR_SIZE] {
            let mut f = func(size);
            f.write(REG_BAR0, 4, 0xffff_ffff);
            f.write(REG_BAR1, 4, 0xffff_ffff);
            let lo = f.read(REG_BAR0, 4);
            let hi = f.read(REG_BAR1, 4);
            assert_eq!(lo & BAR_MEM_FLAGS_MASK, BAR_MEM64_PREFETCH);
            let probed = (u64::from(hi) << 32) | u64::from(lo & !BAR_MEM_FLAGS_MASK);
            assert_eq!(!probed + 1, size, "size {size:#x}");
        }
    }

    #[test]
    fn bar_move_by_both_dwords_ends_at_the_new_range() {
        let mut f = func(GIB);
        f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        program(&mut f, 0x1_0000_0000);
        let c = f.write(REG_BAR0, 4, 0x8000_0000);
        assert_eq!(c.mmio_remove, Some(0x1_0000_0000..0x1_4000_0000));
        assert_eq!(c.mmio_add, Some(0x1_8000_0000..0x1_c000_0000));
        let c = f.write(REG_BAR1, 4, 0x2);
        assert_eq!(c.mmio_remove, Some(0x1_8000_0000..0x1_c000_0000));
        assert_eq!(c.mmio_add, Some(0x2_8000_0000..0x2_c000_0000));
        // Writing the same address again changes nothing.
        assert!(f.write(REG_BAR1, 4, 0x2).is_empty());
    }

    #[test]
    fn bar_is_decoded_only_while_memory_bit_is_set() {
        let mut f = func(GIB);
        let c = program(&mut f, 0x1_0000_0000);
        assert!(c.is_empty());
        assert_eq!(f.active_bar(), None);
        let c = f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        assert_eq!(c.mmio_add, Some(0x1_0000_0000..0x1_4000_0000));
        assert_eq!(c.mmio_remove, None);
        let c = f.write(REG_COMMAND, 2, 0);
        assert_eq!(c.mmio_remove, Some(0x1_0000_0000..0x1_4000_0000));
        assert_eq!(c.mmio_add, None);
    }

    #[test]
    fn address_bits_below_size_are_not_writable() {
        let mut f = func(GIB);
        f.write(REG_BAR0, 4, 0x1234_5678);
        assert_eq!(f.read(REG_BAR0, 4), BAR_MEM64_PREFETCH);
    }

    #[test]
    fn misaligned_and_out_of_range_accesses_are_harmless() {
        let mut f = func(GIB);
        assert_eq!(f.read(1, 2), 0xffff);
        assert_eq!(f.read(2, 4), 0xffff_ffff);
        assert_eq!(f.read(0x100, 4), 0);
        assert_eq!(f.read(4096, 4), 0xffff_ffff);
        assert!(f.write(REG_BAR1 + 1, 4, 0).is_empty());
        assert_eq!(f.read(0x40, 4), 0);
        f.write(0x40, 4, 0xdead_beef);
        assert_eq!(f.read(0x40, 4), 0);
    }

    #[test]
    fn first_placement_by_the_lower_dword_alone_takes_effect() {
        // hvmloader below 4 GiB: lower dword, then COMMAND.memory; the
        // upper dword is never written.
        let mut f = func(64 << 20);
        f.write(REG_BAR0, 4, 0xf000_000c);
        let c = f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        assert_eq!(c.mmio_add, Some(0xf000_0000..0xf400_0000));
        assert_eq!(f.active_bar(), Some(0xf000_0000..0xf400_0000));
        // A size probe of the lower dword and its restore end where it was.
        f.write(REG_BAR0, 4, 0xffff_ffff);
        let c = f.write(REG_BAR0, 4, 0xf000_000c);
        assert_eq!(c.mmio_add, Some(0xf000_0000..0xf400_0000));
        assert_eq!(f.active_bar(), Some(0xf000_0000..0xf400_0000));
    }

    #[test]
    fn byte_writes_to_upper_dword_commit_immediately() {
        let mut f = func(MIN_BAR_SIZE);
        f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        program(&mut f, 0x1_0000_0000);
        f.write(REG_BAR0, 4, 0xe000_0000);
        let c = f.write(REG_BAR1, 1, 0);
        assert_eq!(c.mmio_add, Some(0xe000_0000..0xe010_0000));
    }

    #[test]
    fn bar_at_all_ones_lower_dword_decodes() {
        // 256 MiB BAR at 0x1_F000_0000: every writable bit of the lower
        // dword is set, yet it is an address, not a size probe.
        let mut f = func(256 << 20);
        f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        program(&mut f, 0x1_f000_0000);
        assert_eq!(f.active_bar(), Some(0x1_f000_0000..0x2_0000_0000));
    }

    #[test]
    fn bar_move_to_all_ones_lower_dword_revokes_the_old_range() {
        let mut f = func(256 << 20);
        f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        program(&mut f, 0x1_0000_0000);
        let c1 = f.write(REG_BAR0, 4, 0xf000_000c);
        let c2 = f.write(REG_BAR1, 4, 0x2);
        assert_eq!(c1.mmio_remove, Some(0x1_0000_0000..0x1_1000_0000));
        assert_eq!(c2.mmio_add, Some(0x2_f000_0000..0x3_0000_0000));
        // Whatever the lower-dword write decoded in between is removed again.
        assert_eq!(c1.mmio_add, c2.mmio_remove);
        assert_eq!(f.active_bar(), Some(0x2_f000_0000..0x3_0000_0000));
    }

    #[test]
    fn lower_dword_write_after_first_placement_takes_effect() {
        let mut f = func(64 << 20);
        f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        f.write(REG_BAR0, 4, 0xe000_000c);
        assert_eq!(f.active_bar(), Some(0xe000_0000..0xe400_0000));
        let c = f.write(REG_BAR0, 4, 0xc000_000c);
        assert_eq!(c.mmio_remove, Some(0xe000_0000..0xe400_0000));
        assert_eq!(c.mmio_add, Some(0xc000_0000..0xc400_0000));
        // Above 4 GiB too: the upper dword stays, the lower one moves.
        program(&mut f, 0x1_0000_0000);
        let c = f.write(REG_BAR0, 4, 0x8000_0000);
        assert_eq!(c.mmio_remove, Some(0x1_0000_0000..0x1_0400_0000));
        assert_eq!(c.mmio_add, Some(0x1_8000_0000..0x1_8400_0000));
    }

    #[test]
    fn size_probe_with_decode_off_changes_nothing_and_restore_keeps_the_bar() {
        // What Linux and hvmloader do: decode off, all ones, read, restore.
        let mut f = func(GIB);
        program(&mut f, 0x1_4000_0000);
        for reg in [REG_BAR0, REG_BAR1] {
            let old = f.read(reg, 4);
            assert!(f.write(reg, 4, 0xffff_ffff).is_empty());
            assert!(f.write(reg, 4, old).is_empty());
        }
        let c = f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        assert_eq!(c.mmio_add, Some(0x1_4000_0000..0x1_8000_0000));
    }

    #[test]
    fn size_probe_with_decode_on_returns_to_the_same_range() {
        // A guest that probes with decode on sees the BAR where the
        // registers say, as on hardware; after the restore it is back.
        let mut f = func(GIB);
        f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        program(&mut f, 0x1_4000_0000);
        let lo = f.read(REG_BAR0, 4);
        let hi = f.read(REG_BAR1, 4);
        let c = f.write(REG_BAR0, 4, 0xffff_ffff);
        assert_eq!(c.mmio_remove, Some(0x1_4000_0000..0x1_8000_0000));
        assert_eq!(c.mmio_add, Some(0x1_c000_0000..0x2_0000_0000));
        let c = f.write(REG_BAR1, 4, 0xffff_ffff);
        assert_eq!(
            c.mmio_add, None,
            "all-ones upper dword is beyond any guest address"
        );
        assert_eq!(
            !(u64::from(f.read(REG_BAR1, 4)) << 32 | u64::from(f.read(REG_BAR0, 4) & !0xf)) + 1,
            GIB
        );
        f.write(REG_BAR0, 4, lo);
        f.write(REG_BAR1, 4, hi);
        assert_eq!(f.active_bar(), Some(0x1_4000_0000..0x1_8000_0000));
    }

    #[test]
    fn bar_beyond_the_guest_physical_address_width_is_not_decoded() {
        let mut f = func(GIB);
        f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        program(&mut f, MAX_DECODE_END - GIB);
        assert_eq!(f.active_bar(), Some(MAX_DECODE_END - GIB..MAX_DECODE_END));
        let c = program(&mut f, MAX_DECODE_END);
        assert_eq!(c.mmio_remove, Some(MAX_DECODE_END - GIB..MAX_DECODE_END));
        assert_eq!(f.active_bar(), None);
        // The very top, whose end does not fit in 64 bits.
        program(&mut f, 0u64.wrapping_sub(GIB));
        assert_eq!(f.active_bar(), None);
    }
}

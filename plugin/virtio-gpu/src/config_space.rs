//! Configuration space of the gpu-hostmem function as a virtio-gpu device.
//!
//! It is today's function ([`gpu_hostmem_core::pci::PciFunction`]: ids,
//! COMMAND, the window in BAR0/BAR1, unchanged) with a virtio layer over it:
//! the display class, STATUS.CAP_LIST, the capability pointer, interrupt pin
//! INTA, the register BAR (BAR2) and the vendor capabilities of
//! [`crate::layout`]. Reads take the layer's bytes where it has any and the
//! inner function's elsewhere; writes go to both (the inner function's
//! masks leave the layer's registers read-only there). A write returns what
//! changed for both BARs, as the inner function does for its own.

use std::ops::Range;

use gpu_hostmem_core::pci::{
    BarChange, PciError, PciFunction, PciIds, COMMAND_INTX_DISABLE, COMMAND_MASTER, COMMAND_MEMORY,
    CONFIG_SPACE_SIZE, REG_CLASS, REG_COMMAND, REG_INTERRUPT,
};

use crate::layout::{
    capabilities, encode_capabilities, CAPS_START, CLASS_DISPLAY_OTHER, PCI_CAPABILITY_LIST,
    PCI_STATUS_CAP_LIST, REGS_BAR_SIZE, REG_BAR2, VIRTIO_PCI_DEVICE_ID_BASE,
};

/// Interrupt pin register value for INTA.
pub const INTERRUPT_PIN_INTA: u8 = 1;

const SPACE: usize = CONFIG_SPACE_SIZE as usize;

/// The MMIO effect of a config write on both BARs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigChange {
    /// The window (BAR0/BAR1): what the existing server applies today.
    pub window: BarChange,
    /// The register BAR (BAR2): a range to route to the ioreq server as
    /// emulated MMIO, never lent.
    pub regs: BarChange,
}

/// The guest-written state of the function, for a restarted server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioGpuFunctionState {
    /// [`PciFunction::saved`] of the inner function (COMMAND, window BAR,
    /// scratch registers).
    pub inner: String,
    /// BAR2 as the guest wrote it.
    pub bar2: u32,
}

/// The virtio-gpu PCI function's configuration space.
#[derive(Clone, Debug)]
pub struct VirtioGpuFunction {
    inner: PciFunction,
    /// Bytes the virtio layer answers for, and which of them it owns.
    layer: [u8; SPACE],
    owned: [bool; SPACE],
    bar2: u32,
}

impl VirtioGpuFunction {
    /// The ids the function has as a virtio-gpu device: vendor 0x1af4,
    /// device 0x1050 (non-transitional, `VIRTIO_ID_GPU`), revision 1 (a
    /// non-transitional device should have a revision of at least 1).
    pub fn ids(subsystem: u16) -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: VIRTIO_PCI_DEVICE_ID_BASE + virtio_bindings::virtio_ids::VIRTIO_ID_GPU as u16,
            subsystem_vendor: 0x1af4,
            subsystem,
            revision: 1,
        }
    }

    /// A function whose window is `window_size` bytes and whose device
    /// configuration is `device_cfg_len` bytes.
    pub fn new(ids: PciIds, window_size: u64, device_cfg_len: u64) -> Result<Self, PciError> {
        let inner = PciFunction::new(ids, window_size)?;
        let mut f = VirtioGpuFunction {
            inner,
            layer: [0; SPACE],
            owned: [false; SPACE],
            bar2: 0,
        };
        // Class code (bytes 9..12); the revision (byte 8) stays the inner's.
        f.own(REG_CLASS + 1, &CLASS_DISPLAY_OTHER.to_le_bytes()[..3]);
        f.own(REG_COMMAND + 2, &PCI_STATUS_CAP_LIST.to_le_bytes());
        f.own(PCI_CAPABILITY_LIST, &[CAPS_START as u8]);
        f.own(REG_INTERRUPT + 1, &[INTERRUPT_PIN_INTA]);
        let caps = encode_capabilities(&capabilities(window_size, device_cfg_len));
        f.own(CAPS_START, &caps);
        for r in REG_BAR2..REG_BAR2 + 4 {
            f.owned[r as usize] = true;
        }
        Ok(f)
    }

    fn own(&mut self, at: u32, bytes: &[u8]) {
        let at = at as usize;
        self.layer[at..at + bytes.len()].copy_from_slice(bytes);
        self.owned[at..at + bytes.len()].fill(true);
    }

    /// The inner function (window BAR, COMMAND).
    pub fn inner(&self) -> &PciFunction {
        &self.inner
    }

    /// The COMMAND register.
    pub fn command(&self) -> u16 {
        self.inner.command()
    }

    /// True if the guest lets the device master the bus (it may use the
    /// virtqueues in guest memory only then).
    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_MASTER != 0
    }

    /// True if the guest disabled INTx in COMMAND.
    pub fn intx_disabled(&self) -> bool {
        self.command() & COMMAND_INTX_DISABLE != 0
    }

    /// The window's decoded range, if any.
    pub fn active_window(&self) -> Option<Range<u64>> {
        self.inner.active_bar()
    }

    /// The register BAR's decoded range, if any: memory decode on and an
    /// address other than 0.
    pub fn active_regs(&self) -> Option<Range<u64>> {
        if self.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        let base = u64::from(self.bar2 & !0xf);
        (base != 0).then_some(base..base + REGS_BAR_SIZE)
    }

    /// The guest-written state.
    pub fn state(&self) -> VirtioGpuFunctionState {
        VirtioGpuFunctionState {
            inner: self.inner.saved(),
            bar2: self.bar2,
        }
    }

    /// Takes a saved state: the inner function's writable bits, BAR2's
    /// address bits. Refused (nothing changes) if the inner part is.
    pub fn restore(&mut self, st: &VirtioGpuFunctionState) -> Result<(), PciError> {
        self.inner.restore(&st.inner)?;
        self.bar2 = st.bar2 & !((REGS_BAR_SIZE - 1) as u32);
        Ok(())
    }

    /// Read `size` (1, 2 or 4) bytes at `reg`, as [`PciFunction::read`].
    pub fn read(&self, reg: u32, size: u32) -> u32 {
        let v = self.inner.read(reg, size);
        if !matches!(size, 1 | 2 | 4) || reg % size != 0 || reg >= CONFIG_SPACE_SIZE {
            return v;
        }
        let mut bytes = v.to_le_bytes();
        for (i, b) in bytes.iter_mut().enumerate().take(size as usize) {
            let at = reg as usize + i;
            if self.owned[at] {
                *b = self.layer_byte(at);
            }
        }
        u32::from_le_bytes(bytes)
    }

    fn layer_byte(&self, at: usize) -> u8 {
        let bar2 = REG_BAR2 as usize;
        if (bar2..bar2 + 4).contains(&at) {
            self.bar2.to_le_bytes()[at - bar2]
        } else {
            self.layer[at]
        }
    }

    /// Write `size` bytes of `value` at `reg`; returns what changed for
    /// both BARs.
    pub fn write(&mut self, reg: u32, size: u32, value: u32) -> ConfigChange {
        let regs_before = self.active_regs();
        let window = self.inner.write(reg, size, value);
        if matches!(size, 1 | 2 | 4) && reg % size == 0 && (REG_BAR2..REG_BAR2 + 4).contains(&reg) {
            let shift = (reg - REG_BAR2) * 8;
            let lane = if size == 4 {
                u32::MAX
            } else {
                ((1u32 << (size * 8)) - 1) << shift
            };
            // A 32-bit memory BAR: type bits 0, address bits above the size.
            let mask = lane & !((REGS_BAR_SIZE - 1) as u32);
            self.bar2 = (self.bar2 & !mask) | ((value << shift) & mask);
        }
        let regs_after = self.active_regs();
        let regs = if regs_before == regs_after {
            BarChange::default()
        } else {
            BarChange {
                mmio_remove: regs_before,
                mmio_add: regs_after,
            }
        };
        ConfigChange { window, regs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::*;

    const WINDOW: u64 = 256 << 20;

    fn func() -> VirtioGpuFunction {
        VirtioGpuFunction::new(VirtioGpuFunction::ids(1), WINDOW, 16).expect("valid")
    }

    fn r8(f: &VirtioGpuFunction, at: u32) -> u8 {
        f.read(at, 1) as u8
    }

    /// Walks the list as Linux's pci_find_capability / virtio_pci_find_*
    /// do: from 0x34, low two bits of each pointer masked, at most 48 hops.
    fn walk(f: &VirtioGpuFunction) -> Vec<(u32, VirtioCap)> {
        let mut out = Vec::new();
        assert_ne!(f.read(0x06, 2) as u16 & PCI_STATUS_CAP_LIST, 0);
        let mut pos = u32::from(r8(f, PCI_CAPABILITY_LIST)) & !3;
        let mut ttl = 48;
        while pos >= 0x40 && ttl > 0 {
            assert_eq!(r8(f, pos + cap::VNDR), PCI_CAP_ID_VNDR);
            let cfg_type = r8(f, pos + cap::CFG_TYPE);
            let len = r8(f, pos + cap::LEN);
            let mut offset = u64::from(f.read(pos + cap::OFFSET, 4));
            let mut length = u64::from(f.read(pos + cap::LENGTH, 4));
            if cfg_type == VIRTIO_PCI_CAP_SHARED_MEMORY_CFG {
                offset |= u64::from(f.read(pos + cap::OFFSET_HI, 4)) << 32;
                length |= u64::from(f.read(pos + cap::LENGTH_HI, 4)) << 32;
            }
            let notify =
                (cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG).then(|| f.read(pos + cap::NOTIFY_MULT, 4));
            let c = VirtioCap {
                cfg_type,
                bar: r8(f, pos + cap::BAR),
                id: r8(f, pos + cap::ID),
                offset,
                length,
                notify_off_multiplier: notify,
            };
            assert_eq!(len, c.cap_len(), "cap_len at {pos:#x}");
            out.push((pos, c));
            pos = u32::from(r8(f, pos + cap::NEXT)) & !3;
            ttl -= 1;
        }
        out
    }

    #[test]
    fn header_is_a_non_transitional_virtio_gpu_with_caps_and_inta() {
        let f = func();
        assert_eq!(f.read(0x00, 4), 0x1050_1af4);
        assert_eq!(f.read(0x08, 4), 0x0380_0001, "class 03/80/00, revision 1");
        assert_eq!(f.read(0x2c, 4), 0x0001_1af4);
        assert_eq!(f.read(0x06, 2), 0x0010, "STATUS: capability list");
        assert_eq!(r8(&f, 0x34), 0x40);
        assert_eq!(r8(&f, 0x3d), 1, "INTA");
        // The window is still a 64-bit prefetchable BAR0, BAR2 is 32-bit
        // memory, BAR4 and BAR5 are absent.
        assert_eq!(f.read(0x10, 4) & 0xf, 0xc);
        assert_eq!(f.read(0x18, 4), 0);
        assert_eq!(f.read(0x20, 4), 0);
        assert_eq!(f.read(0x24, 4), 0);
    }

    #[test]
    fn capabilities_are_what_the_linux_driver_looks_for() {
        let f = func();
        let caps = walk(&f);
        let types: Vec<u8> = caps.iter().map(|(_, c)| c.cfg_type).collect();
        assert_eq!(
            types,
            [
                VIRTIO_PCI_CAP_COMMON_CFG,
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                VIRTIO_PCI_CAP_ISR_CFG,
                VIRTIO_PCI_CAP_DEVICE_CFG,
                VIRTIO_PCI_CAP_SHARED_MEMORY_CFG
            ]
        );
        for (pos, c) in &caps {
            assert_eq!(pos % 4, 0);
            assert!(*pos + u32::from(c.cap_len()) <= 0x100);
            assert!(c.bar <= 5);
        }
        let get = |t| {
            caps.iter()
                .find(|(_, c)| c.cfg_type == t)
                .expect("present")
                .1
        };
        let common = get(VIRTIO_PCI_CAP_COMMON_CFG);
        assert_eq!((common.bar, common.offset, common.length), (2, 0, 56));
        assert_eq!(common.offset % 4, 0);
        let notify = get(VIRTIO_PCI_CAP_NOTIFY_CFG);
        assert_eq!(
            (notify.bar, notify.offset, notify.length),
            (2, 0x3000, 0x1000)
        );
        assert_eq!(notify.notify_off_multiplier, Some(4));
        // Linux maps the notify area at once if it fits in one page.
        assert!(notify.length + notify.offset % 4096 <= 4096);
        let isr = get(VIRTIO_PCI_CAP_ISR_CFG);
        assert_eq!((isr.bar, isr.offset, isr.length), (2, 0x1000, 1));
        let dev = get(VIRTIO_PCI_CAP_DEVICE_CFG);
        assert_eq!((dev.bar, dev.offset, dev.length), (2, 0x2000, 16));
        for c in [common, notify, isr, dev] {
            assert!(c.offset + c.length <= REGS_BAR_SIZE, "{c:?} inside BAR2");
        }
        let shm = get(VIRTIO_PCI_CAP_SHARED_MEMORY_CFG);
        assert_eq!(shm.cap_len(), 24, "virtio_pci_find_shm_cap wants cap64");
        assert_eq!((shm.bar, shm.id), (0, 1), "BAR0, shmid 1 = host visible");
        assert_eq!((shm.offset, shm.length), (0, WINDOW));
    }

    #[test]
    fn a_window_of_4_gib_and_more_needs_the_high_length_dword() {
        let f = VirtioGpuFunction::new(VirtioGpuFunction::ids(1), 8 << 30, 16).expect("valid");
        let shm = walk(&f)
            .into_iter()
            .find(|(_, c)| c.cfg_type == VIRTIO_PCI_CAP_SHARED_MEMORY_CFG)
            .expect("shm")
            .1;
        assert_eq!(shm.length, 8 << 30);
    }

    #[test]
    fn capabilities_and_layer_registers_are_read_only() {
        let mut f = func();
        let before: Vec<u32> = (0..64).map(|i| f.read(i * 4, 4)).collect();
        for reg in [0x08, 0x34, 0x40, 0x44, 0x48, 0x4c, 0x50, 0x84, 0x90, 0x98] {
            f.write(reg, 4, 0xdead_beef);
        }
        f.write(0x06, 2, 0xffff);
        f.write(0x3d, 1, 0x04);
        let after: Vec<u32> = (0..64).map(|i| f.read(i * 4, 4)).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn register_bar_sizes_to_16_kib_and_decodes_with_memory_on() {
        let mut f = func();
        f.write(REG_BAR2, 4, 0xffff_ffff);
        let probed = f.read(REG_BAR2, 4);
        assert_eq!(probed & 0xf, 0, "32-bit, non-prefetchable memory");
        assert_eq!(!(probed & !0xf) + 1, REGS_BAR_SIZE as u32);
        let c = f.write(REG_BAR2, 4, 0xfebf_0000);
        assert!(c.regs.is_empty(), "decode off");
        let c = f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        assert_eq!(c.regs.mmio_add, Some(0xfebf_0000..0xfebf_4000));
        assert_eq!(c.window.mmio_add, None, "window not placed yet");
        // Moving BAR2 moves only the register range.
        let c = f.write(REG_BAR2, 4, 0xfeb0_0000);
        assert_eq!(c.regs.mmio_remove, Some(0xfebf_0000..0xfebf_4000));
        assert_eq!(c.regs.mmio_add, Some(0xfeb0_0000..0xfeb0_4000));
        assert!(c.window.is_empty());
        // Decode off removes both.
        f.write(0x10, 4, 0x0000_000c);
        f.write(0x14, 4, 0x1);
        let c = f.write(REG_COMMAND, 2, 0);
        assert_eq!(c.regs.mmio_remove, Some(0xfeb0_0000..0xfeb0_4000));
        assert_eq!(
            c.window.mmio_remove,
            Some(0x1_0000_0000..0x1_0000_0000 + WINDOW)
        );
    }

    #[test]
    fn byte_writes_to_bar2_update_only_their_lane() {
        let mut f = func();
        f.write(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
        f.write(REG_BAR2, 4, 0xfebf_0000);
        f.write(REG_BAR2 + 3, 1, 0xfd);
        assert_eq!(f.active_regs(), Some(0xfdbf_0000..0xfdbf_4000));
        f.write(REG_BAR2 + 1, 1, 0xff);
        assert_eq!(f.read(REG_BAR2, 4), 0xfdbf_c000, "bits below 16 KiB stay 0");
    }

    #[test]
    fn command_bits_drive_bus_master_and_intx_disable() {
        let mut f = func();
        assert!(!f.bus_master());
        f.write(
            REG_COMMAND,
            2,
            u32::from(COMMAND_MASTER | COMMAND_INTX_DISABLE),
        );
        assert!(f.bus_master());
        assert!(f.intx_disabled());
        assert_eq!(
            f.read(0x06, 2),
            0x0010,
            "STATUS unchanged by COMMAND writes"
        );
    }
}

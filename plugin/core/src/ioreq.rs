//! The `ioreq_t` record Xen shares with an IOREQ server, as plain values.
//!
//! Layout (Xen `public/hvm/ioreq.h`, 32 bytes, little endian):
//!
//! ```text
//! offset 0  u64 addr        physical address, port, or PCI config SBDF+reg
//! offset 8  u64 data        data, or guest-physical address when data_is_ptr
//! offset 16 u32 count       repeat count (rep prefixes)
//! offset 20 u32 size        access size in bytes
//! offset 24 u32 vp_eport    event channel port of this vCPU
//! offset 28 u16 _pad0
//! offset 30 u8  state:4     STATE_*
//!           u8  data_is_ptr:1, dir:1 (1 = read), df:1, _pad1:1
//! offset 31 u8  type        IOREQ_TYPE_*
//! ```
//!
//! Nothing here touches shared memory: a platform copies the 32 bytes out
//! (after an Acquire load of the state) and gets an [`Ioreq`] value; the
//! response goes back through [`crate::platform::IoreqChannel::complete`].

/// Size of one `ioreq_t` in bytes.
pub const IOREQ_SIZE: usize = 32;
/// Byte offset of the state/flags byte inside `ioreq_t`.
pub const IOREQ_STATE_OFFSET: usize = 30;

/// Slot is free.
pub const STATE_IOREQ_NONE: u8 = 0;
/// Xen filled the slot; the server may take it.
pub const STATE_IOREQ_READY: u8 = 1;
/// The server is handling the request.
pub const STATE_IOREQ_INPROCESS: u8 = 2;
/// The server completed the request (data valid for reads).
pub const STATE_IORESP_READY: u8 = 3;
/// gpu-hostmem contract: re-execute the instruction instead of emulating it.
/// Only valid for a server created with `XEN_DMOP_IOREQ_SERVER_RETRY`.
pub const STATE_IORESP_RETRY: u8 = 4;

/// Port I/O.
pub const IOREQ_TYPE_PIO: u8 = 0;
/// MMIO (memory copy).
pub const IOREQ_TYPE_COPY: u8 = 1;
/// PCI configuration space access (decoded CF8/CFC or MMCFG).
pub const IOREQ_TYPE_PCI_CONFIG: u8 = 2;
/// Timer offset notification (ignored by us).
pub const IOREQ_TYPE_TIMEOFFSET: u8 = 7;
/// Invalidate the device model's map cache (ignored by us).
pub const IOREQ_TYPE_INVALIDATE: u8 = 8;

/// Direction: the guest writes to the device.
pub const IOREQ_WRITE: u8 = 0;
/// Direction: the guest reads from the device.
pub const IOREQ_READ: u8 = 1;

/// One `ioreq_t`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ioreq {
    /// Physical address, I/O port, or (PCI_CONFIG) SBDF << 32 | register.
    pub addr: u64,
    /// Data written by the guest, or read result.
    pub data: u64,
    /// Repeat count.
    pub count: u32,
    /// Access size in bytes (1, 2, 4 or 8 for what we emulate).
    pub size: u32,
    /// Event channel port of the vCPU.
    pub vp_eport: u32,
    /// One of the `STATE_*` values (4 bits).
    pub state: u8,
    /// `data` is a guest-physical pointer (string instructions).
    pub data_is_ptr: bool,
    /// [`IOREQ_READ`] or [`IOREQ_WRITE`].
    pub dir: u8,
    /// Direction flag for rep string instructions.
    pub df: bool,
    /// One of the `IOREQ_TYPE_*` values.
    pub kind: u8,
}

impl Ioreq {
    /// Decode the 32-byte wire form.
    pub fn from_bytes(b: &[u8; IOREQ_SIZE]) -> Self {
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let u32_at = |o: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(w)
        };
        let flags = b[IOREQ_STATE_OFFSET];
        Ioreq {
            addr: u64_at(0),
            data: u64_at(8),
            count: u32_at(16),
            size: u32_at(20),
            vp_eport: u32_at(24),
            state: flags & 0x0f,
            data_is_ptr: flags & 0x10 != 0,
            dir: (flags >> 5) & 1,
            df: flags & 0x40 != 0,
            kind: b[31],
        }
    }

    /// Encode into the 32-byte wire form (padding zeroed).
    pub fn to_bytes(&self) -> [u8; IOREQ_SIZE] {
        let mut b = [0u8; IOREQ_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.data.to_le_bytes());
        b[16..20].copy_from_slice(&self.count.to_le_bytes());
        b[20..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..28].copy_from_slice(&self.vp_eport.to_le_bytes());
        b[IOREQ_STATE_OFFSET] = pack_flags(self.state, self.data_is_ptr, self.dir, self.df);
        b[31] = self.kind;
        b
    }

    /// True for a guest read.
    pub fn is_read(&self) -> bool {
        self.dir == IOREQ_READ
    }

    /// Decode the address of an `IOREQ_TYPE_PCI_CONFIG` request.
    pub fn pci_config_address(&self) -> PciConfigAddress {
        PciConfigAddress::from_ioreq_addr(self.addr)
    }
}

/// Pack the state/flags byte at offset 30.
pub fn pack_flags(state: u8, data_is_ptr: bool, dir: u8, df: bool) -> u8 {
    (state & 0x0f) | (u8::from(data_is_ptr) << 4) | ((dir & 1) << 5) | (u8::from(df) << 6)
}

/// PCI segment/bus/device/function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sbdf {
    /// PCI segment.
    pub seg: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (slot), 0..=31.
    pub dev: u8,
    /// Function, 0..=7.
    pub func: u8,
}

impl Sbdf {
    /// Encode as Xen's 32-bit SBDF (`seg << 16 | bus << 8 | dev << 3 | func`).
    pub fn to_u32(self) -> u32 {
        (u32::from(self.seg) << 16)
            | (u32::from(self.bus) << 8)
            | (u32::from(self.dev & 0x1f) << 3)
            | u32::from(self.func & 7)
    }

    /// Decode Xen's 32-bit SBDF.
    pub fn from_u32(v: u32) -> Self {
        Sbdf {
            seg: (v >> 16) as u16,
            bus: (v >> 8) as u8,
            dev: ((v >> 3) & 0x1f) as u8,
            func: (v & 7) as u8,
        }
    }
}

impl std::fmt::Display for Sbdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.seg, self.bus, self.dev, self.func
        )
    }
}

/// The decoded `addr` of a PCI_CONFIG ioreq: Xen puts the SBDF in the upper
/// 32 bits and the register offset (including the CF8 extended bits) in the
/// lower 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciConfigAddress {
    /// The function addressed.
    pub sbdf: Sbdf,
    /// Byte offset in its configuration space.
    pub reg: u32,
}

impl PciConfigAddress {
    /// Split an ioreq `addr`.
    pub fn from_ioreq_addr(addr: u64) -> Self {
        PciConfigAddress {
            sbdf: Sbdf::from_u32((addr >> 32) as u32),
            reg: addr as u32,
        }
    }

    /// Build an ioreq `addr` (used by the simulator to play Xen's role).
    pub fn to_ioreq_addr(self) -> u64 {
        (u64::from(self.sbdf.to_u32()) << 32) | u64::from(self.reg)
    }
}

/// Mask a value to `size` bytes (1, 2, 4 or 8; anything else gives 8).
pub fn size_mask(size: u32) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioreq_is_32_bytes_with_state_at_offset_30() {
        let r = Ioreq {
            addr: 0x1122_3344_5566_7788,
            data: 0x99aa_bbcc_ddee_ff00,
            count: 3,
            size: 4,
            vp_eport: 7,
            state: STATE_IOREQ_READY,
            data_is_ptr: true,
            dir: IOREQ_READ,
            df: false,
            kind: IOREQ_TYPE_COPY,
        };
        let b = r.to_bytes();
        assert_eq!(b.len(), 32);
        assert_eq!(b[0], 0x88);
        assert_eq!(b[8], 0x00);
        assert_eq!(b[16], 3);
        assert_eq!(b[20], 4);
        assert_eq!(b[24], 7);
        assert_eq!(b[30], 0x01 | 0x10 | 0x20);
        assert_eq!(b[31], IOREQ_TYPE_COPY);
        assert_eq!(Ioreq::from_bytes(&b), r);
    }

    #[test]
    fn pci_config_addr_splits_sbdf_and_register() {
        let a = PciConfigAddress {
            sbdf: Sbdf {
                seg: 0,
                bus: 0,
                dev: 5,
                func: 0,
            },
            reg: 0x10,
        };
        let raw = a.to_ioreq_addr();
        assert_eq!(raw, (0x28u64 << 32) | 0x10);
        assert_eq!(PciConfigAddress::from_ioreq_addr(raw), a);
    }

    #[test]
    fn retry_state_is_four_per_contract() {
        assert_eq!(STATE_IORESP_RETRY, 4);
    }
}

//! Where the virtio-pci modern structures live: the vendor capabilities in
//! configuration space and the register BAR they point into.
//!
//! Values are from Linux's `include/uapi/linux/virtio_pci.h` (the virtio
//! 1.2 spec, section 4.1.4); `virtio-bindings` does not generate that
//! header. What a Linux guest checks when it parses them
//! (`drivers/virtio/virtio_pci_modern_dev.c`, `virtio_pci_modern.c`):
//!
//! - capabilities are found by walking `PCI_CAP_ID_VNDR` entries from the
//!   pointer at 0x34 (STATUS bit 4 set), `bar` 0..=5, the BAR non-empty;
//! - common cfg: length >= 56 (`sizeof(struct virtio_pci_common_cfg)`),
//!   offset 4-aligned, `offset + 56` within the BAR;
//! - ISR: length >= 1; notify: offset 2-aligned, length >= 2, and
//!   `queue_notify_off * notify_off_multiplier + 2 <= length`;
//! - device cfg: offset 4-aligned, mapped up to one page;
//! - shared memory (`virtio_pci_find_shm_cap`): `cap_len` exactly 24
//!   (`struct virtio_pci_cap64`), `id` the shmid asked for, `bar` < 6, and
//!   `offset + length` within that BAR.
//!
//! Our function keeps BAR0/BAR1, the 64-bit prefetchable window of today's
//! device, and adds BAR2, a 32-bit non-prefetchable memory BAR with the
//! registers. BAR2 is 32-bit on purpose: hvmloader's write-back placement
//! (xen-patches 0012) takes only the 64-bit BARs of the function out of the
//! uncached low hole, and registers must stay uncached.

/// PCI capability id of a vendor-specific capability.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// STATUS bit: the function has a capability list.
pub const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
/// Offset of the capability pointer in a type-0 header.
pub const PCI_CAPABILITY_LIST: u32 = 0x34;

/// `cfg_type` of the common configuration structure.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification structure.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR status byte.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device-specific configuration.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type` of a shared memory region.
pub const VIRTIO_PCI_CAP_SHARED_MEMORY_CFG: u8 = 8;

/// `sizeof(struct virtio_pci_cap)`.
pub const VIRTIO_PCI_CAP_LEN: u8 = 16;
/// `sizeof(struct virtio_pci_notify_cap)`.
pub const VIRTIO_PCI_NOTIFY_CAP_LEN: u8 = 20;
/// `sizeof(struct virtio_pci_cap64)`.
pub const VIRTIO_PCI_CAP64_LEN: u8 = 24;

/// Offsets in `struct virtio_pci_cap` (the `VIRTIO_PCI_CAP_*` macros).
pub mod cap {
    /// `cap_vndr`.
    pub const VNDR: u32 = 0;
    /// `cap_next`.
    pub const NEXT: u32 = 1;
    /// `cap_len`.
    pub const LEN: u32 = 2;
    /// `cfg_type`.
    pub const CFG_TYPE: u32 = 3;
    /// `bar`.
    pub const BAR: u32 = 4;
    /// `id` (the shmid of a shared memory capability).
    pub const ID: u32 = 5;
    /// `offset` (low 32 bits).
    pub const OFFSET: u32 = 8;
    /// `length` (low 32 bits).
    pub const LENGTH: u32 = 12;
    /// `notify_off_multiplier` of the notify capability.
    pub const NOTIFY_MULT: u32 = 16;
    /// `offset_hi` of a 64-bit capability.
    pub const OFFSET_HI: u32 = 16;
    /// `length_hi` of a 64-bit capability.
    pub const LENGTH_HI: u32 = 20;
}

/// Offsets in `struct virtio_pci_common_cfg` (`VIRTIO_PCI_COMMON_*`).
pub mod common {
    /// `device_feature_select`, le32.
    pub const DFSELECT: u64 = 0;
    /// `device_feature`, le32, read-only.
    pub const DF: u64 = 4;
    /// `guest_feature_select` (driver_feature_select), le32.
    pub const GFSELECT: u64 = 8;
    /// `guest_feature` (driver_feature), le32.
    pub const GF: u64 = 12;
    /// `msix_config`, le16.
    pub const MSIX: u64 = 16;
    /// `num_queues`, le16, read-only.
    pub const NUMQ: u64 = 18;
    /// `device_status`, u8.
    pub const STATUS: u64 = 20;
    /// `config_generation`, u8, read-only.
    pub const CFGGENERATION: u64 = 21;
    /// `queue_select`, le16.
    pub const Q_SELECT: u64 = 22;
    /// `queue_size`, le16.
    pub const Q_SIZE: u64 = 24;
    /// `queue_msix_vector`, le16.
    pub const Q_MSIX: u64 = 26;
    /// `queue_enable`, le16.
    pub const Q_ENABLE: u64 = 28;
    /// `queue_notify_off`, le16, read-only.
    pub const Q_NOFF: u64 = 30;
    /// `queue_desc_lo`, le32.
    pub const Q_DESCLO: u64 = 32;
    /// `queue_desc_hi`, le32.
    pub const Q_DESCHI: u64 = 36;
    /// `queue_avail_lo` (driver area), le32.
    pub const Q_AVAILLO: u64 = 40;
    /// `queue_avail_hi`, le32.
    pub const Q_AVAILHI: u64 = 44;
    /// `queue_used_lo` (device area), le32.
    pub const Q_USEDLO: u64 = 48;
    /// `queue_used_hi`, le32.
    pub const Q_USEDHI: u64 = 52;
    /// `sizeof(struct virtio_pci_common_cfg)`: the fields above. We offer
    /// neither `VIRTIO_F_NOTIFICATION_DATA` nor `VIRTIO_F_RING_RESET`, so
    /// `queue_notify_data` and `queue_reset` (56, 58) are not needed.
    pub const LEN: u64 = 56;
}

/// ISR bit: a virtqueue has used buffers.
pub const VIRTIO_PCI_ISR_QUEUE: u8 = 0x1;
/// ISR bit: the device configuration changed (`VIRTIO_PCI_ISR_CONFIG`).
pub const VIRTIO_PCI_ISR_CONFIG: u8 = 0x2;
/// "No MSI-X vector" (`VIRTIO_MSI_NO_VECTOR`).
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// PCI device id of a non-transitional virtio device: 0x1040 + device id.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Class code of virtio-gpu (QEMU's and crosvm's choice): display
/// controller (0x03), other (0x80), no programming interface.
pub const CLASS_DISPLAY_OTHER: u32 = 0x03_80_00;

/// BAR index of the window (BAR0/BAR1, 64-bit), the shared memory region.
pub const WINDOW_BAR: u8 = 0;
/// BAR index of the virtio registers (BAR2, 32-bit memory).
pub const REGS_BAR: u8 = 2;
/// Configuration-space offset of BAR2.
pub const REG_BAR2: u32 = 0x18;
/// Size of the register BAR.
pub const REGS_BAR_SIZE: u64 = 0x4000;

/// Offset of the common configuration in the register BAR.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Offset of the ISR byte in the register BAR.
pub const ISR_OFFSET: u64 = 0x1000;
/// Length of the ISR structure.
pub const ISR_LEN: u64 = 1;
/// Offset of the device configuration in the register BAR.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Room for the device configuration.
pub const DEVICE_MAX_LEN: u64 = 0x1000;
/// Offset of the notification area in the register BAR.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Length of the notification area (one page: Linux maps it at once).
pub const NOTIFY_LEN: u64 = 0x1000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

/// Where the first capability starts (after the type-0 header).
pub const CAPS_START: u32 = 0x40;
/// shmid of the host-visible region (`VIRTIO_GPU_SHM_ID_HOST_VISIBLE`).
pub const SHMID_HOST_VISIBLE: u8 =
    virtio_bindings::virtio_gpu::virtio_gpu_shm_id_VIRTIO_GPU_SHM_ID_HOST_VISIBLE as u8;

/// One vendor capability as the guest reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCap {
    /// `cfg_type`.
    pub cfg_type: u8,
    /// BAR index.
    pub bar: u8,
    /// `id` (shmid for shared memory, 0 otherwise).
    pub id: u8,
    /// Offset in the BAR.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// `notify_off_multiplier` (notify capability only).
    pub notify_off_multiplier: Option<u32>,
}

impl VirtioCap {
    /// The capability's `cap_len`.
    pub fn cap_len(&self) -> u8 {
        if self.cfg_type == VIRTIO_PCI_CAP_SHARED_MEMORY_CFG {
            VIRTIO_PCI_CAP64_LEN
        } else if self.notify_off_multiplier.is_some() {
            VIRTIO_PCI_NOTIFY_CAP_LEN
        } else {
            VIRTIO_PCI_CAP_LEN
        }
    }
}

/// The capabilities of our function, in list order: common, notify, ISR,
/// device, and the shared memory region (shmid 1) over the whole window.
pub fn capabilities(window_size: u64, device_cfg_len: u64) -> [VirtioCap; 5] {
    let plain = |cfg_type, offset, length| VirtioCap {
        cfg_type,
        bar: REGS_BAR,
        id: 0,
        offset,
        length,
        notify_off_multiplier: None,
    };
    [
        plain(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, common::LEN),
        VirtioCap {
            notify_off_multiplier: Some(NOTIFY_OFF_MULTIPLIER),
            ..plain(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, NOTIFY_LEN)
        },
        plain(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, ISR_LEN),
        plain(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFFSET, device_cfg_len),
        VirtioCap {
            cfg_type: VIRTIO_PCI_CAP_SHARED_MEMORY_CFG,
            bar: WINDOW_BAR,
            id: SHMID_HOST_VISIBLE,
            offset: 0,
            length: window_size,
            notify_off_multiplier: None,
        },
    ]
}

/// Serialises `caps` as a chained capability list starting at
/// [`CAPS_START`]; returns the bytes from `CAPS_START` on. Each entry starts
/// on a dword boundary (Linux masks the low two bits of every pointer).
pub fn encode_capabilities(caps: &[VirtioCap]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in caps.iter().enumerate() {
        let start = out.len();
        let len = usize::from(c.cap_len());
        let next_rel = start + len.next_multiple_of(4);
        let next = if i + 1 == caps.len() {
            0
        } else {
            CAPS_START as usize + next_rel
        };
        out.resize(next_rel, 0);
        let b = &mut out[start..start + len];
        b[cap::VNDR as usize] = PCI_CAP_ID_VNDR;
        b[cap::NEXT as usize] = next as u8;
        b[cap::LEN as usize] = c.cap_len();
        b[cap::CFG_TYPE as usize] = c.cfg_type;
        b[cap::BAR as usize] = c.bar;
        b[cap::ID as usize] = c.id;
        put32(b, cap::OFFSET, c.offset as u32);
        put32(b, cap::LENGTH, c.length as u32);
        if let Some(m) = c.notify_off_multiplier {
            put32(b, cap::NOTIFY_MULT, m);
        }
        if c.cfg_type == VIRTIO_PCI_CAP_SHARED_MEMORY_CFG {
            put32(b, cap::OFFSET_HI, (c.offset >> 32) as u32);
            put32(b, cap::LENGTH_HI, (c.length >> 32) as u32);
        }
    }
    out
}

fn put32(b: &mut [u8], at: u32, v: u32) {
    let at = at as usize;
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

//! The virtio-pci modern transport: the registers of BAR2 (common
//! configuration, ISR, device configuration, notifications) and the
//! device status state machine, as a pure value.
//!
//! An access returns an [`Effect`] for the caller to carry out (an INTx
//! level to set with `XEN_DMOP_set_pci_intx_level`, a queue to service,
//! the device to start or stop), never a callback. The device behind it is
//! a [`VirtioDevice`]. Rules (virtio 1.2, 2.1 and 4.1.4.3; what Linux's
//! `virtio_pci_modern.c` relies on):
//!
//! - writing 0 to `device_status` resets the device: features, queues,
//!   ISR and the interrupt line go back to their initial state;
//! - the driver's feature bits are taken only between DRIVER and
//!   FEATURES_OK; FEATURES_OK is refused (reads back clear) unless the
//!   driver accepted `VIRTIO_F_VERSION_1` and nothing the device did not
//!   offer;
//! - DRIVER_OK is taken only after FEATURES_OK, and then only if every
//!   enabled queue is well formed; otherwise the device sets NEEDS_RESET
//!   and raises a configuration interrupt;
//! - a queue's registers can be written only while it is disabled and the
//!   device is not live; `queue_enable` takes only 1;
//! - a notification counts only for an enabled queue of a live device;
//! - reading the ISR returns and clears it, which lowers INTx.
//!
//! There is no MSI-X capability yet: `msix_config` and
//! `queue_msix_vector` read `VIRTIO_MSI_NO_VECTOR` whatever is written,
//! which is what a driver that asked for a vector takes as "none".

use tracing::debug;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};

use crate::layout::{
    common, COMMON_OFFSET, DEVICE_MAX_LEN, DEVICE_OFFSET, ISR_LEN, ISR_OFFSET, NOTIFY_LEN,
    NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER, VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_ISR_CONFIG,
    VIRTIO_PCI_ISR_QUEUE,
};

const ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
const DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
const FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;

/// The bit of `VIRTIO_F_VERSION_1` in a 64-bit feature word.
pub const F_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

/// A device behind the transport.
pub trait VirtioDevice {
    /// Every feature bit the device offers (device-specific and transport
    /// bits, `VIRTIO_F_VERSION_1` included).
    fn features(&self) -> u64;
    /// The largest size of each queue; its length is `num_queues`.
    fn queue_max_sizes(&self) -> &[u16];
    /// Length of the device configuration.
    fn config_len(&self) -> u64;
    /// Reads the device configuration at `offset` (within `config_len`).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration at `offset` (within `config_len`).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Whether the device can work with `features` (already a subset of
    /// [`VirtioDevice::features`] with `VIRTIO_F_VERSION_1`).
    fn accept_features(&self, _features: u64) -> bool {
        true
    }
    /// The device is reset: drop every resource and forget the queues.
    fn reset(&mut self);
}

/// One virtqueue's configuration as the driver set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Largest size the device supports.
    pub max_size: u16,
    /// Size the driver chose (starts at `max_size`).
    pub size: u16,
    /// Whether the driver enabled it.
    pub enabled: bool,
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the driver area (available ring).
    pub driver: u64,
    /// Guest-physical address of the device area (used ring).
    pub device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// A split ring the device can use: a power-of-two size within the
    /// maximum, each area aligned as the spec requires (descriptor table
    /// 16, driver area 2, device area 4) and ending below 2^64 (16 bytes
    /// a descriptor; flags, index, ring and event of 2 bytes each in the
    /// driver area, 8 bytes an element in the device area).
    pub fn is_well_formed(&self) -> bool {
        let n = u64::from(self.size);
        let fits = |start: u64, len: u64| start.checked_add(len).is_some();
        self.size != 0
            && self.size.is_power_of_two()
            && self.size <= self.max_size
            && self.desc % 16 == 0
            && self.driver % 2 == 0
            && self.device % 4 == 0
            && fits(self.desc, 16 * n)
            && fits(self.driver, 6 + 2 * n)
            && fits(self.device, 6 + 8 * n)
    }
}

/// What a restarted server needs to go on with a live device: the
/// driver-written state of the transport (see [`Transport::state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportState {
    /// `device_status`.
    pub status: u8,
    /// The driver's features.
    pub driver_features: u64,
    /// `config_generation`.
    pub config_generation: u8,
    /// The ISR byte.
    pub isr: u8,
    /// Every queue's configuration.
    pub queues: Vec<QueueConfig>,
}

/// Why a saved transport state is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not the device's queue count or a queue beyond its maximum size.
    #[error("saved queues do not fit the device")]
    Queues,
    /// Status bits out of order, or features the device would refuse.
    #[error("saved status {0:#04x} is not one the device can be in")]
    Status(u8),
}

/// What an access asks the caller to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    /// The ISR changed between zero and non-zero: the interrupt line's
    /// new level (before COMMAND.INTX_DISABLE, which the caller applies).
    pub intx: Option<bool>,
    /// The driver notified this queue: service it.
    pub notify: Option<u16>,
    /// The device went live (DRIVER_OK): start using the queues.
    pub activated: bool,
    /// The device was reset: stop using the queues, drop their mappings.
    pub reset: bool,
}

/// Where an offset of the register BAR falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Common(u64),
    Isr,
    Device(u64),
    Notify(u64),
    None,
}

fn region(offset: u64) -> Region {
    let within = |start: u64, len: u64| offset >= start && offset - start < len;
    if within(COMMON_OFFSET, common::LEN) {
        Region::Common(offset - COMMON_OFFSET)
    } else if within(ISR_OFFSET, ISR_LEN) {
        Region::Isr
    } else if within(DEVICE_OFFSET, DEVICE_MAX_LEN) {
        Region::Device(offset - DEVICE_OFFSET)
    } else if within(NOTIFY_OFFSET, NOTIFY_LEN) {
        Region::Notify(offset - NOTIFY_OFFSET)
    } else {
        Region::None
    }
}

/// The transport's state.
#[derive(Debug)]
pub struct Transport<D> {
    device: D,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    isr: u8,
}

impl<D: VirtioDevice> Transport<D> {
    /// A transport in the reset state in front of `device`.
    pub fn new(device: D) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&m| QueueConfig::new(m))
            .collect();
        Transport {
            device,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues,
            isr: 0,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// `device_status`.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// True once DRIVER_OK is set and the device neither failed nor needs
    /// a reset: queues may be used.
    pub fn is_live(&self) -> bool {
        self.status & DRIVER_OK != 0 && self.status & (FAILED | NEEDS_RESET) == 0
    }

    /// The features both sides agreed on (meaningful after FEATURES_OK).
    pub fn negotiated_features(&self) -> u64 {
        self.driver_features
    }

    /// The queues.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// The ISR byte (without reading it, which would clear it).
    pub fn isr(&self) -> u8 {
        self.isr
    }

    /// The driver-written state, for a restarted server.
    pub fn state(&self) -> TransportState {
        TransportState {
            status: self.status,
            driver_features: self.driver_features,
            config_generation: self.config_generation,
            isr: self.isr,
            queues: self.queues.clone(),
        }
    }

    /// Takes a saved state, if it is one this device can be in (checked
    /// as the state machine would have: status bits in order, features
    /// acceptable once FEATURES_OK, queues of this device and well formed
    /// once enabled on a live device). A refused state changes nothing.
    pub fn restore(&mut self, st: &TransportState) -> Result<(), StateError> {
        let known = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET | FAILED;
        let s = st.status;
        let in_order = s & !known == 0
            && (s & DRIVER == 0 || s & ACKNOWLEDGE != 0)
            && (s & FEATURES_OK == 0 || s & DRIVER != 0)
            && (s & DRIVER_OK == 0 || s & FEATURES_OK != 0);
        let features_ok = s & FEATURES_OK == 0 || {
            let f = st.driver_features;
            f & F_VERSION_1 != 0
                && f & !self.device.features() == 0
                && self.device.accept_features(f)
        };
        if !in_order || !features_ok {
            return Err(StateError::Status(s));
        }
        let live = s & DRIVER_OK != 0 && s & (NEEDS_RESET | FAILED) == 0;
        let fits = st.queues.len() == self.queues.len()
            && st.queues.iter().zip(&self.queues).all(|(q, mine)| {
                q.max_size == mine.max_size
                    && q.size <= q.max_size
                    && (!live || !q.enabled || q.is_well_formed())
            });
        if !fits {
            return Err(StateError::Queues);
        }
        self.status = s;
        self.driver_features = st.driver_features;
        self.config_generation = st.config_generation;
        self.isr = st.isr & (VIRTIO_PCI_ISR_QUEUE | VIRTIO_PCI_ISR_CONFIG);
        self.queues = st.queues.clone();
        Ok(())
    }

    /// The device used buffers of a queue: raise the queue interrupt.
    pub fn signal_used(&mut self) -> Effect {
        self.raise(VIRTIO_PCI_ISR_QUEUE)
    }

    /// The device configuration changed: bump `config_generation` and
    /// raise the configuration interrupt.
    pub fn signal_config_change(&mut self) -> Effect {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.raise(VIRTIO_PCI_ISR_CONFIG)
    }

    /// The device met an error it cannot recover from (a ring that broke
    /// a rule): set NEEDS_RESET and raise the configuration interrupt.
    /// The device stops using its queues until the driver resets it.
    pub fn set_needs_reset(&mut self) -> Effect {
        if self.status & NEEDS_RESET != 0 {
            return Effect::default();
        }
        self.status |= NEEDS_RESET;
        self.signal_config_change()
    }

    fn raise(&mut self, bits: u8) -> Effect {
        let was = self.isr != 0;
        self.isr |= bits;
        Effect {
            intx: (!was).then_some(true),
            ..Effect::default()
        }
    }

    /// Reads `size` (1, 2, 4 or 8) bytes at `offset` of the register BAR.
    /// Reading the ISR clears it, so this takes `&mut self`.
    pub fn read(&mut self, offset: u64, size: u32) -> (u64, Effect) {
        match region(offset) {
            Region::Common(off) => (self.read_common(off, size), Effect::default()),
            Region::Isr if size == 1 => {
                let v = self.isr;
                self.isr = 0;
                let intx = (v != 0).then_some(false);
                (
                    u64::from(v),
                    Effect {
                        intx,
                        ..Effect::default()
                    },
                )
            }
            Region::Device(off) => (self.read_device(off, size), Effect::default()),
            _ => (0, Effect::default()),
        }
    }

    /// Writes `size` bytes of `value` at `offset` of the register BAR.
    pub fn write(&mut self, offset: u64, size: u32, value: u64) -> Effect {
        match region(offset) {
            Region::Common(off) => self.write_common(off, size, value),
            Region::Device(off) => {
                if let Some(len) = self.device_access(off, size) {
                    let bytes = value.to_le_bytes();
                    self.device.write_config(off, &bytes[..len]);
                }
                Effect::default()
            }
            Region::Notify(off) => self.notify(off, size, value),
            Region::Isr | Region::None => Effect::default(),
        }
    }

    fn device_access(&self, off: u64, size: u32) -> Option<usize> {
        let len = usize::try_from(size).ok()?;
        (matches!(size, 1 | 2 | 4 | 8) && off + u64::from(size) <= self.device.config_len())
            .then_some(len)
    }

    fn read_device(&self, off: u64, size: u32) -> u64 {
        let Some(len) = self.device_access(off, size) else {
            return 0;
        };
        let mut bytes = [0u8; 8];
        self.device.read_config(off, &mut bytes[..len]);
        u64::from_le_bytes(bytes)
    }

    fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn read_common(&self, off: u64, size: u32) -> u64 {
        let q = self.selected();
        let v: u64 = match (off, size) {
            (common::DFSELECT, 4) => self.device_feature_select.into(),
            (common::DF, 4) => match self.device_feature_select {
                0 => self.device.features() & 0xffff_ffff,
                1 => self.device.features() >> 32,
                _ => 0,
            },
            (common::GFSELECT, 4) => self.driver_feature_select.into(),
            (common::GF, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (common::MSIX, 2) => VIRTIO_MSI_NO_VECTOR.into(),
            (common::NUMQ, 2) => self.queues.len() as u64,
            (common::STATUS, 1) => self.status.into(),
            (common::CFGGENERATION, 1) => self.config_generation.into(),
            (common::Q_SELECT, 2) => self.queue_select.into(),
            // An absent queue reads size 0: Linux's setup_vq stops there.
            (common::Q_SIZE, 2) => q.map_or(0, |q| q.size.into()),
            (common::Q_MSIX, 2) => VIRTIO_MSI_NO_VECTOR.into(),
            (common::Q_ENABLE, 2) => q.map_or(0, |q| q.enabled.into()),
            (common::Q_NOFF, 2) => q.map_or(0, |_| self.queue_select.into()),
            (common::Q_DESCLO, 4) => q.map_or(0, |q| q.desc & 0xffff_ffff),
            (common::Q_DESCHI, 4) => q.map_or(0, |q| q.desc >> 32),
            (common::Q_AVAILLO, 4) => q.map_or(0, |q| q.driver & 0xffff_ffff),
            (common::Q_AVAILHI, 4) => q.map_or(0, |q| q.driver >> 32),
            (common::Q_USEDLO, 4) => q.map_or(0, |q| q.device & 0xffff_ffff),
            (common::Q_USEDHI, 4) => q.map_or(0, |q| q.device >> 32),
            _ => {
                debug!(off, size, "virtio common cfg: read of no field");
                0
            }
        };
        v
    }

    fn write_common(&mut self, off: u64, size: u32, value: u64) -> Effect {
        let v32 = value as u32;
        match (off, size) {
            (common::DFSELECT, 4) => self.device_feature_select = v32,
            (common::GFSELECT, 4) => self.driver_feature_select = v32,
            (common::GF, 4) => self.write_driver_features(v32),
            (common::MSIX, 2) | (common::Q_MSIX, 2) => {}
            (common::STATUS, 1) => return self.write_status(value as u8),
            (common::Q_SELECT, 2) => self.queue_select = value as u16,
            (common::Q_SIZE, 2) => {
                if let Some(q) = self.writable_queue() {
                    q.size = value as u16;
                }
            }
            (common::Q_ENABLE, 2) => {
                if value == 1 {
                    if let Some(q) = self.writable_queue() {
                        q.enabled = true;
                    }
                }
            }
            (common::Q_DESCLO, 4) => self.set_queue_addr(|q| &mut q.desc, false, v32),
            (common::Q_DESCHI, 4) => self.set_queue_addr(|q| &mut q.desc, true, v32),
            (common::Q_AVAILLO, 4) => self.set_queue_addr(|q| &mut q.driver, false, v32),
            (common::Q_AVAILHI, 4) => self.set_queue_addr(|q| &mut q.driver, true, v32),
            (common::Q_USEDLO, 4) => self.set_queue_addr(|q| &mut q.device, false, v32),
            (common::Q_USEDHI, 4) => self.set_queue_addr(|q| &mut q.device, true, v32),
            _ => debug!(off, size, value, "virtio common cfg: write ignored"),
        }
        Effect::default()
    }

    fn write_driver_features(&mut self, v: u32) {
        // Only between DRIVER and FEATURES_OK (3.1.1 steps 3-5).
        if self.status & DRIVER == 0 || self.status & FEATURES_OK != 0 {
            debug!(
                status = self.status,
                "driver features written out of order: ignored"
            );
            return;
        }
        match self.driver_feature_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    /// The selected queue, if its registers may be written now.
    fn writable_queue(&mut self) -> Option<&mut QueueConfig> {
        let live = self.status & DRIVER_OK != 0;
        let q = self.queues.get_mut(usize::from(self.queue_select))?;
        (!q.enabled && !live).then_some(q)
    }

    fn set_queue_addr(&mut self, field: fn(&mut QueueConfig) -> &mut u64, hi: bool, v: u32) {
        if let Some(q) = self.writable_queue() {
            let f = field(q);
            *f = if hi {
                (*f & 0xffff_ffff) | (u64::from(v) << 32)
            } else {
                (*f & !0xffff_ffff) | u64::from(v)
            };
        }
    }

    fn write_status(&mut self, new: u8) -> Effect {
        if new == 0 {
            return self.reset();
        }
        let old = self.status;
        // NEEDS_RESET is the device's bit: a driver writing the status
        // back without it clears nothing.
        let driver_bits = old & !NEEDS_RESET;
        if new & driver_bits != driver_bits {
            debug!(old, new, "driver cleared device status bits: ignored");
            return Effect::default();
        }
        let mut next = new & (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED);
        next |= old & NEEDS_RESET;
        let mut effect = Effect::default();
        if next & FEATURES_OK != 0 && old & FEATURES_OK == 0 && !self.features_acceptable() {
            debug!(
                features = self.driver_features,
                "FEATURES_OK refused: features not acceptable"
            );
            next &= !(FEATURES_OK | DRIVER_OK);
        }
        if next & DRIVER_OK != 0 && old & DRIVER_OK == 0 {
            if next & FEATURES_OK == 0 {
                debug!("DRIVER_OK before FEATURES_OK: ignored");
                next &= !DRIVER_OK;
            } else if let Some(i) = self
                .queues
                .iter()
                .position(|q| q.enabled && !q.is_well_formed())
            {
                debug!(queue = i, q = ?self.queues[i], "enabled queue malformed: NEEDS_RESET");
                self.status = next | NEEDS_RESET;
                return self.signal_config_change();
            } else {
                effect.activated = next & (FAILED | NEEDS_RESET) == 0;
            }
        }
        self.status = next;
        effect
    }

    fn features_acceptable(&self) -> bool {
        let f = self.driver_features;
        f & F_VERSION_1 != 0 && f & !self.device.features() == 0 && self.device.accept_features(f)
    }

    fn reset(&mut self) -> Effect {
        let had_irq = self.isr != 0;
        self.device.reset();
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        self.isr = 0;
        Effect {
            intx: had_irq.then_some(false),
            reset: true,
            ..Effect::default()
        }
    }

    fn notify(&mut self, off: u64, size: u32, value: u64) -> Effect {
        if !matches!(size, 2 | 4) || off % u64::from(NOTIFY_OFF_MULTIPLIER) != 0 {
            return Effect::default();
        }
        let by_address = off / u64::from(NOTIFY_OFF_MULTIPLIER);
        // Without VIRTIO_F_NOTIFICATION_DATA the driver writes the queue
        // index at the queue's own address; both must agree.
        let index = value as u16;
        let ok = u64::from(index) == by_address
            && self.is_live()
            && self
                .queues
                .get(usize::from(index))
                .is_some_and(|q| q.enabled);
        if !ok {
            debug!(off, value, "notification ignored");
            return Effect::default();
        }
        Effect {
            notify: Some(index),
            ..Effect::default()
        }
    }
}

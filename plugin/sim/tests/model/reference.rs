//! The reference model: what should be true of each domid slot, in the
//! simplest terms (no pages, no Xen): is a domain there, does its server
//! run, where is its BAR, which BAR pages are registered.

use std::collections::BTreeMap;

use gpu_hostmem_core::pci::MAX_DECODE_END;

use super::strategies::{Op, BAR_PAGES, BAR_SIZE, FIRMWARE_BASE};

/// Server state of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    Running,
    Killed,
    /// The domain died under it; it stopped serving.
    Gone,
}

/// One domain.
#[derive(Clone, Debug)]
pub struct RefDomain {
    pub server: ServerState,
    /// Committed BAR base (0: none).
    pub bar_base: u64,
    pub decode: bool,
    /// id -> (first page, pages).
    pub regs: BTreeMap<u8, (u64, u64)>,
    /// The domain is dying (died mid-operation) until destroyed.
    pub dying: bool,
}

impl RefDomain {
    /// The base the BAR decodes at: decode on, an address, and the whole
    /// BAR within what a guest access can reach.
    pub fn active_bar(&self) -> Option<u64> {
        let fits = self
            .bar_base
            .checked_add(BAR_SIZE)
            .is_some_and(|end| end <= MAX_DECODE_END);
        (self.decode && self.bar_base != 0 && fits).then_some(self.bar_base)
    }

    pub fn registered(&self, page: u64) -> bool {
        self.regs.values().any(|&(p, n)| p <= page && page < p + n)
    }

    fn overlaps(&self, page: u64, nr: u64) -> bool {
        self.regs
            .values()
            .any(|&(p, n)| p < page + nr && page < p + n)
    }

    pub fn serving(&self) -> bool {
        self.server == ServerState::Running && !self.dying
    }
}

/// The whole model.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    pub slots: BTreeMap<u8, RefDomain>,
    /// Faults armed and possibly not consumed yet: predictions relax.
    pub faults_armed: bool,
    /// Slots whose domid has been used by an earlier, destroyed domain.
    pub reused: BTreeMap<u8, u32>,
}

impl Reference {
    /// Apply a transition the SUT has just performed. `created` tells
    /// whether a Create succeeded (it fails if setup faults are armed).
    pub fn apply(&mut self, op: &Op, created: bool) {
        match *op {
            Op::Create { slot, .. } => {
                if created {
                    self.slots.insert(
                        slot,
                        RefDomain {
                            server: ServerState::Running,
                            bar_base: FIRMWARE_BASE,
                            decode: true,
                            regs: BTreeMap::new(),
                            dying: false,
                        },
                    );
                }
            }
            Op::Register { slot, id, page, nr } => {
                if let Some(d) = self.slots.get_mut(&slot) {
                    let nr = nr.min(BAR_PAGES - page).max(1);
                    if !d.dying && !d.regs.contains_key(&id) && !d.overlaps(page, nr) {
                        d.regs.insert(id, (page, nr));
                    }
                }
            }
            Op::Unregister { slot, id } => {
                if let Some(d) = self.slots.get_mut(&slot) {
                    if !d.dying {
                        d.regs.remove(&id);
                    }
                }
            }
            Op::MoveBar { slot, base } => {
                if let Some(d) = self.slots.get_mut(&slot) {
                    if d.serving() {
                        d.bar_base = base;
                    }
                }
            }
            Op::ToggleDecode { slot } => {
                if let Some(d) = self.slots.get_mut(&slot) {
                    if d.serving() {
                        d.decode = !d.decode;
                    }
                }
            }
            Op::KillServer { slot } => {
                if let Some(d) = self.slots.get_mut(&slot) {
                    if d.server == ServerState::Running {
                        d.server = ServerState::Killed;
                    }
                }
            }
            Op::Destroy { slot } => {
                if self.slots.remove(&slot).is_some() {
                    *self.reused.entry(slot).or_default() += 1;
                }
            }
            Op::Fault(_) => self.faults_armed = true,
            Op::Read { .. }
            | Op::FaultyRead { .. }
            | Op::Exec { .. }
            | Op::Write { .. }
            | Op::Migrate { .. }
            | Op::ProbeBar { .. }
            | Op::StaleTeardown { .. } => {}
        }
    }
}

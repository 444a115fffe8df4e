//! The simulated state: Xen's domains (identity, vCPUs, ioreq servers with
//! their 32-byte slots, event channels, a p2m of lent pages) and privcmd's
//! per-guest registrations of host frames with page reference counts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gpu_hostmem_core::ioreq::{Sbdf, IOREQ_SIZE};
use gpu_hostmem_core::platform::{DomainIdentity, Errno, IoServId, PlatformError, RetryStats};

use crate::faults::FaultPlan;

/// A host frame id (the simulator's MFN).
pub type FrameId = u64;

/// Bytes in a page.
pub const PAGE_BYTES: usize = 4096;

/// One page of bytes.
pub type PageBytes = Box<[u8; PAGE_BYTES]>;

/// The byte a fresh frame holds at `i`: a hash of the frame and the
/// offset, so that no two frames (and no two offsets) look alike and a
/// run of all-ones bytes practically never occurs.
pub fn pattern_byte(frame: FrameId, i: usize) -> u8 {
    let x = ((frame << 12) | i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = (x >> 56) as u8;
    if b == 0xff {
        0x7f
    } else {
        b
    }
}

/// A host page owned by a backend process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its id (seeds the initial content).
    pub id: FrameId,
    /// Its bytes once anyone wrote them; until then [`pattern_byte`].
    pub bytes: Option<PageBytes>,
    /// References: one for the backend's mapping, one per p2m entry.
    pub refs: u32,
    /// The backend still maps it.
    pub backend_mapped: bool,
    /// Where it is lent, if it is: (domain uid, gfn).
    pub lent_at: Option<([u8; 16], u64)>,
}

impl Frame {
    /// Copy `buf.len()` bytes from offset `off` (within the page).
    pub fn read(&self, off: usize, buf: &mut [u8]) {
        match &self.bytes {
            Some(b) => buf.copy_from_slice(&b[off..off + buf.len()]),
            None => {
                for (k, v) in buf.iter_mut().enumerate() {
                    *v = pattern_byte(self.id, off + k);
                }
            }
        }
    }

    /// Store `data` at offset `off` (within the page).
    pub fn write(&mut self, off: usize, data: &[u8]) {
        let id = self.id;
        let b = self.bytes.get_or_insert_with(|| {
            let mut p = Box::new([0u8; PAGE_BYTES]);
            for (i, v) in p.iter_mut().enumerate() {
                *v = pattern_byte(id, i);
            }
            p
        });
        b[off..off + data.len()].copy_from_slice(data);
    }
}

/// One privcmd registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRegistration {
    /// Id.
    pub id: u32,
    /// BAR offset.
    pub offset: u64,
    /// Frame of each page.
    pub frames: Vec<FrameId>,
    /// Backend pid.
    pub owner_pid: u32,
}

impl SimRegistration {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.frames.len() as u64 * 4096
    }
}

/// One ioreq server inside Xen.
#[derive(Clone, Debug)]
pub struct IoServer {
    /// Opted in to RETRY.
    pub retry: bool,
    /// Enabled.
    pub enabled: bool,
    /// The shared ioreq page: one 32-byte `ioreq_t` per vCPU.
    pub slots: Vec<[u8; IOREQ_SIZE]>,
    /// A process has the page mapped and the event channels bound.
    pub channel_open: bool,
    /// Events Xen sent to the server not yet consumed.
    pub pending_events: u32,
    /// Events the server sent to Xen.
    pub notifications: u64,
    /// Claimed PCI functions.
    pub pcidevs: BTreeSet<Sbdf>,
    /// Claimed MMIO ranges, inclusive.
    pub mmio: Vec<(u64, u64)>,
}

/// A domain.
#[derive(Clone, Debug)]
pub struct Domain {
    /// Identity.
    pub ident: DomainIdentity,
    /// vCPUs.
    pub nr_vcpus: u32,
    /// Dying: every operation answers ESRCH, the p2m stays until destroy.
    pub dying: bool,
    /// Ioreq servers.
    pub servers: BTreeMap<IoServId, IoServer>,
    /// Next server id.
    pub next_servid: IoServId,
    /// Lent pages: gfn -> frame.
    pub p2m: BTreeMap<u64, FrameId>,
    /// privcmd registrations for this guest, by id.
    pub registrations: BTreeMap<u32, SimRegistration>,
    /// Xen's per-domain counter of accesses completed as unbacked.
    pub unbacked: u64,
    /// Xen's per-domain counters of how RETRY answers ended
    /// (`XEN_DMOP_get_retry_stats`; kept under [`RetryRule::Contract`]).
    pub retry_stats: RetryStats,
    /// Consecutive retries per vCPU ([`RetryRule::Reexecute`] only).
    pub vcpu_retries: Vec<u32>,
    /// Guest RAM, by GFN (pages the test added).
    pub ram: BTreeMap<u64, PageBytes>,
    /// Shut down as crashed by a device model, with the reason it gave
    /// (`xendevicemodel_shutdown(SHUTDOWN_crash)`): its vCPUs no longer
    /// run, the platform operations still work until it is destroyed.
    pub crashed: Option<String>,
    /// INTA levels set by device models (`XEN_DMOP_set_pci_intx_level`),
    /// by function, and how many times each was set.
    pub intx: BTreeMap<gpu_hostmem_core::ioreq::Sbdf, (bool, u64)>,
}

/// An operation the platform applied to a domain, for I5 checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Operation name.
    pub op: &'static str,
    /// Identity the caller named.
    pub asked: DomainIdentity,
    /// Uid of the domain that was changed.
    pub target_uid: [u8; 16],
}

/// How the simulated Xen treats `STATE_IORESP_RETRY`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryRule {
    /// The contract: if every page the request touches is mapped, Xen
    /// completes the access from that memory itself (copying guest memory
    /// for `data_is_ptr`); otherwise it sends the same request again, at
    /// most 8 times, then completes it as unbacked and counts it.
    #[default]
    Contract,
    /// The rule before it, kept to show that the tests catch its flaws:
    /// RETRY is honoured if the page of `addr` is mapped and the vCPU has
    /// had at most 8 consecutive retries; a plain request is then
    /// re-executed (it reaches the memory), but a `data_is_ptr` request is
    /// taken as completed without any copy, as Xen did.
    Reexecute,
}

/// Options that change the simulated platform's behaviour; the `broken_*`
/// ones exist to show that the property tests catch a platform bug.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimOptions {
    /// How RETRY is honoured.
    pub retry_rule: RetryRule,
    /// Per-domain lent-page limit of Xen/privcmd (0: none).
    pub kernel_lent_limit: u64,
    /// BREAK I5 on purpose: act on the domid without checking the uid.
    pub broken_skip_identity_check: bool,
    /// A libxendevicemodel without `xendevicemodel_get_retry_stats` (not
    /// the gpu-hostmem series): reading the RETRY counters gives `ENOSYS`.
    pub no_retry_stats_call: bool,
}

/// The whole simulated machine.
#[derive(Debug, Default)]
pub struct World {
    /// Live (or dying) domains by domid.
    pub domains: BTreeMap<u16, Domain>,
    /// Host frames.
    pub frames: HashMap<FrameId, Frame>,
    /// Next frame id.
    pub next_frame: FrameId,
    /// Next uid counter.
    pub next_uid: u64,
    /// Injectable faults.
    pub faults: FaultPlan,
    /// Operations applied, for I5.
    pub applied: Vec<Applied>,
    /// Options.
    pub opts: SimOptions,
    /// Frames released by their backend while still referenced (leaks or
    /// use-after-free candidates).
    pub orphaned: BTreeSet<FrameId>,
    /// `IOCTL_PRIVCMD_HOSTMEM_QUERY` calls made, to check that a server
    /// does not ask per fault.
    pub queries: u64,
    /// `write_guest_ram` calls made (a device model writing guest RAM).
    pub guest_ram_writes: u64,
}

impl World {
    /// The domain `dom` names, checking its uid; ESRCH if it is gone, dying
    /// or the domid now names another domain.
    pub fn domain_mut(
        &mut self,
        dom: &DomainIdentity,
        op: &'static str,
    ) -> Result<&mut Domain, PlatformError> {
        let skip = self.opts.broken_skip_identity_check;
        match self.domains.get_mut(&dom.domid) {
            Some(d) if (skip || d.ident.uid == dom.uid) && !d.dying => {
                self.applied.push(Applied {
                    op,
                    asked: *dom,
                    target_uid: d.ident.uid,
                });
                Ok(d)
            }
            _ => Err(PlatformError::new(op, Errno::ESRCH)),
        }
    }

    /// Read-only variant of [`World::domain_mut`].
    pub fn domain(&self, dom: &DomainIdentity, op: &'static str) -> Result<&Domain, PlatformError> {
        let skip = self.opts.broken_skip_identity_check;
        match self.domains.get(&dom.domid) {
            Some(d) if (skip || d.ident.uid == dom.uid) && !d.dying => Ok(d),
            _ => Err(PlatformError::new(op, Errno::ESRCH)),
        }
    }

    /// Drop the p2m entry at `gfn` of `domid` (if any), releasing the
    /// frame's reference. Returns true if something was removed.
    pub fn unmap_gfn(&mut self, domid: u16, gfn: u64) -> bool {
        let Some(d) = self.domains.get_mut(&domid) else {
            return false;
        };
        let Some(f) = d.p2m.remove(&gfn) else {
            return false;
        };
        self.release_ref(f);
        true
    }

    /// Drop one reference of a lent frame.
    pub fn release_ref(&mut self, f: FrameId) {
        if let Some(fr) = self.frames.get_mut(&f) {
            fr.refs = fr.refs.saturating_sub(1);
            fr.lent_at = None;
            if fr.refs == 0 && !fr.backend_mapped {
                self.frames.remove(&f);
                self.orphaned.remove(&f);
            }
        }
    }

    /// A fresh frame held by a backend.
    pub fn new_frame(&mut self) -> FrameId {
        let id = self.next_frame;
        self.next_frame += 1;
        self.frames.insert(
            id,
            Frame {
                id,
                bytes: None,
                refs: 1,
                backend_mapped: true,
                lent_at: None,
            },
        );
        id
    }

    /// The backend unmaps a frame (after the notifier ran).
    pub fn backend_release(&mut self, f: FrameId) {
        let Some(fr) = self.frames.get_mut(&f) else {
            return;
        };
        fr.backend_mapped = false;
        fr.refs = fr.refs.saturating_sub(1);
        if fr.refs == 0 {
            self.frames.remove(&f);
        } else {
            self.orphaned.insert(f);
        }
    }

    /// MMU notifier on the frame lent at `gfn` of `dom`: revoke it.
    pub fn notifier_revoke_gfn(&mut self, dom: &DomainIdentity, gfn: u64) {
        let f = self
            .domains
            .get(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid)
            .and_then(|d| d.p2m.get(&gfn).copied());
        if let Some(f) = f {
            self.notifier_revoke(f);
        }
    }

    /// MMU notifier: revoke every p2m entry of `f`, wherever it is lent.
    pub fn notifier_revoke(&mut self, f: FrameId) {
        let Some(fr) = self.frames.get(&f) else {
            return;
        };
        if let Some((uid, gfn)) = fr.lent_at {
            let domid = self
                .domains
                .iter()
                .find(|(_, d)| d.ident.uid == uid)
                .map(|(id, _)| *id);
            if let Some(domid) = domid {
                self.unmap_gfn(domid, gfn);
            }
        }
    }
}

impl World {
    /// True if guest-physical page `gfn` of `domid` is memory: a lent
    /// frame or guest RAM.
    pub fn mapped(&self, domid: u16, gfn: u64) -> bool {
        self.domains
            .get(&domid)
            .is_some_and(|d| d.p2m.contains_key(&gfn) || d.ram.contains_key(&gfn))
    }

    /// True if every page of `[gpa, gpa + len)` is memory.
    pub fn range_mapped(&self, domid: u16, gpa: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some(last) = gpa.checked_add(len - 1) else {
            return false;
        };
        (gpa >> 12..=last >> 12).all(|g| self.mapped(domid, g))
    }

    /// Read guest-physical memory (lent frames and guest RAM); false, with
    /// `buf` untouched from the first unmapped page on, if some page is not
    /// memory.
    pub fn phys_read(&self, domid: u16, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(d) = self.domains.get(&domid) else {
            return false;
        };
        let mut done = 0usize;
        while done < buf.len() {
            let a = gpa.wrapping_add(done as u64);
            let off = (a & 0xfff) as usize;
            let n = (PAGE_BYTES - off).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            if let Some(f) = d.p2m.get(&(a >> 12)) {
                match self.frames.get(f) {
                    Some(fr) => fr.read(off, out),
                    None => return false,
                }
            } else if let Some(p) = d.ram.get(&(a >> 12)) {
                out.copy_from_slice(&p[off..off + n]);
            } else {
                return false;
            }
            done += n;
        }
        true
    }

    /// Write guest-physical memory; false if some page is not memory (the
    /// pages before it are written).
    pub fn phys_write(&mut self, domid: u16, gpa: u64, data: &[u8]) -> bool {
        let mut done = 0usize;
        while done < data.len() {
            let a = gpa.wrapping_add(done as u64);
            let off = (a & 0xfff) as usize;
            let n = (PAGE_BYTES - off).min(data.len() - done);
            let part = &data[done..done + n];
            let Some(d) = self.domains.get_mut(&domid) else {
                return false;
            };
            if let Some(f) = d.p2m.get(&(a >> 12)).copied() {
                match self.frames.get_mut(&f) {
                    Some(fr) => fr.write(off, part),
                    None => return false,
                }
            } else if let Some(p) = d.ram.get_mut(&(a >> 12)) {
                p[off..off + n].copy_from_slice(part);
            } else {
                return false;
            }
            done += n;
        }
        true
    }
}

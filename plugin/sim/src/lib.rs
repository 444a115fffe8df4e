//! A simulated Xen + privcmd platform with real state, for testing the
//! gpu-hostmem logic without a hypervisor.
//!
//! [`Sim`] is the machine. It hands out the platform handles the server
//! uses ([`SimDeviceModel`], [`SimHostMem`], and through them
//! [`SimChannel`]), and plays the other actors itself: Xen (domains with
//! identity, an ioreq page per server holding real 32-byte `ioreq_t`
//! slots, event channels, a p2m of lent pages, guest RAM, the instruction
//! emulator's split of accesses into requests and the RETRY contract, see
//! [`Sim::execute`]), GPU backends (registering host frames of real bytes,
//! unmapping them, page migration through the MMU notifier) and the guest
//! (loads, stores, `rep stos`, `rep movs` and PCI config accesses). Faults
//! can be armed ([`Fault`]).
//!
//! Everything is single-threaded: a guest access that reaches the server
//! calls back into the test (`run`) so the server can drain its slots, as
//! the real vCPU would wait for the event channel.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod exec;
mod faults;
pub mod harness;
mod platform;
mod world;

use std::cell::RefCell;
use std::rc::Rc;

use gpu_hostmem_core::ioreq::{
    size_mask, Ioreq, PciConfigAddress, IOREQ_READ, IOREQ_SIZE, IOREQ_STATE_OFFSET,
    IOREQ_TYPE_PCI_CONFIG, IOREQ_WRITE, STATE_IOREQ_INPROCESS, STATE_IOREQ_NONE, STATE_IOREQ_READY,
    STATE_IORESP_READY, STATE_IORESP_RETRY,
};
use gpu_hostmem_core::platform::{DomainIdentity, Errno, IoServId, PlatformError};

pub use exec::{span, Extent, Insn, InsnReport, MAX_REPS};
pub use faults::{Fault, FaultPlan};
pub use platform::{SimChannel, SimDeviceModel, SimHostMem};
pub use world::{
    pattern_byte, Applied, Domain, Frame, FrameId, IoServer, RetryRule, SimOptions,
    SimRegistration, World,
};

/// How a guest access completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reached lent memory: at once, or completed by Xen from it after a
    /// RETRY. The frame read (or written).
    Ram {
        /// The host frame.
        frame: FrameId,
        /// Its content.
        value: u64,
    },
    /// The server emulated it (IORESP_READY).
    Emulated {
        /// Data (reads).
        value: u64,
    },
    /// Xen completed it as unbacked: a RETRY it could not honour, after
    /// its resends.
    Unbacked {
        /// All-ones for reads.
        value: u64,
    },
    /// No server claims the address: Xen's default (all-ones, drop).
    NoDevice {
        /// All-ones for reads.
        value: u64,
    },
    /// The server did not answer (killed): the vCPU would stay blocked.
    Blocked,
    /// The server answered with a state Xen does not accept; the domain
    /// was crashed.
    Crashed,
    /// The domain is gone, dying, or was shut down as crashed.
    Gone,
}

impl Access {
    /// The value a read returned, if it completed.
    pub fn value(&self) -> Option<u64> {
        match *self {
            Access::Ram { value, .. }
            | Access::Emulated { value }
            | Access::Unbacked { value }
            | Access::NoDevice { value } => Some(value),
            _ => None,
        }
    }
}

/// An access and how many RETRY answers it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessReport {
    /// How it completed.
    pub access: Access,
    /// RETRY answers the server gave for it.
    pub retries: u32,
}

/// The simulated machine (a cheap handle; clones share the state).
#[derive(Clone, Debug, Default)]
pub struct Sim {
    world: Rc<RefCell<World>>,
}

const PAGE: u64 = 4096;

/// How many times a vCPU whose request the server left pending lets the
/// server run again before the simulator calls it blocked. Above the
/// server's own bound on a request left pending after lend errors, which
/// ends by completing it: a vCPU within that bound is not blocked.
pub const MAX_PENDING_WAKES: u32 = 1024;
const _: () = assert!(MAX_PENDING_WAKES > gpu_hostmem_core::server::LEND_ERROR_ATTEMPTS);

impl Sim {
    /// A machine with no domains.
    pub fn new(opts: SimOptions) -> Self {
        let sim = Sim::default();
        sim.world.borrow_mut().opts = opts;
        sim
    }

    /// A device-model handle (what the ioreq server opens).
    pub fn device_model(&self) -> SimDeviceModel {
        SimDeviceModel {
            world: self.world.clone(),
        }
    }

    /// A privcmd handle.
    pub fn host_mem(&self) -> SimHostMem {
        SimHostMem {
            world: self.world.clone(),
        }
    }

    /// Arm a fault.
    pub fn arm(&self, f: Fault) {
        self.world.borrow_mut().faults.arm(f);
    }

    /// Disarm every fault.
    pub fn disarm_all(&self) {
        self.world.borrow_mut().faults.clear();
    }

    /// Look at the state.
    pub fn with_world<T>(&self, f: impl FnOnce(&World) -> T) -> T {
        f(&self.world.borrow())
    }

    /// Create a domain; a reused domid gets a new uid. `EEXIST` if the
    /// domid is in use.
    pub fn create_domain(
        &self,
        domid: u16,
        nr_vcpus: u32,
    ) -> Result<DomainIdentity, PlatformError> {
        let mut w = self.world.borrow_mut();
        if w.domains.contains_key(&domid) {
            return Err(PlatformError::new("create_domain", Errno::EEXIST));
        }
        // Xen's unique id: a counter, never reused, never 0; the identity
        // every lend is checked against (as Xen checks the lend DMOP's).
        w.next_uid += 1;
        let ident = DomainIdentity::from_unique_id(domid, w.next_uid);
        w.domains.insert(
            domid,
            Domain {
                ident,
                nr_vcpus,
                dying: false,
                servers: Default::default(),
                next_servid: 0,
                p2m: Default::default(),
                registrations: Default::default(),
                unbacked: 0,
                retry_stats: Default::default(),
                vcpu_retries: vec![0; nr_vcpus as usize],
                ram: Default::default(),
                crashed: None,
                intx: Default::default(),
            },
        );
        Ok(ident)
    }

    /// The domain crashes or shuts down: it is dying until destroyed.
    pub fn kill_domain(&self, dom: &DomainIdentity) {
        if let Some(d) = self.world.borrow_mut().domains.get_mut(&dom.domid) {
            if d.ident.uid == dom.uid {
                d.dying = true;
            }
        }
    }

    /// Xen destroys the domain: every reference left in its p2m is dropped
    /// (relinquish), its servers and privcmd registrations go away, and the
    /// backends release their memory. Returns how many lent entries Xen had
    /// to drop (0 when the teardown before it was total). `ESRCH` if gone.
    pub fn destroy_domain(&self, dom: &DomainIdentity) -> Result<u64, PlatformError> {
        let mut w = self.world.borrow_mut();
        match w.domains.get(&dom.domid) {
            Some(d) if d.ident.uid == dom.uid => {}
            _ => return Err(PlatformError::new("destroy_domain", Errno::ESRCH)),
        }
        let gfns: Vec<u64> = w.domains[&dom.domid].p2m.keys().copied().collect();
        let dropped = gfns.len() as u64;
        for g in gfns {
            w.unmap_gfn(dom.domid, g);
        }
        if let Some(d) = w.domains.remove(&dom.domid) {
            for r in d.registrations.values() {
                for f in &r.frames {
                    w.backend_release(*f);
                }
            }
        }
        Ok(dropped)
    }

    /// The identity that has `domid` now.
    pub fn identity(&self, domid: u16) -> Option<DomainIdentity> {
        self.world.borrow().domains.get(&domid).map(|d| d.ident)
    }

    /// A backend registers `nr_pages` fresh pages at BAR `offset`
    /// (`IOCTL_PRIVCMD_HOSTMEM_REGISTER`).
    pub fn register(
        &self,
        dom: &DomainIdentity,
        id: u32,
        offset: u64,
        nr_pages: u64,
        owner_pid: u32,
    ) -> Result<(), PlatformError> {
        const OP: &str = "IOCTL_PRIVCMD_HOSTMEM_REGISTER";
        let mut w = self.world.borrow_mut();
        if offset % PAGE != 0 || nr_pages == 0 || offset.checked_add(nr_pages * PAGE).is_none() {
            return Err(PlatformError::new(OP, Errno::EINVAL));
        }
        let d = w.domain(dom, OP)?;
        let end = offset + nr_pages * PAGE;
        if d.registrations.contains_key(&id)
            || d.registrations
                .values()
                .any(|r| r.offset < end && offset < r.offset + r.size())
        {
            return Err(PlatformError::new(OP, Errno::EEXIST));
        }
        let frames: Vec<FrameId> = (0..nr_pages).map(|_| w.new_frame()).collect();
        let d = w.domain_mut(dom, OP)?;
        d.registrations.insert(
            id,
            SimRegistration {
                id,
                offset,
                frames,
                owner_pid,
            },
        );
        Ok(())
    }

    /// The backend unmaps a registration (munmap, or its process dies):
    /// the MMU notifier revokes every lent page first, then the frames go.
    /// `ENOENT` if there is no such registration.
    pub fn unregister(&self, dom: &DomainIdentity, id: u32) -> Result<(), PlatformError> {
        const OP: &str = "IOCTL_PRIVCMD_HOSTMEM_UNREGISTER";
        let mut w = self.world.borrow_mut();
        let d = w.domain_mut(dom, OP)?;
        let r = d
            .registrations
            .remove(&id)
            .ok_or(PlatformError::new(OP, Errno::ENOENT))?;
        for f in &r.frames {
            w.notifier_revoke(*f);
            w.backend_release(*f);
        }
        Ok(())
    }

    /// Page migration of one page of a registration: the notifier revokes
    /// it, the backend's mapping moves to a new frame, the old one is freed.
    pub fn migrate_page(
        &self,
        dom: &DomainIdentity,
        id: u32,
        page: u64,
    ) -> Result<(), PlatformError> {
        const OP: &str = "migrate_page";
        let mut w = self.world.borrow_mut();
        let d = w.domain(dom, OP)?;
        let r = d
            .registrations
            .get(&id)
            .ok_or(PlatformError::new(OP, Errno::ENOENT))?;
        let Some(&old) = r.frames.get(page as usize) else {
            return Err(PlatformError::new(OP, Errno::EINVAL));
        };
        w.notifier_revoke(old);
        w.backend_release(old);
        let new = w.new_frame();
        let d = w.domain_mut(dom, OP)?;
        if let Some(r) = d.registrations.get_mut(&id) {
            r.frames[page as usize] = new;
        }
        Ok(())
    }

    /// Lent pages of `dom` now (0 if it is gone).
    pub fn lent_pages(&self, dom: &DomainIdentity) -> u64 {
        let w = self.world.borrow();
        match w.domains.get(&dom.domid) {
            Some(d) if d.ident.uid == dom.uid => d.p2m.len() as u64,
            _ => 0,
        }
    }

    /// The p2m of lent pages of `dom` (gfn, frame).
    pub fn p2m(&self, dom: &DomainIdentity) -> Vec<(u64, FrameId)> {
        let w = self.world.borrow();
        match w.domains.get(&dom.domid) {
            Some(d) if d.ident.uid == dom.uid => d.p2m.iter().map(|(g, f)| (*g, *f)).collect(),
            _ => Vec::new(),
        }
    }

    /// The frame registered at BAR `offset` of `dom`, and its first 8
    /// bytes (little endian).
    pub fn registered_frame(&self, dom: &DomainIdentity, offset: u64) -> Option<(FrameId, u64)> {
        let w = self.world.borrow();
        let d = w
            .domains
            .get(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid)?;
        let r = d
            .registrations
            .values()
            .find(|r| r.offset <= offset && offset < r.offset + r.size())?;
        let f = r.frames[((offset - r.offset) / PAGE) as usize];
        w.frames.get(&f).map(|fr| {
            let mut b = [0u8; 8];
            fr.read(0, &mut b);
            (f, u64::from_le_bytes(b))
        })
    }

    /// The backend's bytes at BAR offsets `[offset, offset + len)` of
    /// `dom`: `None` for bytes nobody registered.
    pub fn backend_bytes(&self, dom: &DomainIdentity, offset: u64, len: u64) -> Vec<Option<u8>> {
        let w = self.world.borrow();
        let Some(d) = w.domains.get(&dom.domid).filter(|d| d.ident.uid == dom.uid) else {
            return vec![None; len as usize];
        };
        (offset..offset + len)
            .map(|o| {
                let r = d
                    .registrations
                    .values()
                    .find(|r| r.offset <= o && o < r.offset + r.size())?;
                let f = r.frames[((o - r.offset) / PAGE) as usize];
                let mut b = [0u8; 1];
                w.frames.get(&f)?.read((o % PAGE) as usize, &mut b);
                Some(b[0])
            })
            .collect()
    }

    /// Give `dom` `nr_pages` of guest RAM from guest-physical `gpa` (page
    /// aligned), zero filled. Data pointers of string requests point here.
    pub fn add_guest_ram(&self, dom: &DomainIdentity, gpa: u64, nr_pages: u64) {
        let mut w = self.world.borrow_mut();
        if let Some(d) = live(&mut w.domains, dom) {
            for g in gpa / PAGE..gpa / PAGE + nr_pages {
                d.ram
                    .entry(g)
                    .or_insert_with(|| Box::new([0u8; world::PAGE_BYTES]));
            }
        }
    }

    /// Read guest-physical memory as the guest's own RAM accesses would
    /// (lent pages and RAM); `None` if some page is neither.
    pub fn mem_read(&self, dom: &DomainIdentity, gpa: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.world
            .borrow()
            .phys_read(dom.domid, gpa, &mut buf)
            .then_some(buf)
    }

    /// Write guest RAM (or lent pages) directly; false if some page is
    /// neither.
    pub fn mem_write(&self, dom: &DomainIdentity, gpa: u64, data: &[u8]) -> bool {
        self.world.borrow_mut().phys_write(dom.domid, gpa, data)
    }

    /// The INTA level of `sbdf` in `dom` as device models last set it,
    /// and how many times they set it (`(false, 0)` if never).
    pub fn intx(&self, dom: &DomainIdentity, sbdf: gpu_hostmem_core::ioreq::Sbdf) -> (bool, u64) {
        let w = self.world.borrow();
        w.domains
            .get(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid)
            .and_then(|d| d.intx.get(&sbdf).copied())
            .unwrap_or((false, 0))
    }

    /// Copy guest RAM as a device model's foreign mapping would: only
    /// pages of the guest's own RAM map (a lent page, MMIO or a hole does
    /// not; xen-patches 0001 refuses foreign mappings of lent pages).
    /// `Err(gfn)` names the first page that does not map.
    pub fn foreign_read(&self, dom: &DomainIdentity, gpa: u64, buf: &mut [u8]) -> Result<(), u64> {
        self.foreign_copy(dom, gpa, buf.len(), |page, off, at, n| {
            buf[at..at + n].copy_from_slice(&page[off..off + n]);
        })
    }

    /// Write guest RAM as a foreign mapping would (see
    /// [`Sim::foreign_read`]).
    pub fn foreign_write(&self, dom: &DomainIdentity, gpa: u64, data: &[u8]) -> Result<(), u64> {
        self.foreign_copy_mut(dom, gpa, data.len(), |page, off, at, n| {
            page[off..off + n].copy_from_slice(&data[at..at + n]);
        })
    }

    fn foreign_copy(
        &self,
        dom: &DomainIdentity,
        gpa: u64,
        len: usize,
        mut f: impl FnMut(&[u8; world::PAGE_BYTES], usize, usize, usize),
    ) -> Result<(), u64> {
        let w = self.world.borrow();
        let d = w
            .domains
            .get(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid && !d.dying)
            .ok_or(gpa / PAGE)?;
        let end = gpa.checked_add(len as u64).ok_or(gpa / PAGE)?;
        let mut at = gpa;
        while at < end {
            let gfn = at / PAGE;
            let off = (at % PAGE) as usize;
            let n = ((PAGE - at % PAGE).min(end - at)) as usize;
            let page = d.ram.get(&gfn).ok_or(gfn)?;
            f(page, off, (at - gpa) as usize, n);
            at += n as u64;
        }
        Ok(())
    }

    fn foreign_copy_mut(
        &self,
        dom: &DomainIdentity,
        gpa: u64,
        len: usize,
        mut f: impl FnMut(&mut [u8; world::PAGE_BYTES], usize, usize, usize),
    ) -> Result<(), u64> {
        let mut w = self.world.borrow_mut();
        let d = w
            .domains
            .get_mut(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid && !d.dying)
            .ok_or(gpa / PAGE)?;
        let end = gpa.checked_add(len as u64).ok_or(gpa / PAGE)?;
        let mut at = gpa;
        while at < end {
            let gfn = at / PAGE;
            let off = (at % PAGE) as usize;
            let n = ((PAGE - at % PAGE).min(end - at)) as usize;
            let page = d.ram.get_mut(&gfn).ok_or(gfn)?;
            f(page, off, (at - gpa) as usize, n);
            at += n as u64;
        }
        Ok(())
    }

    /// The reason a device model gave for crashing `dom`, if it did.
    pub fn crash_reason(&self, dom: &DomainIdentity) -> Option<String> {
        let w = self.world.borrow();
        w.domains
            .get(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid)
            .and_then(|d| d.crashed.clone())
    }

    /// The state nibble of `vcpu`'s slot in server `id` of `dom` (what
    /// Xen sees), or `None` if there is no such slot.
    pub fn slot_state(&self, dom: &DomainIdentity, id: IoServId, vcpu: u32) -> Option<u8> {
        self.slot(dom, id, vcpu)
            .map(|slot| slot[IOREQ_STATE_OFFSET] & 0x0f)
    }

    /// The whole of `vcpu`'s slot in server `id` of `dom` (the request and
    /// its state), or `None` if there is no such slot.
    pub fn slot(&self, dom: &DomainIdentity, id: IoServId, vcpu: u32) -> Option<[u8; IOREQ_SIZE]> {
        let w = self.world.borrow();
        let d = w
            .domains
            .get(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid)?;
        d.servers.get(&id)?.slots.get(vcpu as usize).copied()
    }

    /// Put `bytes` back into `vcpu`'s slot: with [`Sim::slot`], undoes a
    /// server's completion, as if the process had died after acting on
    /// the request and before answering it. False if there is no such slot.
    pub fn set_slot(
        &self,
        dom: &DomainIdentity,
        id: IoServId,
        vcpu: u32,
        bytes: [u8; IOREQ_SIZE],
    ) -> bool {
        self.with_slot_mut(dom, id, vcpu, |slot| *slot = bytes)
    }

    /// Set the state nibble of `vcpu`'s slot in server `id` of `dom`, as
    /// a server process does (READY -> INPROCESS) before it dies. False if
    /// there is no such slot.
    pub fn set_slot_state(&self, dom: &DomainIdentity, id: IoServId, vcpu: u32, state: u8) -> bool {
        self.with_slot_mut(dom, id, vcpu, |slot| {
            slot[IOREQ_STATE_OFFSET] = (slot[IOREQ_STATE_OFFSET] & 0xf0) | (state & 0x0f);
        })
    }

    /// Events the server processes sent to Xen on server `id` of `dom`
    /// (`xenevtchn_notify`), so far; None if there is no such server.
    pub fn notifications(&self, dom: &DomainIdentity, id: IoServId) -> Option<u64> {
        let w = self.world.borrow();
        w.domains
            .get(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid)
            .and_then(|d| d.servers.get(&id))
            .map(|s| s.notifications)
    }

    /// Applies `f` to `vcpu`'s slot in server `id` of `dom`; false if
    /// there is no such slot.
    fn with_slot_mut(
        &self,
        dom: &DomainIdentity,
        id: IoServId,
        vcpu: u32,
        f: impl FnOnce(&mut [u8; IOREQ_SIZE]),
    ) -> bool {
        let mut w = self.world.borrow_mut();
        let slot = w
            .domains
            .get_mut(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid)
            .and_then(|d| d.servers.get_mut(&id))
            .and_then(|s| s.slots.get_mut(vcpu as usize));
        slot.map(f).is_some()
    }

    /// Xen's count of accesses it completed as unbacked.
    pub fn xen_unbacked(&self, dom: &DomainIdentity) -> u64 {
        let w = self.world.borrow();
        w.domains
            .get(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid)
            .map(|d| d.unbacked)
            .unwrap_or(0)
    }

    /// A guest load (`write` = None) or store of `size` bytes (1 to 8) at
    /// guest-physical `gpa` on `vcpu`, summarised as one [`Access`]. `run`
    /// is called whenever the access is waiting for the ioreq server. See
    /// [`Sim::execute`] for every instruction form and the bytes.
    pub fn guest_access(
        &self,
        dom: &DomainIdentity,
        vcpu: u32,
        gpa: u64,
        size: u32,
        write: Option<u64>,
        run: &mut dyn FnMut(),
    ) -> AccessReport {
        let size = size.clamp(1, 8);
        let insn = match write {
            None => Insn::Load { gpa, size },
            Some(v) => Insn::Store {
                gpa,
                data: v.to_le_bytes()[..size as usize].to_vec(),
            },
        };
        let r = self.execute(dom, vcpu, &insn, run);
        let mut b = [0u8; 8];
        b[..r.data.len()].copy_from_slice(&r.data);
        let value = u64::from_le_bytes(b);
        let access = if let Some(a) = r.stopped {
            a
        } else if r.no_device > 0 {
            Access::NoDevice { value }
        } else if r.unbacked > 0 {
            Access::Unbacked { value }
        } else if r.emulated > 0 {
            Access::Emulated { value }
        } else {
            let frame = self.with_world(|w| {
                w.domains
                    .get(&dom.domid)
                    .and_then(|d| d.p2m.get(&(gpa / PAGE)).copied())
            });
            match frame {
                Some(frame) => Access::Ram { frame, value },
                None => Access::Gone,
            }
        };
        report(access, r.retries)
    }

    /// A guest config-space access through CF8/CFC to `at.sbdf`.
    pub fn pci_config(
        &self,
        dom: &DomainIdentity,
        vcpu: u32,
        at: PciConfigAddress,
        size: u32,
        write: Option<u32>,
        run: &mut dyn FnMut(),
    ) -> Access {
        let sid = {
            let mut w = self.world.borrow_mut();
            let Some(d) = live(&mut w.domains, dom) else {
                return Access::Gone;
            };
            d.servers
                .iter()
                .find(|(_, s)| s.enabled && s.pcidevs.contains(&at.sbdf))
                .map(|(id, _)| *id)
        };
        let Some(sid) = sid else {
            return Access::NoDevice {
                value: ones(size, write.map(u64::from)),
            };
        };
        let req = Ioreq {
            addr: at.to_ioreq_addr(),
            data: u64::from(write.unwrap_or(0)),
            count: 1,
            size,
            vp_eport: vcpu,
            state: STATE_IOREQ_READY,
            data_is_ptr: false,
            dir: if write.is_some() {
                IOREQ_WRITE
            } else {
                IOREQ_READ
            },
            df: false,
            kind: IOREQ_TYPE_PCI_CONFIG,
        };
        match self.roundtrip(dom, vcpu, sid, req, run) {
            Err(a) => a,
            Ok((STATE_IORESP_READY, data)) => Access::Emulated {
                value: if write.is_some() {
                    0
                } else {
                    data & size_mask(size)
                },
            },
            Ok(_) => {
                // RETRY on a config cycle is nonsense: crash the domain.
                self.kill_domain(dom);
                Access::Crashed
            }
        }
    }

    fn reset_retries(&self, dom: &DomainIdentity, vcpu: u32) {
        let mut w = self.world.borrow_mut();
        if let Some(d) = live(&mut w.domains, dom) {
            if let Some(r) = d.vcpu_retries.get_mut(vcpu as usize) {
                *r = 0;
            }
        }
    }

    /// Put `req` in the vCPU's slot of server `sid`, signal, let the server
    /// run, and collect its answer. Ok((state, data)) for IORESP_READY and
    /// (accepted) IORESP_RETRY.
    fn roundtrip(
        &self,
        dom: &DomainIdentity,
        vcpu: u32,
        sid: IoServId,
        req: Ioreq,
        run: &mut dyn FnMut(),
    ) -> Result<(u8, u64), Access> {
        {
            let mut w = self.world.borrow_mut();
            let d = live(&mut w.domains, dom).ok_or(Access::Gone)?;
            let s = d.servers.get_mut(&sid).ok_or(Access::Blocked)?;
            let slot = s.slots.get_mut(vcpu as usize).ok_or(Access::Crashed)?;
            if slot[IOREQ_STATE_OFFSET] & 0x0f != STATE_IOREQ_NONE {
                return Err(Access::Blocked);
            }
            platform::fill_slot(slot, req);
            s.pending_events += 1;
        }
        run();
        // A request the server left pending (INPROCESS): the vCPU waits;
        // the server's loop wakes when it can answer.
        for _ in 0..MAX_PENDING_WAKES {
            let pending = {
                let w = self.world.borrow();
                w.domains
                    .get(&dom.domid)
                    .filter(|d| d.crashed.is_none())
                    .and_then(|d| d.servers.get(&sid))
                    .and_then(|s| s.slots.get(vcpu as usize))
                    .is_some_and(|b| b[IOREQ_STATE_OFFSET] & 0x0f == STATE_IOREQ_INPROCESS)
            };
            if !pending {
                break;
            }
            run();
        }
        let mut w = self.world.borrow_mut();
        let d = live(&mut w.domains, dom).ok_or(Access::Gone)?;
        let s = d.servers.get_mut(&sid).ok_or(Access::Blocked)?;
        let retry_ok = s.retry;
        let slot = s.slots.get_mut(vcpu as usize).ok_or(Access::Crashed)?;
        let got = Ioreq::from_bytes(slot);
        match got.state {
            STATE_IORESP_READY => {
                slot[IOREQ_STATE_OFFSET] = platform::empty_flags();
                Ok((STATE_IORESP_READY, got.data))
            }
            STATE_IORESP_RETRY if retry_ok => {
                slot[IOREQ_STATE_OFFSET] = platform::empty_flags();
                Ok((STATE_IORESP_RETRY, got.data))
            }
            STATE_IOREQ_READY | 2 => {
                // Nobody took it (server killed): the vCPU stays blocked;
                // the simulator gives the slot back so the test can go on.
                slot[IOREQ_STATE_OFFSET] = platform::empty_flags();
                Err(Access::Blocked)
            }
            _ => {
                d.dying = true;
                Err(Access::Crashed)
            }
        }
    }

    /// Check the platform's own consistency: page references match their
    /// holders, every lent frame is registered and mapped by its backend
    /// (I1), no frame released by its backend is still referenced.
    pub fn check_consistency(&self) -> Result<(), String> {
        let w = self.world.borrow();
        for (id, f) in &w.frames {
            let want = u32::from(f.backend_mapped) + u32::from(f.lent_at.is_some());
            if f.refs != want {
                return Err(format!(
                    "frame {id}: {} references, holders account for {want} (leak)",
                    f.refs
                ));
            }
            if let Some((uid, gfn)) = f.lent_at {
                let ok = w
                    .domains
                    .values()
                    .any(|d| d.ident.uid == uid && d.p2m.get(&gfn) == Some(id));
                if !ok {
                    return Err(format!(
                        "frame {id}: lent at gfn {gfn:#x} but not in that p2m"
                    ));
                }
            }
        }
        if let Some(f) = w.orphaned.iter().next() {
            return Err(format!(
                "frame {f}: released by its backend while still lent (use after free)"
            ));
        }
        for d in w.domains.values() {
            for (gfn, f) in &d.p2m {
                let Some(fr) = w.frames.get(f) else {
                    return Err(format!("{}: gfn {gfn:#x} maps freed frame {f}", d.ident));
                };
                if fr.lent_at != Some((d.ident.uid, *gfn)) {
                    return Err(format!(
                        "{}: gfn {gfn:#x} maps frame {f} not lent there",
                        d.ident
                    ));
                }
                let registered = d.registrations.values().any(|r| r.frames.contains(f));
                if !registered || !fr.backend_mapped {
                    return Err(format!(
                        "{}: gfn {gfn:#x} maps frame {f} that is no longer registered (I1)",
                        d.ident
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The domain `dom` names if its vCPUs run (the guest side of the world).
fn live<'a>(
    domains: &'a mut std::collections::BTreeMap<u16, Domain>,
    dom: &DomainIdentity,
) -> Option<&'a mut Domain> {
    domains
        .get_mut(&dom.domid)
        .filter(|d| d.ident.uid == dom.uid && !d.dying && d.crashed.is_none())
}

fn ones(size: u32, write: Option<u64>) -> u64 {
    if write.is_some() {
        0
    } else {
        size_mask(size)
    }
}

fn report(access: Access, retries: u32) -> AccessReport {
    AccessReport { access, retries }
}

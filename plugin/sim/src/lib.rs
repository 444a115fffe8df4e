//! A simulated Xen + privcmd platform with real state, for testing the
//! gpu-hostmem logic without a hypervisor.
//!
//! [`Sim`] is the machine. It hands out the platform handles the server
//! uses ([`SimDeviceModel`], [`SimHostMem`], and through them
//! [`SimChannel`]), and plays the other actors itself: Xen (domains with
//! identity, an ioreq page per server holding real 32-byte `ioreq_t`
//! slots, event channels, a p2m of lent pages, RETRY handling with its
//! bound), GPU backends (registering host frames, unmapping them, page
//! migration through the MMU notifier) and the guest (BAR and PCI config
//! accesses). Faults can be armed ([`Fault`]).
//!
//! Everything is single-threaded: a guest access that reaches the server
//! calls back into the test (`run`) so the server can drain its slots, as
//! the real vCPU would wait for the event channel.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod faults;
pub mod harness;
mod platform;
mod world;

use std::cell::RefCell;
use std::rc::Rc;

use gpu_hostmem_core::ioreq::{
    size_mask, Ioreq, PciConfigAddress, IOREQ_READ, IOREQ_STATE_OFFSET, IOREQ_TYPE_COPY,
    IOREQ_TYPE_PCI_CONFIG, IOREQ_WRITE, STATE_IOREQ_NONE, STATE_IOREQ_READY, STATE_IORESP_READY,
    STATE_IORESP_RETRY,
};
use gpu_hostmem_core::limits::XEN_IOREQ_MAX_RETRIES;
use gpu_hostmem_core::platform::{DomainIdentity, Errno, IoServId, PlatformError};

pub use faults::{Fault, FaultPlan};
pub use platform::{SimChannel, SimDeviceModel, SimHostMem};
pub use world::{Applied, Domain, Frame, FrameId, IoServer, SimOptions, SimRegistration, World};

/// How a guest access completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Hit lent RAM: the frame read (or written).
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
    /// Xen completed it as unbacked after a RETRY it could not honour.
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
        w.next_uid += 1;
        let mut uid = [0u8; 16];
        uid[..8].copy_from_slice(&w.next_uid.to_le_bytes());
        uid[8..10].copy_from_slice(&domid.to_le_bytes());
        uid[15] = 0x5a;
        let ident = DomainIdentity::new(domid, uid);
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
                vcpu_retries: vec![0; nr_vcpus as usize],
                crashed: None,
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

    /// The frame registered at BAR `offset` of `dom`, and its content.
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
        w.frames.get(&f).map(|fr| (f, fr.content))
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
        let w = self.world.borrow();
        let d = w
            .domains
            .get(&dom.domid)
            .filter(|d| d.ident.uid == dom.uid)?;
        let slot = d.servers.get(&id)?.slots.get(vcpu as usize)?;
        Some(slot[IOREQ_STATE_OFFSET] & 0x0f)
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

    /// A guest access of `size` bytes at guest-physical `gpa` on `vcpu`
    /// (`write`: the value written). `run` is called whenever the access
    /// is waiting for the ioreq server.
    pub fn guest_access(
        &self,
        dom: &DomainIdentity,
        vcpu: u32,
        gpa: u64,
        size: u32,
        write: Option<u64>,
        run: &mut dyn FnMut(),
    ) -> AccessReport {
        let gfn = gpa / PAGE;
        let mut retries = 0u32;
        loop {
            let sid = {
                let mut w = self.world.borrow_mut();
                if retries > 0
                    && w.faults.take_counted(|f| match f {
                        Fault::RacingRevoke(n) => Some(n),
                        _ => None,
                    })
                {
                    w.unmap_gfn(dom.domid, gfn);
                }
                let w = &mut *w;
                let Some(d) = live(&mut w.domains, dom) else {
                    return report(Access::Gone, retries);
                };
                if let Some(&f) = d.p2m.get(&gfn) {
                    if let Some(r) = d.vcpu_retries.get_mut(vcpu as usize) {
                        *r = 0;
                    }
                    let value = w.frames.get(&f).map(|fr| fr.content).unwrap_or(u64::MAX);
                    return report(Access::Ram { frame: f, value }, retries);
                }
                let sid = d
                    .servers
                    .iter()
                    .find(|(_, s)| s.enabled && s.mmio.iter().any(|&(a, b)| a <= gpa && gpa <= b))
                    .map(|(id, _)| *id);
                let Some(sid) = sid else {
                    return report(
                        Access::NoDevice {
                            value: ones(size, write),
                        },
                        retries,
                    );
                };
                sid
            };
            let req = Ioreq {
                addr: gpa,
                data: write.unwrap_or(0),
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
                kind: IOREQ_TYPE_COPY,
            };
            match self.roundtrip(dom, vcpu, sid, req, run) {
                Err(a) => return report(a, retries),
                Ok((STATE_IORESP_READY, data)) => {
                    self.reset_retries(dom, vcpu);
                    let value = if write.is_some() {
                        0
                    } else {
                        data & size_mask(size)
                    };
                    return report(Access::Emulated { value }, retries);
                }
                Ok((_, _)) => {
                    // RETRY (roundtrip filtered everything else).
                    retries += 1;
                    let mut w = self.world.borrow_mut();
                    if w.faults.take_counted(|f| match f {
                        Fault::RevokeBeforeRetryCheck(n) => Some(n),
                        _ => None,
                    }) {
                        w.notifier_revoke_gfn(dom, gfn);
                    }
                    let Some(d) = live(&mut w.domains, dom) else {
                        return report(Access::Gone, retries);
                    };
                    let n = match d.vcpu_retries.get_mut(vcpu as usize) {
                        Some(r) => {
                            *r += 1;
                            *r
                        }
                        None => XEN_IOREQ_MAX_RETRIES + 1,
                    };
                    if !d.p2m.contains_key(&gfn) || n > XEN_IOREQ_MAX_RETRIES {
                        d.unbacked += 1;
                        if let Some(r) = d.vcpu_retries.get_mut(vcpu as usize) {
                            *r = 0;
                        }
                        return report(
                            Access::Unbacked {
                                value: ones(size, write),
                            },
                            retries,
                        );
                    }
                    // Re-execute the instruction.
                }
            }
        }
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

//! The platform traits implemented over the simulated [`World`].

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use gpu_hostmem_core::ioreq::{
    pack_flags, Ioreq, Sbdf, IOREQ_SIZE, IOREQ_STATE_OFFSET, STATE_IOREQ_NONE,
};
use gpu_hostmem_core::platform::{
    DeviceModel, DomainIdentity, Errno, HostMem, HostMemQuery, IoServId, IoreqChannel,
    PlatformError, PlatformResult, RegionInfo, RetryStats, RevokeRange, Wake,
};

use crate::faults::Fault;
use crate::world::{IoServer, World};

type Shared = Rc<RefCell<World>>;

/// Pages one foreign mapping takes at most (libxenforeignmemory's
/// `MAX_GUEST_PAGES` in gpu-hostmem-xen).
const MAX_MAPPED_PAGES: usize = 1024;

fn err(op: &'static str, e: Errno) -> PlatformError {
    PlatformError::new(op, e)
}

/// libxendevicemodel & co. over the simulator.
#[derive(Clone, Debug)]
pub struct SimDeviceModel {
    pub(crate) world: Shared,
}

/// One server's ioreq page and event channels. Dropping it is what a dying
/// process does: the page is unmapped and the ports unbound.
#[derive(Debug)]
pub struct SimChannel {
    world: Shared,
    dom: DomainIdentity,
    id: IoServId,
    nr_vcpus: u32,
}

/// The patched privcmd over the simulator.
#[derive(Clone, Debug)]
pub struct SimHostMem {
    pub(crate) world: Shared,
}

impl DeviceModel for SimDeviceModel {
    type Channel = SimChannel;

    fn lookup(&self, domid: u16) -> PlatformResult<Option<DomainIdentity>> {
        Ok(self
            .world
            .borrow()
            .domains
            .get(&domid)
            .filter(|d| !d.dying)
            .map(|d| d.ident))
    }

    fn is_alive(&self, dom: &DomainIdentity) -> PlatformResult<bool> {
        Ok(self.world.borrow().domain(dom, "is_alive").is_ok())
    }

    fn create_server(&mut self, dom: &DomainIdentity, retry: bool) -> PlatformResult<IoServId> {
        const OP: &str = "xendevicemodel_create_ioreq_server_flags";
        let mut w = self.world.borrow_mut();
        if let Some(e) = w.faults.take(|f| match f {
            Fault::CreateServer(e) => Some((*e, true)),
            _ => None,
        }) {
            return Err(err(OP, e));
        }
        let d = w.domain_mut(dom, OP)?;
        let id = d.next_servid;
        d.next_servid = d.next_servid.wrapping_add(1);
        let nr = d.nr_vcpus as usize;
        d.servers.insert(
            id,
            IoServer {
                retry,
                enabled: false,
                slots: vec![[0u8; IOREQ_SIZE]; nr],
                channel_open: false,
                pending_events: 0,
                notifications: 0,
                pcidevs: Default::default(),
                mmio: Vec::new(),
            },
        );
        Ok(id)
    }

    fn open_channel(&mut self, dom: &DomainIdentity, id: IoServId) -> PlatformResult<SimChannel> {
        const OP: &str = "xenforeignmemory_map_resource(ioreq)";
        let mut w = self.world.borrow_mut();
        if let Some(e) = w.faults.take(|f| match f {
            Fault::OpenChannel(e) => Some((*e, true)),
            _ => None,
        }) {
            return Err(err(OP, e));
        }
        let d = w.domain_mut(dom, OP)?;
        let nr_vcpus = d.nr_vcpus;
        let s = d.servers.get_mut(&id).ok_or(err(OP, Errno::ENOENT))?;
        if s.channel_open {
            return Err(err(OP, Errno::EBUSY));
        }
        s.channel_open = true;
        Ok(SimChannel {
            world: self.world.clone(),
            dom: *dom,
            id,
            nr_vcpus,
        })
    }

    fn set_server_state(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        enabled: bool,
    ) -> PlatformResult<()> {
        const OP: &str = "xendevicemodel_set_ioreq_server_state";
        let mut w = self.world.borrow_mut();
        if enabled {
            if let Some(e) = w.faults.take(|f| match f {
                Fault::Enable(e) => Some((*e, true)),
                _ => None,
            }) {
                return Err(err(OP, e));
            }
        }
        let d = w.domain_mut(dom, OP)?;
        let s = d.servers.get_mut(&id).ok_or(err(OP, Errno::ENOENT))?;
        s.enabled = enabled;
        Ok(())
    }

    fn map_pcidev(&mut self, dom: &DomainIdentity, id: IoServId, sbdf: Sbdf) -> PlatformResult<()> {
        const OP: &str = "xendevicemodel_map_pcidev_to_ioreq_server";
        let mut w = self.world.borrow_mut();
        if let Some(e) = w.faults.take(|f| match f {
            Fault::MapPciDev(e) => Some((*e, true)),
            _ => None,
        }) {
            return Err(err(OP, e));
        }
        let d = w.domain_mut(dom, OP)?;
        if d.servers
            .iter()
            .any(|(sid, s)| *sid != id && s.pcidevs.contains(&sbdf))
        {
            return Err(err(OP, Errno::EEXIST));
        }
        let s = d.servers.get_mut(&id).ok_or(err(OP, Errno::ENOENT))?;
        s.pcidevs.insert(sbdf);
        Ok(())
    }

    fn unmap_pcidev(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        sbdf: Sbdf,
    ) -> PlatformResult<()> {
        const OP: &str = "xendevicemodel_unmap_pcidev_from_ioreq_server";
        let mut w = self.world.borrow_mut();
        let d = w.domain_mut(dom, OP)?;
        let s = d.servers.get_mut(&id).ok_or(err(OP, Errno::ENOENT))?;
        s.pcidevs.remove(&sbdf);
        Ok(())
    }

    fn map_mmio(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        start: u64,
        end: u64,
    ) -> PlatformResult<()> {
        const OP: &str = "xendevicemodel_map_io_range_to_ioreq_server";
        let mut w = self.world.borrow_mut();
        if let Some(e) = w.faults.take(|f| match f {
            Fault::MapMmio(e) => Some((*e, true)),
            _ => None,
        }) {
            return Err(err(OP, e));
        }
        let d = w.domain_mut(dom, OP)?;
        let overlaps = d
            .servers
            .values()
            .flat_map(|s| s.mmio.iter())
            .any(|&(s, e)| s <= end && start <= e);
        if overlaps || end < start {
            return Err(err(OP, Errno::EEXIST));
        }
        let s = d.servers.get_mut(&id).ok_or(err(OP, Errno::ENOENT))?;
        s.mmio.push((start, end));
        Ok(())
    }

    fn unmap_mmio(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        start: u64,
        end: u64,
    ) -> PlatformResult<()> {
        const OP: &str = "xendevicemodel_unmap_io_range_from_ioreq_server";
        let mut w = self.world.borrow_mut();
        let d = w.domain_mut(dom, OP)?;
        let s = d.servers.get_mut(&id).ok_or(err(OP, Errno::ENOENT))?;
        let before = s.mmio.len();
        s.mmio.retain(|r| *r != (start, end));
        if s.mmio.len() == before {
            return Err(err(OP, Errno::ENOENT));
        }
        Ok(())
    }

    fn set_pci_intx_level(
        &mut self,
        dom: &DomainIdentity,
        sbdf: Sbdf,
        level: bool,
    ) -> PlatformResult<()> {
        const OP: &str = "xendevicemodel_set_pci_intx_level";
        let mut w = self.world.borrow_mut();
        let d = w.domain_mut(dom, OP)?;
        if sbdf.seg != 0 || sbdf.bus != 0 || sbdf.dev > 31 {
            return Err(err(OP, Errno::EINVAL));
        }
        let e = d.intx.entry(sbdf).or_insert((false, 0));
        *e = (level, e.1 + 1);
        Ok(())
    }

    fn destroy_server(&mut self, dom: &DomainIdentity, id: IoServId) -> PlatformResult<()> {
        const OP: &str = "xendevicemodel_destroy_ioreq_server";
        let mut w = self.world.borrow_mut();
        let d = w.domain_mut(dom, OP)?;
        d.servers
            .remove(&id)
            .map(|_| ())
            .ok_or(err(OP, Errno::ENOENT))
    }

    fn crash_domain(&mut self, dom: &DomainIdentity, why: &str) -> PlatformResult<()> {
        const OP: &str = "xendevicemodel_shutdown";
        let mut w = self.world.borrow_mut();
        let d = w.domain_mut(dom, OP)?;
        d.crashed.get_or_insert_with(|| why.to_owned());
        Ok(())
    }

    fn write_guest_ram(
        &mut self,
        dom: &DomainIdentity,
        gpa: u64,
        data: &[u8],
    ) -> PlatformResult<()> {
        // A foreign mapping restricted to `dom`: only its own RAM maps (a
        // lent page, MMIO or a hole does not), checked for every page
        // before anything is written.
        const OP: &str = "xenforeignmemory_map";
        let mut w = self.world.borrow_mut();
        let fault = w.faults.take(|f| match f {
            Fault::GuestMapFails(e) => Some((*e, true)),
            _ => None,
        });
        w.guest_ram_writes += 1;
        let d = w.domain_mut(dom, OP)?;
        if let Some(e) = fault {
            return Err(err(OP, e));
        }
        if data.is_empty() {
            return Ok(());
        }
        let end = gpa
            .checked_add(data.len() as u64)
            .ok_or(err(OP, Errno::EINVAL))?;
        let pages = (gpa >> 12)..=((end - 1) >> 12);
        if pages.clone().count() > MAX_MAPPED_PAGES {
            return Err(err(OP, Errno::EINVAL));
        }
        if let Some(g) = pages.clone().find(|g| !d.ram.contains_key(g)) {
            let e = if d.p2m.contains_key(&g) {
                Errno::EPERM
            } else {
                Errno::EFAULT
            };
            return Err(err(OP, e));
        }
        let mut at = gpa;
        let mut done = 0usize;
        while done < data.len() {
            let off = (at & 0xfff) as usize;
            let n = (4096 - off).min(data.len() - done);
            if let Some(p) = d.ram.get_mut(&(at >> 12)) {
                p[off..off + n].copy_from_slice(&data[done..done + n]);
            }
            done += n;
            at += n as u64;
        }
        Ok(())
    }

    fn retry_stats(&self, dom: &DomainIdentity) -> PlatformResult<RetryStats> {
        const OP: &str = "xendevicemodel_get_retry_stats";
        let w = self.world.borrow();
        if w.opts.no_retry_stats_call {
            return Err(err(OP, Errno::ENOSYS));
        }
        Ok(w.domain(dom, OP)?.retry_stats)
    }
}

impl SimChannel {
    fn with_slot<T>(
        &self,
        vcpu: u32,
        op: &'static str,
        f: impl FnOnce(&mut [u8; IOREQ_SIZE], &mut IoServer) -> T,
    ) -> PlatformResult<T> {
        let mut w = self.world.borrow_mut();
        let d = w.domain_mut(&self.dom, op)?;
        let s = d.servers.get_mut(&self.id).ok_or(err(op, Errno::ENOENT))?;
        if !s.channel_open {
            return Err(err(op, Errno::EBADF));
        }
        let mut slot = *s.slots.get(vcpu as usize).ok_or(err(op, Errno::EINVAL))?;
        let r = f(&mut slot, s);
        s.slots[vcpu as usize] = slot;
        Ok(r)
    }
}

impl IoreqChannel for SimChannel {
    fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }

    fn wait(&mut self, _timeout: Option<Duration>) -> PlatformResult<Wake> {
        const OP: &str = "xenevtchn_pending";
        let mut w = self.world.borrow_mut();
        let d = w.domain_mut(&self.dom, OP)?;
        let s = d.servers.get_mut(&self.id).ok_or(err(OP, Errno::ENOENT))?;
        if s.pending_events > 0 {
            s.pending_events = 0;
            Ok(Wake::Event)
        } else {
            Ok(Wake::Timeout)
        }
    }

    fn state(&self, vcpu: u32) -> PlatformResult<u8> {
        self.with_slot(vcpu, "ioreq state", |b, _| b[IOREQ_STATE_OFFSET] & 0x0f)
    }

    fn read(&self, vcpu: u32) -> PlatformResult<Ioreq> {
        self.with_slot(vcpu, "ioreq read", |b, _| Ioreq::from_bytes(b))
    }

    fn set_state(&self, vcpu: u32, state: u8) -> PlatformResult<()> {
        self.with_slot(vcpu, "ioreq set_state", |b, _| {
            b[IOREQ_STATE_OFFSET] = (b[IOREQ_STATE_OFFSET] & 0xf0) | (state & 0x0f);
        })
    }

    fn complete(&self, vcpu: u32, data: u64, state: u8) -> PlatformResult<()> {
        const OP: &str = "ioreq complete";
        let fault = self.world.borrow_mut().faults.take(|f| match f {
            Fault::CompleteFails(e) => Some((*e, true)),
            _ => None,
        });
        if let Some(e) = fault {
            return Err(err(OP, e));
        }
        self.with_slot(vcpu, OP, |b, _| {
            b[8..16].copy_from_slice(&data.to_le_bytes());
            b[IOREQ_STATE_OFFSET] = (b[IOREQ_STATE_OFFSET] & 0xf0) | (state & 0x0f);
        })
    }

    fn notify(&self, vcpu: u32) -> PlatformResult<()> {
        self.with_slot(vcpu, "xenevtchn_notify", |_, s| s.notifications += 1)
    }
}

impl Drop for SimChannel {
    fn drop(&mut self) {
        let mut w = self.world.borrow_mut();
        if let Some(d) = w.domains.get_mut(&self.dom.domid) {
            if d.ident.uid == self.dom.uid {
                if let Some(s) = d.servers.get_mut(&self.id) {
                    s.channel_open = false;
                }
            }
        }
    }
}

/// Build an ioreq slot as Xen fills it.
pub(crate) fn fill_slot(slot: &mut [u8; IOREQ_SIZE], req: Ioreq) {
    *slot = req.to_bytes();
}

/// The flags byte of an empty slot.
pub(crate) fn empty_flags() -> u8 {
    pack_flags(STATE_IOREQ_NONE, false, 0, false)
}

impl HostMem for SimHostMem {
    fn lend(
        &mut self,
        dom: &DomainIdentity,
        bar_offset: u64,
        gfn: u64,
        nr_pages: u32,
    ) -> PlatformResult<u32> {
        const OP: &str = "IOCTL_PRIVCMD_HOSTMEM_LEND";
        let mut w = self.world.borrow_mut();
        if w.faults.take_counted(|f| match f {
            Fault::LendBusy(n) => Some(n),
            _ => None,
        }) {
            return Err(err(OP, Errno::EBUSY));
        }
        let stop: Option<(u32, Option<Errno>)> = w.faults.take(|f| match f {
            Fault::LendPartial { after, errno } => Some(((*after, Some(*errno)), true)),
            Fault::DomainDiesDuringLend { after } => Some(((*after, None), true)),
            _ => None,
        });
        if bar_offset % 4096 != 0 || nr_pages == 0 {
            return Err(err(OP, Errno::EINVAL));
        }
        let limit = w.opts.kernel_lent_limit;
        let uid = w.domain(dom, OP)?.ident.uid;
        let domid = dom.domid;
        let mut lent = 0u32;
        for i in 0..nr_pages {
            if let Some((after, what)) = stop {
                if i == after {
                    return match what {
                        Some(e) => Err(err(OP, e)),
                        None => {
                            if let Some(d) = w.domains.get_mut(&domid) {
                                d.dying = true;
                            }
                            Err(err(OP, Errno::ESRCH))
                        }
                    };
                }
            }
            let off = bar_offset + u64::from(i) * 4096;
            let target = gfn + u64::from(i);
            let d = w.domain(dom, OP)?;
            let Some(frame) = d
                .registrations
                .values()
                .find(|r| r.offset <= off && off < r.offset + r.size())
                .map(|r| r.frames[((off - r.offset) / 4096) as usize])
            else {
                continue;
            };
            match d.p2m.get(&target) {
                Some(f) if *f == frame => {
                    lent += 1;
                    continue;
                }
                Some(_) => return Err(err(OP, Errno::EEXIST)),
                None => {}
            }
            if limit != 0 && d.p2m.len() as u64 >= limit {
                return Err(err(OP, Errno::ENOSPC));
            }
            let Some(fr) = w.frames.get_mut(&frame) else {
                continue;
            };
            if fr.lent_at.is_some() {
                return Err(err(OP, Errno::EEXIST));
            }
            fr.refs += 1;
            fr.lent_at = Some((uid, target));
            let d = w.domain_mut(dom, OP)?;
            d.p2m.insert(target, frame);
            lent += 1;
        }
        Ok(lent)
    }

    fn revoke(&mut self, dom: &DomainIdentity, range: RevokeRange) -> PlatformResult<()> {
        const OP: &str = "IOCTL_PRIVCMD_HOSTMEM_REVOKE";
        let mut w = self.world.borrow_mut();
        let fault = match range {
            RevokeRange::Gfns { .. } => w.faults.take(|f| match f {
                Fault::RevokeFails(e) => Some((*e, true)),
                _ => None,
            }),
            RevokeRange::All => w.faults.take(|f| match f {
                Fault::RevokeAllFails(e) => Some((*e, true)),
                _ => None,
            }),
        };
        if let Some(e) = fault {
            return Err(err(OP, e));
        }
        let gfns: Vec<u64> = match w.domain_mut(dom, OP) {
            Err(_) => return Ok(()), // gone: Xen's teardown drops the rest
            Ok(d) => match range {
                RevokeRange::All => d.p2m.keys().copied().collect(),
                RevokeRange::Gfns {
                    first_gfn,
                    nr_pages,
                } => d
                    .p2m
                    .range(first_gfn..first_gfn.saturating_add(nr_pages))
                    .map(|(g, _)| *g)
                    .collect(),
            },
        };
        let domid = dom.domid;
        for g in gfns {
            w.unmap_gfn(domid, g);
        }
        Ok(())
    }

    fn query(&self, dom: &DomainIdentity) -> PlatformResult<HostMemQuery> {
        const OP: &str = "IOCTL_PRIVCMD_HOSTMEM_QUERY";
        self.world.borrow_mut().queries += 1;
        let w = self.world.borrow();
        let d = w.domain(dom, OP)?;
        let regions = d
            .registrations
            .values()
            .map(|r| RegionInfo {
                id: r.id,
                offset: r.offset,
                size: r.size(),
                lent_pages: Some(
                    r.frames
                        .iter()
                        .filter(|f| w.frames.get(f).is_some_and(|fr| fr.lent_at.is_some()))
                        .count() as u64,
                ),
                owner_pid: Some(r.owner_pid),
            })
            .collect();
        Ok(HostMemQuery {
            regions,
            lent_pages: d.p2m.len() as u64,
        })
    }
}

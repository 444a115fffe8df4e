//! The `gpu_hostmem_core::platform` traits on real Xen.
//!
//! [`XenDeviceModel`] and [`XenHostMem`] borrow handles that the caller
//! opened (and later restricts and closes), so the caller's stack decides the
//! order of teardown. Every operation naming a guest first checks the
//! domain's identity (domid plus Xen's unique id) through an [`Identity`]
//! and answers `ESRCH` when the domid is gone or now names another domain
//! (invariant I5).

use crate::devicemodel::{DeviceModel as XdmHandle, IoreqServer, SHUTDOWN_CRASH};
use crate::error::XenError;
use crate::evtchn::{BoundPort, EventChannels};
use crate::foreignmemory::{ForeignMemory, IoreqPage, MAX_GUEST_PAGES};
use crate::ioreq::MAX_SLOTS;
use crate::privcmd::Privcmd;
use crate::xenctrl::{DomainInfo, Xenctrl};
use gpu_hostmem_core::ioreq::{Ioreq, Sbdf};
use gpu_hostmem_core::platform::{
    DeviceModel, DomainIdentity, Errno, HostMem, HostMemQuery, IoServId, IoreqChannel,
    PlatformError, PlatformResult, RetryStats, RevokeRange, Wake,
};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

const PAGE_SHIFT: u32 = 12;
const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

impl From<XenError> for PlatformError {
    fn from(e: XenError) -> Self {
        PlatformError::new(e.op(), Errno(e.as_errno()))
    }
}

/// The identity (domid + Xen unique id) of the domain that has `domid` now,
/// with its info. The unique id is read before and after the info: if they
/// differ, the domain was replaced meanwhile and the info may be the other
/// one's, so ask again.
pub fn current(
    xc: &Xenctrl<'_>,
    domid: u16,
) -> PlatformResult<Option<(DomainIdentity, DomainInfo)>> {
    loop {
        let Some(before) = xc.unique_id(domid)? else {
            return Ok(None);
        };
        let Some(info) = xc.domain_info(domid)? else {
            return Ok(None);
        };
        if xc.unique_id(domid)? == Some(before) {
            return Ok(Some((DomainIdentity::from_unique_id(domid, before), info)));
        }
    }
}

/// Where the identity checks of [`XenDeviceModel`] and [`XenHostMem`] ask
/// which domain a domid names now.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// A xenctrl handle (`XEN_DOMCTL_get_domain_state` and
    /// `getdomaininfo`): unrestricted hypercalls, for the privileged
    /// supervisor and teardown.
    Xenctrl(&'a Xenctrl<'a>),
    /// The device-model handle, which may be restricted to the guest
    /// (`XEN_DMOP_get_instance`, `XEN_DMOP_nr_vcpus`): all the
    /// deprivileged worker keeps.
    DeviceModel(&'a XdmHandle<'a>),
}

/// What an identity check learns of the domain a domid names now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    /// The domain, by domid and unique id.
    pub dom: DomainIdentity,
    /// It is being destroyed.
    pub dying: bool,
}

impl Identity<'_> {
    /// The domain `domid` names now, or `None` if no domain has it.
    pub fn current(&self, domid: u16) -> PlatformResult<Option<Current>> {
        match self {
            Identity::Xenctrl(xc) => Ok(current(xc, domid)?.map(|(dom, info)| Current {
                dom,
                dying: info.dying,
            })),
            Identity::DeviceModel(dm) => Ok(dm.instance(domid)?.map(|i| Current {
                dom: DomainIdentity::from_unique_id(domid, i.unique_id),
                dying: i.dying,
            })),
        }
    }

    /// The number of vCPUs of `domid`.
    pub fn nr_vcpus(&self, domid: u16) -> PlatformResult<u32> {
        match self {
            Identity::Xenctrl(xc) => Ok(xc.domain_info(domid)?.map_or(0, |info| info.nr_vcpus)),
            Identity::DeviceModel(dm) => Ok(dm.nr_vcpus(domid)?),
        }
    }

    /// Whether `dom` is the domain with its domid (dying or not).
    fn is(&self, dom: &DomainIdentity) -> PlatformResult<bool> {
        Ok(matches!(self.current(dom.domid)?, Some(c) if c.dom == *dom))
    }

    /// Checks that `dom` still is the domain with its domid and is not
    /// dying.
    fn check(&self, dom: &DomainIdentity, op: &'static str) -> PlatformResult<()> {
        match self.current(dom.domid)? {
            Some(c) if c.dom == *dom && !c.dying => Ok(()),
            _ => Err(PlatformError::new(op, Errno::ESRCH)),
        }
    }
}

/// Xen's device-model interface for one IOREQ server process.
#[derive(Debug)]
pub struct XenDeviceModel<'a> {
    // Servers are destroyed (Drop) before anything else goes.
    servers: Vec<IoreqServer<'a>>,
    wake_fds: Vec<BorrowedFd<'a>>,
    dm: &'a XdmHandle<'a>,
    fm: &'a ForeignMemory<'a>,
    xce: &'a EventChannels<'a>,
    id: Identity<'a>,
}

impl<'a> XenDeviceModel<'a> {
    /// Uses the given open handles; `id` answers the identity checks.
    pub fn new(
        dm: &'a XdmHandle<'a>,
        fm: &'a ForeignMemory<'a>,
        xce: &'a EventChannels<'a>,
        id: Identity<'a>,
    ) -> Self {
        Self {
            servers: Vec::new(),
            wake_fds: Vec::new(),
            dm,
            fm,
            xce,
            id,
        }
    }

    fn server(
        &self,
        dom: &DomainIdentity,
        id: IoServId,
        op: &'static str,
    ) -> PlatformResult<&IoreqServer<'a>> {
        self.servers
            .iter()
            .find(|s| s.domid() == dom.domid && s.id() == id)
            .ok_or(PlatformError::new(op, Errno::ENOENT))
    }

    /// Channels opened from now on also wake [`IoreqChannel::wait`] (as
    /// [`Wake::Timeout`]) when `fd` becomes readable: the xenstore watch fd,
    /// a signal pipe, a control socket. The caller drains them.
    pub fn add_wake_fd(&mut self, fd: BorrowedFd<'a>) {
        self.wake_fds.push(fd);
    }

    /// Takes charge of server `id` that a process now gone created for
    /// `dom`, so that [`DeviceModel::destroy_server`] can destroy it.
    /// Refused (`ESRCH`) unless `dom` is the current domain with its domid.
    pub fn adopt(&mut self, dom: &DomainIdentity, id: IoServId) -> PlatformResult<()> {
        if !self.id.is(dom)? {
            return Err(PlatformError::new("adopt ioreq server", Errno::ESRCH));
        }
        if self.server(dom, id, "adopt ioreq server").is_err() {
            self.servers.push(self.dm.adopt_ioreq_server(dom.domid, id));
        }
        Ok(())
    }

    /// Forgets server `id` of `dom` without destroying it (a re-attach
    /// that failed leaves the server to the next attempt).
    pub fn forget(&mut self, dom: &DomainIdentity, id: IoServId) {
        if let Some(pos) = self
            .servers
            .iter()
            .position(|s| s.domid() == dom.domid && s.id() == id)
        {
            self.servers.swap_remove(pos).abandon();
        }
    }

    /// Whether the server was created with RETRY.
    pub fn retry_enabled(&self, dom: &DomainIdentity, id: IoServId) -> bool {
        self.server(dom, id, "retry_enabled")
            .is_ok_and(|s| s.retry_enabled())
    }
}

impl<'a> DeviceModel for XenDeviceModel<'a> {
    type Channel = XenChannel<'a>;

    fn lookup(&self, domid: u16) -> PlatformResult<Option<DomainIdentity>> {
        Ok(self.id.current(domid)?.map(|c| c.dom))
    }

    fn is_alive(&self, dom: &DomainIdentity) -> PlatformResult<bool> {
        Ok(matches!(self.id.current(dom.domid)?, Some(c) if c.dom == *dom && !c.dying))
    }

    fn create_server(&mut self, dom: &DomainIdentity, retry: bool) -> PlatformResult<IoServId> {
        let op = "xendevicemodel_create_ioreq_server";
        self.id.check(dom, op)?;
        let server = self.dm.create_ioreq_server(dom.domid, retry)?;
        let id = server.id();
        self.servers.push(server);
        Ok(id)
    }

    fn open_channel(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
    ) -> PlatformResult<XenChannel<'a>> {
        let op = "xenforeignmemory_map_resource";
        self.id.check(dom, op)?;
        self.server(dom, id, op)?;
        let nr_vcpus = self.id.nr_vcpus(dom.domid)?;
        if nr_vcpus == 0 || nr_vcpus > MAX_SLOTS {
            return Err(PlatformError::new(op, Errno::EINVAL));
        }
        let page = self.fm.map_ioreq_page(dom.domid, id, nr_vcpus)?;
        let mut ch = XenChannel {
            ports: (0..nr_vcpus).map(|_| None).collect(),
            unbound: nr_vcpus,
            page,
            xce: self.xce,
            domid: dom.domid,
            wake_fds: self.wake_fds.clone(),
        };
        // Xen writes each vCPU's port into the page when the server is
        // enabled: bind now what is there, the rest on first wait.
        ch.bind_ready_ports()?;
        Ok(ch)
    }

    fn set_server_state(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        enabled: bool,
    ) -> PlatformResult<()> {
        let op = "xendevicemodel_set_ioreq_server_state";
        self.id.check(dom, op)?;
        Ok(self.server(dom, id, op)?.set_enabled(enabled)?)
    }

    fn map_pcidev(&mut self, dom: &DomainIdentity, id: IoServId, sbdf: Sbdf) -> PlatformResult<()> {
        let op = "xendevicemodel_map_pcidev_to_ioreq_server";
        self.id.check(dom, op)?;
        Ok(self.server(dom, id, op)?.map_pcidev(sbdf)?)
    }

    fn unmap_pcidev(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        sbdf: Sbdf,
    ) -> PlatformResult<()> {
        let op = "xendevicemodel_unmap_pcidev_from_ioreq_server";
        self.id.check(dom, op)?;
        Ok(self.server(dom, id, op)?.unmap_pcidev(sbdf)?)
    }

    fn map_mmio(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        start: u64,
        end: u64,
    ) -> PlatformResult<()> {
        let op = "xendevicemodel_map_io_range_to_ioreq_server";
        self.id.check(dom, op)?;
        Ok(self.server(dom, id, op)?.map_io_range(true, start, end)?)
    }

    fn unmap_mmio(
        &mut self,
        dom: &DomainIdentity,
        id: IoServId,
        start: u64,
        end: u64,
    ) -> PlatformResult<()> {
        let op = "xendevicemodel_unmap_io_range_from_ioreq_server";
        self.id.check(dom, op)?;
        Ok(self.server(dom, id, op)?.unmap_io_range(true, start, end)?)
    }

    fn destroy_server(&mut self, dom: &DomainIdentity, id: IoServId) -> PlatformResult<()> {
        let op = "xendevicemodel_destroy_ioreq_server";
        let Some(pos) = self
            .servers
            .iter()
            .position(|s| s.domid() == dom.domid && s.id() == id)
        else {
            return Err(PlatformError::new(op, Errno::ENOENT));
        };
        let server = self.servers.swap_remove(pos);
        match self.id.current(dom.domid)? {
            // Still our domain (maybe dying): destroy for real.
            Some(c) if c.dom == *dom => Ok(server.destroy()?),
            // Gone, or the domid names another domain: Xen destroyed our
            // server with the domain; never touch the stranger.
            _ => {
                server.abandon();
                Err(PlatformError::new(op, Errno::ESRCH))
            }
        }
    }
    fn set_pci_intx_level(
        &mut self,
        dom: &DomainIdentity,
        sbdf: Sbdf,
        level: bool,
    ) -> PlatformResult<()> {
        let op = "xendevicemodel_set_pci_intx_level";
        self.id.check(dom, op)?;
        Ok(self.dm.set_pci_intx_level(dom.domid, sbdf, level)?)
    }

    fn crash_domain(&mut self, dom: &DomainIdentity, _why: &str) -> PlatformResult<()> {
        // The caller logs the reason; Xen records only the shutdown code.
        let op = "xendevicemodel_shutdown";
        self.id.check(dom, op)?;
        Ok(self.dm.shutdown(dom.domid, SHUTDOWN_CRASH)?)
    }

    fn write_guest_ram(
        &mut self,
        dom: &DomainIdentity,
        gpa: u64,
        data: &[u8],
    ) -> PlatformResult<()> {
        let op = "xenforeignmemory_map";
        self.id.check(dom, op)?;
        if data.is_empty() {
            return Ok(());
        }
        let end = gpa
            .checked_add(data.len() as u64)
            .ok_or(PlatformError::new(op, Errno::EINVAL))?;
        let gfns: Vec<u64> = (gpa >> PAGE_SHIFT..=(end - 1) >> PAGE_SHIFT).collect();
        if gfns.len() > MAX_GUEST_PAGES {
            return Err(PlatformError::new(op, Errno::EINVAL));
        }
        // The handle is restricted to the guest before any request is
        // read: only its frames map. Every page is checked before the
        // first byte is written.
        let pages = self.fm.map_guest_pages(dom.domid, &gfns, true)?;
        if let Some(e) = (0..gfns.len()).find_map(|i| pages.page_error(i)) {
            return Err(PlatformError::new(op, Errno(e)));
        }
        let mut at = gpa;
        let mut done = 0usize;
        for i in 0..gfns.len() {
            let off = (at & (PAGE_SIZE - 1)) as usize;
            let n = (PAGE_SIZE as usize - off).min(data.len() - done);
            pages.write(i, off, &data[done..done + n])?;
            done += n;
            at += n as u64;
        }
        Ok(())
    }

    fn retry_stats(&self, dom: &DomainIdentity) -> PlatformResult<RetryStats> {
        let op = "xendevicemodel_get_retry_stats";
        self.id.check(dom, op)?;
        Ok(self.dm.retry_stats(dom.domid)?)
    }
}

/// The ioreq page of one server and its per-vCPU event channels.
#[derive(Debug)]
pub struct XenChannel<'a> {
    // Field order is drop order: unbind the ports, then unmap the page.
    ports: Vec<Option<BoundPort<'a>>>,
    unbound: u32,
    page: IoreqPage<'a>,
    xce: &'a EventChannels<'a>,
    domid: u16,
    wake_fds: Vec<BorrowedFd<'a>>,
}

fn bad_vcpu(op: &'static str) -> PlatformError {
    PlatformError::new(op, Errno::EINVAL)
}

impl<'a> XenChannel<'a> {
    /// Also wakes [`IoreqChannel::wait`] (as [`Wake::Timeout`]) when `fd`
    /// becomes readable: the xenstore watch fd, a signal pipe. The caller
    /// drains it. An fd that hangs up or fails wakes it once and is
    /// dropped.
    pub fn add_wake_fd(&mut self, fd: BorrowedFd<'a>) {
        self.wake_fds.push(fd);
    }

    /// How many wake fds the wait still watches.
    pub fn wake_fd_count(&self) -> usize {
        self.wake_fds.len()
    }

    /// The local event channel port of `vcpu`, once bound.
    pub fn local_port(&self, vcpu: u32) -> Option<u32> {
        self.ports.get(vcpu as usize)?.as_ref().map(|p| p.port())
    }

    fn bind_ready_ports(&mut self) -> PlatformResult<()> {
        if self.unbound == 0 {
            return Ok(());
        }
        for (vcpu, slot) in self.ports.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let remote = self.page.slots().vp_eport(vcpu as u32).unwrap_or(0);
            // Port 0 is never a valid event channel: not assigned yet.
            if remote != 0 {
                *slot = Some(self.xce.bind_interdomain(self.domid, remote)?);
                self.unbound -= 1;
            }
        }
        Ok(())
    }
}

impl IoreqChannel for XenChannel<'_> {
    fn nr_vcpus(&self) -> u32 {
        self.page.slots().len()
    }

    fn wait(&mut self, timeout: Option<Duration>) -> PlatformResult<Wake> {
        self.bind_ready_ports()?;
        let evtchn_fd = self.xce.fd()?;
        let mut fds: Vec<libc::pollfd> = std::iter::once(evtchn_fd.as_raw_fd())
            .chain(self.wake_fds.iter().map(|f| f.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = match timeout {
            None => -1,
            Some(d) => libc::c_int::try_from(d.as_millis()).unwrap_or(libc::c_int::MAX),
        };
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs, and
        // every fd in it is borrowed for at least the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EINTR) => Ok(Wake::Timeout),
                e => Err(PlatformError::new("poll", Errno(e.unwrap_or(libc::EIO)))),
            };
        }
        // A wake fd whose other end is gone (the renderer's socket when
        // the renderer died) would make every later poll return at once:
        // it wakes this once, for its owner to see the end, and is left
        // out from then on.
        let hung = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        let dead: Vec<usize> = fds
            .iter()
            .skip(1)
            .enumerate()
            .filter(|(_, p)| p.revents & hung != 0)
            .map(|(i, _)| i)
            .collect();
        for i in dead.into_iter().rev() {
            self.wake_fds.remove(i);
        }
        if fds[0].revents == 0 {
            return Ok(Wake::Timeout);
        }
        let mut any = false;
        while let Some(port) = self.xce.pending()? {
            self.xce.unmask(port)?;
            any = true;
        }
        Ok(if any { Wake::Event } else { Wake::Timeout })
    }

    fn state(&self, vcpu: u32) -> PlatformResult<u8> {
        self.page.slots().state(vcpu).ok_or(bad_vcpu("ioreq state"))
    }

    fn read(&self, vcpu: u32) -> PlatformResult<Ioreq> {
        self.page.slots().read(vcpu).ok_or(bad_vcpu("ioreq read"))
    }

    fn set_state(&self, vcpu: u32, state: u8) -> PlatformResult<()> {
        if self.page.slots().set_state(vcpu, state) {
            Ok(())
        } else {
            Err(bad_vcpu("ioreq set_state"))
        }
    }

    fn complete(&self, vcpu: u32, data: u64, state: u8) -> PlatformResult<()> {
        if self.page.slots().complete(vcpu, data, state) {
            Ok(())
        } else {
            Err(bad_vcpu("ioreq complete"))
        }
    }

    fn notify(&self, vcpu: u32) -> PlatformResult<()> {
        match self.ports.get(vcpu as usize) {
            Some(Some(port)) => Ok(port.notify()?),
            Some(None) => Err(PlatformError::new("xenevtchn_notify", Errno::ENOENT)),
            None => Err(bad_vcpu("xenevtchn_notify")),
        }
    }
}

/// The patched privcmd, for one guest.
#[derive(Debug)]
pub struct XenHostMem<'a> {
    privcmd: Privcmd,
    id: Identity<'a>,
}

impl<'a> XenHostMem<'a> {
    /// Uses an open privcmd fd (restricted to the guest by the caller);
    /// `id` answers the identity checks.
    pub fn new(privcmd: Privcmd, id: Identity<'a>) -> Self {
        Self { privcmd, id }
    }

    /// The privcmd fd.
    pub fn privcmd(&self) -> &Privcmd {
        &self.privcmd
    }
}

impl HostMem for XenHostMem<'_> {
    fn lend(
        &mut self,
        dom: &DomainIdentity,
        bar_offset: u64,
        gfn: u64,
        nr_pages: u32,
    ) -> PlatformResult<u32> {
        self.id.check(dom, "IOCTL_PRIVCMD_HOSTMEM_LEND")?;
        // The kernel lends only registrations made for this instance, and
        // Xen checks the instance again at the hypercall (EXDEV).
        Ok(self
            .privcmd
            .hostmem_lend(dom.domid, dom.unique_id(), bar_offset, gfn, nr_pages)?)
    }

    fn revoke(&mut self, dom: &DomainIdentity, range: RevokeRange) -> PlatformResult<()> {
        // Our domain (even dying): revoke; ESRCH is success. Gone: Xen's
        // teardown dropped every reference. Another domain with the same
        // domid: not ours to touch.
        if !self.id.is(dom)? {
            return Ok(());
        }
        match range {
            RevokeRange::All => self.privcmd.hostmem_revoke_all(dom.domid)?,
            RevokeRange::Gfns {
                first_gfn,
                nr_pages,
            } => self
                .privcmd
                .hostmem_revoke(dom.domid, first_gfn, nr_pages)?,
        }
        Ok(())
    }

    fn query(&self, dom: &DomainIdentity) -> PlatformResult<HostMemQuery> {
        if !self.id.is(dom)? {
            return Err(PlatformError::new(
                "IOCTL_PRIVCMD_HOSTMEM_QUERY",
                Errno::ESRCH,
            ));
        }
        Ok(self.privcmd.hostmem_query(dom.domid)?)
    }
}

//! Helpers that play `xl create`/`xl destroy` and a guest driver around a
//! real [`Server`] on the simulator; used by the tests, the benches and
//! the fuzz targets.

use std::time::Instant;

use gpu_hostmem_core::ioreq::{PciConfigAddress, Sbdf};
use gpu_hostmem_core::limits::Limits;
use gpu_hostmem_core::pci::{PciIds, COMMAND_MEMORY, REG_BAR0, REG_BAR1, REG_COMMAND};
use gpu_hostmem_core::platform::{DomainIdentity, IoServId};
use gpu_hostmem_core::server::{self, Flow, Server, ServerConfig, ServerError, TeardownReport};

use crate::{Access, AccessReport, Sim, SimDeviceModel, SimHostMem};

/// The server type on the simulator.
pub type SimServer = Server<SimDeviceModel, SimHostMem>;

/// The BDF the tests claim.
pub const TEST_SBDF: Sbdf = Sbdf {
    seg: 0,
    bus: 0,
    dev: 5,
    func: 0,
};

/// A server configuration for tests.
pub fn test_config(bar_size: u64, fault_around: u64, limits: Limits) -> ServerConfig {
    ServerConfig {
        sbdf: TEST_SBDF,
        ids: PciIds {
            vendor: 0x1af4,
            device: 0x10f0,
            subsystem_vendor: 0x1af4,
            subsystem: 1,
            revision: 1,
        },
        bar_size,
        fault_around,
        limits,
    }
}

/// One guest with its (possibly killed) ioreq server.
pub struct Guest {
    /// The identity recorded at creation (what xenstore would hold).
    pub ident: DomainIdentity,
    /// The running server, if not killed or stopped.
    pub server: Option<SimServer>,
    /// The server id recorded at creation.
    pub servid: Option<IoServId>,
    /// The last flow/error the server reported while draining.
    pub last_flow: Option<Result<Flow, String>>,
}

impl Guest {
    /// `xl create`: a domain plus a started server. The domain is left
    /// in place if the server fails to start.
    pub fn create(
        sim: &Sim,
        domid: u16,
        vcpus: u32,
        cfg: ServerConfig,
    ) -> Result<Guest, ServerError> {
        let ident = sim.create_domain(domid, vcpus)?;
        Guest::attach(sim, ident, cfg)
    }

    /// Start a server for an existing domain.
    pub fn attach(
        sim: &Sim,
        ident: DomainIdentity,
        cfg: ServerConfig,
    ) -> Result<Guest, ServerError> {
        match Server::start(sim.device_model(), sim.host_mem(), ident, cfg) {
            Ok(s) => Ok(Guest {
                ident,
                servid: Some(s.ioservid()),
                server: Some(s),
                last_flow: None,
            }),
            Err((e, _, _)) => Err(e),
        }
    }

    fn runner(&mut self) -> impl FnMut() + '_ {
        move || {
            if let Some(s) = self.server.as_mut() {
                self.last_flow = Some(s.drain(Instant::now()).map_err(|e| e.to_string()));
            }
        }
    }

    /// A guest read of `size` bytes at `gpa`.
    pub fn read(&mut self, sim: &Sim, vcpu: u32, gpa: u64, size: u32) -> AccessReport {
        let ident = self.ident;
        let mut run = self.runner();
        sim.guest_access(&ident, vcpu, gpa, size, None, &mut run)
    }

    /// A guest write.
    pub fn write(&mut self, sim: &Sim, vcpu: u32, gpa: u64, size: u32, v: u64) -> AccessReport {
        let ident = self.ident;
        let mut run = self.runner();
        sim.guest_access(&ident, vcpu, gpa, size, Some(v), &mut run)
    }

    /// A config-space access to our function.
    pub fn config(&mut self, sim: &Sim, reg: u32, size: u32, write: Option<u32>) -> Access {
        let ident = self.ident;
        let mut run = self.runner();
        sim.pci_config(
            &ident,
            0,
            PciConfigAddress {
                sbdf: TEST_SBDF,
                reg,
            },
            size,
            write,
            &mut run,
        )
    }

    /// Program the BAR at `base` (low dword, then high) and enable decode,
    /// as a firmware would.
    pub fn program_bar(&mut self, sim: &Sim, base: u64) {
        self.config(sim, REG_BAR0, 4, Some(base as u32));
        self.config(sim, REG_BAR1, 4, Some((base >> 32) as u32));
        self.config(sim, REG_COMMAND, 2, Some(u32::from(COMMAND_MEMORY)));
    }

    /// The server dies without cleaning up (SIGKILL): its handles close.
    pub fn kill_server(&mut self) {
        self.server = None;
    }

    /// Stop the server cleanly.
    pub fn stop_server(&mut self) -> Option<TeardownReport> {
        self.server.take().map(|s| s.shutdown().2)
    }

    /// The plugin's destroy hook: stop the server if it runs, then the
    /// total teardown by the recorded identity. Idempotent.
    pub fn destroy_hook(&mut self, sim: &Sim) -> TeardownReport {
        let mut report = self.stop_server().unwrap_or_default();
        let t = server::teardown(
            &mut sim.device_model(),
            &mut sim.host_mem(),
            &self.ident,
            self.servid,
        );
        report.errors.extend(t.errors);
        report
    }
}

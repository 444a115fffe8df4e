//! Helpers that play `xl create`/`xl destroy` and a guest driver around a
//! real [`Server`] on the simulator; used by the tests, the benches and
//! the fuzz targets.

use std::time::Instant;

use gpu_hostmem_core::ioreq::{PciConfigAddress, Sbdf};
use gpu_hostmem_core::limits::Limits;
use gpu_hostmem_core::pci::{PciIds, COMMAND_MEMORY, REG_BAR0, REG_BAR1, REG_COMMAND};
use gpu_hostmem_core::platform::{DomainIdentity, IoServId};
use gpu_hostmem_core::server::{self, Flow, Server, ServerConfig, ServerError, TeardownReport};

use crate::{Access, AccessReport, Insn, InsnReport, Sim, SimDeviceModel, SimHostMem};

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
    /// The server's clock: it moves only when the server has a pending
    /// request and says when it can answer it (as its loop would sleep).
    pub clock: Instant,
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
                clock: Instant::now(),
            }),
            Err((e, _, _)) => Err(e),
        }
    }

    fn runner(&mut self) -> impl FnMut() + '_ {
        move || {
            if let Some(s) = self.server.as_mut() {
                if let Some(w) = s.next_wake(self.clock) {
                    self.clock += w;
                }
                self.last_flow = Some(s.drain(self.clock).map_err(|e| e.to_string()));
            }
        }
    }

    /// Run one guest instruction.
    pub fn exec(&mut self, sim: &Sim, vcpu: u32, insn: &Insn) -> InsnReport {
        let ident = self.ident;
        let mut run = self.runner();
        sim.execute(&ident, vcpu, insn, &mut run)
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

/// What an instruction must do to memory if every access is exact: the
/// bytes a load returns, and the byte every written location (plus a
/// margin around it) must hold afterwards. Registered BAR bytes are the
/// backend's, unregistered BAR bytes read as ones and take no writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prediction {
    /// Bytes a load returns.
    pub load: Option<Vec<u8>>,
    /// `(gpa, byte)` that must hold afterwards, for memory-backed bytes.
    pub after: Vec<(u64, u8)>,
}

/// Bytes either side of a written range that must stay as they were.
pub const MARGIN: u64 = 16;

/// The byte at `gpa` now: the backend's for a registered BAR offset, the
/// guest's RAM, or `None` (unregistered BAR, nothing there).
pub fn byte_at(
    sim: &Sim,
    dom: &DomainIdentity,
    bar: &std::ops::Range<u64>,
    gpa: u64,
) -> Option<u8> {
    if bar.contains(&gpa) {
        sim.backend_bytes(dom, gpa - bar.start, 1)[0]
    } else {
        sim.mem_read(dom, gpa, 1).map(|b| b[0])
    }
}

/// Predict an instruction's exact effect from the state before it runs.
/// `bar` is the BAR as decoded now.
pub fn predict(
    sim: &Sim,
    dom: &DomainIdentity,
    bar: &std::ops::Range<u64>,
    insn: &Insn,
) -> Prediction {
    let src = |gpa: u64| byte_at(sim, dom, bar, gpa).unwrap_or(0xff);
    let mut p = Prediction::default();
    let mut written: Vec<(u64, u8)> = Vec::new();
    match *insn {
        Insn::Load { gpa, size } => {
            p.load = Some(
                (0..u64::from(size))
                    .map(|k| src(gpa.wrapping_add(k)))
                    .collect(),
            );
        }
        Insn::Store { gpa, ref data } => {
            written.extend(
                data.iter()
                    .enumerate()
                    .map(|(k, b)| (gpa.wrapping_add(k as u64), *b)),
            );
        }
        Insn::RepStos {
            gpa,
            size,
            count,
            df,
            value,
        } => {
            let (lo, len) = crate::span(gpa, size, count, df);
            let v = value.to_le_bytes();
            written
                .extend((0..len).map(|k| (lo.wrapping_add(k), v[(k % u64::from(size)) as usize])));
        }
        Insn::RepMovs {
            dst,
            src: s,
            size,
            count,
            df,
        } => {
            let (dlo, len) = crate::span(dst, size, count, df);
            let (slo, _) = crate::span(s, size, count, df);
            written.extend((0..len).map(|k| (dlo.wrapping_add(k), src(slo.wrapping_add(k)))));
        }
    }
    if let (Some(first), Some(last)) = (
        written.iter().map(|w| w.0).min(),
        written.iter().map(|w| w.0).max(),
    ) {
        for g in first.saturating_sub(MARGIN)..first {
            if let Some(b) = byte_at(sim, dom, bar, g) {
                p.after.push((g, b));
            }
        }
        for g in last.saturating_add(1)..=last.saturating_add(MARGIN) {
            if let Some(b) = byte_at(sim, dom, bar, g) {
                p.after.push((g, b));
            }
        }
    }
    for (g, b) in written {
        if byte_at(sim, dom, bar, g).is_some() {
            p.after.push((g, b));
        }
    }
    p
}

/// Check an instruction's outcome against its [`Prediction`], byte for
/// byte.
pub fn verify(
    sim: &Sim,
    dom: &DomainIdentity,
    bar: &std::ops::Range<u64>,
    p: &Prediction,
    r: &InsnReport,
) -> Result<(), String> {
    if let Some(a) = r.stopped {
        return Err(format!("instruction did not complete: {a:?}"));
    }
    if let Some(want) = &p.load {
        if let Some(k) = (0..want.len()).find(|&k| r.data.get(k) != Some(&want[k])) {
            return Err(format!(
                "load byte {k}: got {:02x?}, want {:02x} ({r:?})",
                r.data.get(k),
                want[k]
            ));
        }
    }
    for &(g, want) in &p.after {
        let got = byte_at(sim, dom, bar, g);
        if got != Some(want) {
            return Err(format!(
                "byte at {g:#x}: {got:02x?}, want {want:02x} ({r:?})"
            ));
        }
    }
    Ok(())
}

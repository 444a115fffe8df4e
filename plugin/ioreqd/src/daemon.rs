//! Setup stages, the event loop and the teardown of one guest's server.
//!
//! Every resource is a local whose drop undoes it, declared in setup order,
//! so an early return (a failed stage) unwinds exactly what was done, in
//! reverse. The ioreq server itself is set up by the core's
//! `Server::start` (create with RETRY, map the ioreq page and bind the
//! per-vCPU event channels, claim the PCI function, enable), which undoes
//! its own stages on failure, and is stopped by `Server::shutdown` (revoke
//! every lent page, unmap, destroy).

use crate::control::ControlSocket;
use crate::qemu_slots;
use crate::report::{Report, Reporter, Sent};
use crate::Args;
use gpu_hostmem_core::config::{Config, Device, RendererBackend, DEFAULT_BAR_SIZE_MIB};
use gpu_hostmem_core::ioreq::Sbdf;
use gpu_hostmem_core::model::FunctionModel;
use gpu_hostmem_core::pci::PciFunction;
use gpu_hostmem_core::pci::{MAX_BAR_SIZE, MIN_BAR_SIZE};
use gpu_hostmem_core::platform::{DeviceModel, DomainIdentity, Errno};
use gpu_hostmem_core::server::{Flow, Server, ServerConfig, ServerError};
use gpu_hostmem_host::process::{take_inherited_fd, Inherited};
use gpu_hostmem_host::record::{self, key, state};
use gpu_hostmem_virtio_gpu::blob::{CapsetOffer, TEST_CAPSET_ID, VENUS_CAPSET_ID};
use gpu_hostmem_virtio_gpu::device::GpuConfig;
use gpu_hostmem_virtio_gpu::model::GpuModel;
use gpu_hostmem_virtio_gpu::renderer::{NoRenderer, Renderer};
use gpu_hostmem_virtio_gpu::renderer_proto::SocketRenderer;
use gpu_hostmem_xen::guest_memory::ForeignGuestMemory;
use gpu_hostmem_xen::platform::{self, Identity, XenDeviceModel, XenHostMem};
use gpu_hostmem_xen::{Privcmd, XenLibs};
use std::fmt;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, info_span, warn};

/// Guest frames the virtio-gpu device keeps mapped at most (its rings,
/// and the pages of the request being served): 4 MiB of mappings.
const GUEST_PAGE_CACHE: usize = 1024;

/// Longest sleep of the loop without any event (signals wake it at once
/// through their fd; this bounds a missed wake-up and how late the
/// domain's death is noticed when nobody stops the server).
const LOOP_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the loop asks Xen whether the domain is still there.
const ALIVE_CHECK: Duration = Duration::from_secs(1);

/// A failed stage, with its reason.
#[derive(Debug)]
pub struct Failure {
    stage: &'static str,
    reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stage, self.reason)
    }
}

fn at<E: fmt::Display>(stage: &'static str) -> impl FnOnce(E) -> Failure {
    move |e| Failure {
        stage,
        reason: e.to_string(),
    }
}

/// Best effort, for failures before the xenstore connection of `run`
/// exists: record `failed: <reason>` so that the plugin can report it.
pub fn report_failure(domid: u16, reason: &str) {
    if let Ok(libs) = gpu_hostmem_xen::XenstoreLib::load() {
        if let Ok(xs) = libs.open() {
            let _ = xs.write(
                &record::path(domid, key::STATE),
                &format!("{}{reason}", state::FAILED_PREFIX),
            );
        }
    }
}

/// Runs the server for `args.domid` until SIGTERM or the domain's death.
/// Reports go to the supervisor over `reporter` (it writes the record).
pub fn run(args: &Args, cfg: &Config, reporter: &Reporter) -> Result<(), Failure> {
    let span = info_span!("domain", domid = args.domid);
    let _enter = span.enter();
    // Stage: open the Xen libraries (all five, or a clear error).
    let r = XenLibs::load()
        .map_err(at("open Xen libraries"))
        .and_then(|libs| {
            info!(
                devicemodel = libs.devicemodel.soname(),
                xenctrl = libs.xenctrl.soname(),
                retry_call = libs.devicemodel.has_create_with_flags(),
                retry_stats_call = libs.devicemodel.has_retry_stats(),
                instance_call = libs.devicemodel.has_get_instance(),
                "Xen libraries loaded"
            );
            if !libs.devicemodel.has_retry_stats() {
                info!(
                    devicemodel = libs.devicemodel.soname(),
                    "no xendevicemodel_get_retry_stats (a library without the gpu-hostmem Xen series): Xen's RETRY counters are not read, status shows them unavailable"
                );
            }
            serve(args, cfg, &libs, reporter)
        });
    if let Err(f) = &r {
        warn!(reason = %f, "setup or service failed");
        // A re-attaching worker leaves the decision to the supervisor (try
        // again, or give up); a first one reports why it stopped.
        if !args.attach {
            let sent = reporter
                .send(&Report::Failed(f.to_string()))
                .and_then(|_| reporter.flush_within(LAST_REPORT_WAIT));
            report_outcome(sent, "the failure");
        }
    }
    r
}

fn server_config(args: &Args, cfg: &Config) -> Result<ServerConfig, Failure> {
    let bar_size = match args.bar_size_mib {
        None | Some(0) => DEFAULT_BAR_SIZE_MIB << 20,
        Some(mib) => {
            let b = mib.checked_shl(20).filter(|b| b >> 20 == mib).unwrap_or(0);
            if !b.is_power_of_two() || !(MIN_BAR_SIZE..=MAX_BAR_SIZE).contains(&b) {
                return Err(Failure {
                    stage: "configuration",
                    reason: format!(
                        "--bar-size-mib {mib}: must be a power of two from {} to {}",
                        MIN_BAR_SIZE >> 20,
                        MAX_BAR_SIZE >> 20
                    ),
                });
            }
            b
        }
    };
    Ok(ServerConfig {
        sbdf: Sbdf {
            seg: 0,
            bus: 0,
            dev: cfg.pci_slot as u8,
            func: 0,
        },
        ids: cfg.pci_ids(),
        bar_size,
        fault_around: cfg.fault_around(),
        limits: cfg.limits(),
    })
}

fn serve(args: &Args, cfg: &Config, libs: &XenLibs, reporter: &Reporter) -> Result<(), Failure> {
    let domid = args.domid;
    let scfg = server_config(args, cfg)?;
    // Who to run as once set up: resolved now, while the user database
    // can still be read.
    let run_as = crate::sandbox::resolve(&cfg.run_as).map_err(at("configuration"))?;

    // Stage: check the domain's identity before anything: the handle libxl
    // gave us, then the instance (domid + Xen unique id) served from now on.
    let xc = libs.xenctrl.open().map_err(at("open xenctrl"))?;
    let (dom, info) = platform::current(&xc, domid)
        .map_err(at("domain identity"))?
        .ok_or_else(|| at("domain identity")(format!("domain {domid} does not exist")))?;
    let handle = DomainIdentity::new(domid, info.handle).uid_string();
    if info.handle != args.uuid {
        return Err(at("domain identity")(format!(
            "domain {domid} is {handle}, not {}: refusing to serve another domain",
            DomainIdentity::new(domid, args.uuid).uid_string()
        )));
    }
    // Supervised, the supervisor resolved the instance once: a worker
    // (re)started later serves that instance only, never a new domain that
    // was given the domid meanwhile.
    if let Some(want) = args.unique_id.filter(|id| *id != dom.unique_id()) {
        return Err(at("domain identity")(format!(
            "domain {domid} is instance {} now, not instance {want} the supervisor serves: refusing",
            dom.unique_id()
        )));
    }
    if info.dying || !info.hvm {
        return Err(at("domain identity")(format!(
            "domain {dom} is {}",
            if info.dying {
                "dying"
            } else {
                "not an HVM guest"
            }
        )));
    }
    info!(%dom, vcpus = info.nr_vcpus, "serving domain");

    // Stage: the slot is one QEMU left free. A restarted worker (attach)
    // serves a slot already claimed and checked at the first start.
    if !args.attach {
        check_qemu_slot(domid, scfg.sbdf, &args.config)?;
    }

    // Stage: open the handles the server uses; privcmd restricted at once.
    let dm = libs.devicemodel.open().map_err(at("open devicemodel"))?;
    // From here on the identity checks ask Xen through the device-model
    // handle (restricted to the guest below) when Xen and the library
    // offer XEN_DMOP_get_instance; the xenctrl handle, whose privcmd fd
    // allows every hypercall of dom0, is closed before any request of the
    // guest is read. Without the call, xenctrl stays (and the log says so).
    let xc = match instance_by_dmop(&dm, &dom) {
        Ok(()) => {
            drop(xc);
            info!(%dom, "identity checks by XEN_DMOP_get_instance: no xenctrl handle kept");
            None
        }
        Err(why) => {
            warn!(%dom, %why, "identity checks need xenctrl: its unrestricted handle stays open");
            Some(xc)
        }
    };
    let identity = match &xc {
        Some(xc) => Identity::Xenctrl(xc),
        None => Identity::DeviceModel(&dm),
    };
    let fm = libs
        .foreignmemory
        .open()
        .map_err(at("open foreignmemory"))?;
    let xce = libs.evtchn.open().map_err(at("open evtchn"))?;
    let privcmd = Privcmd::open().map_err(at("open privcmd"))?;
    privcmd.restrict(domid).map_err(at("restrict privcmd"))?;

    // Stage: wake-ups: signals (flag + pipe), domain death, control socket.
    let stop = Arc::new(AtomicBool::new(false));
    let (sig_r, sig_w) = UnixStream::pair().map_err(at("signal pipe"))?;
    sig_r.set_nonblocking(true).map_err(at("signal pipe"))?;
    sig_w.set_nonblocking(true).map_err(at("signal pipe"))?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(at("signal handler"))?;
        let w = sig_w.try_clone().map_err(at("signal pipe"))?;
        signal_hook::low_level::pipe::register(sig, w).map_err(at("signal handler"))?;
    }
    let ctl = ControlSocket::bind(domid).map_err(at("control socket"))?;

    // The renderer's socket, for virtio-gpu with a renderer: a duplicate
    // of it also wakes the server, since its fence events finish kept
    // responses (the model reads them in `background`). Taken here, before
    // the device model that borrows the duplicate; used only below.
    let (renderer_sock, renderer_wake) = match (&cfg.device, args.renderer_fd) {
        (Device::VirtioGpu, Some(fd)) => {
            let sock = take_inherited_fd(fd, Inherited::SeqpacketSocket)
                .map(std::os::unix::net::UnixDatagram::from)
                .map_err(at("renderer socket"))?;
            let wake = sock
                .try_clone()
                .map(std::os::fd::OwnedFd::from)
                .map_err(at("renderer socket"))?;
            (Some(sock), Some(wake))
        }
        _ => (None, None),
    };

    // Stage: the ioreq server (create with RETRY, ioreq page + event
    // channels, PCI function, enable), undone by itself on failure.
    let mut pdm = XenDeviceModel::new(&dm, &fm, &xce, identity);
    pdm.add_wake_fd(sig_r.as_fd());
    pdm.add_wake_fd(ctl.as_fd());
    if let Some(w) = renderer_wake.as_ref() {
        pdm.add_wake_fd(w.as_fd());
    }
    let hm = XenHostMem::new(privcmd, identity);
    let saved = if args.attach {
        crate::supervisor::read_pci_state(domid)
    } else {
        None
    };
    let restrict = || {
        dm.restrict(domid)
            .and_then(|()| fm.restrict(domid))
            .and_then(|()| xce.restrict(domid))
    };
    let ctx = Ctx {
        args,
        libs,
        dom,
        scfg,
        run_as,
        reporter,
        sig_r: &sig_r,
        ctl: &ctl,
        stop: &stop,
    };
    match cfg.device {
        Device::Hostmem => {
            let func = PciFunction::new(scfg.ids, scfg.bar_size).map_err(at("PCI function"))?;
            let server = start_server(&ctx, pdm, hm, func, saved.as_deref())?;
            run_server(&ctx, server, restrict)
        }
        Device::VirtioGpu => {
            // The rings and buffers the guest's driver names are mapped
            // on demand through the foreignmemory handle, which is
            // restricted to the guest before any request is read.
            let mem = ForeignGuestMemory::new(&fm, domid, GUEST_PAGE_CACHE);
            // The renderer the supervisor started, if configured: contexts
            // and blobs go to it over the inherited socket (connected and
            // checked here, before the privilege drop; afterwards only
            // sendto/recvfrom on it, which the filter allows).
            let (renderer, gcfg): (Box<dyn Renderer>, GpuConfig) = match renderer_sock {
                Some(sock) => {
                    let mut r = SocketRenderer::connect(sock).map_err(at("renderer"))?;
                    let ids: &[u32] = match cfg.virtio_gpu.backend {
                        RendererBackend::Venus => &[VENUS_CAPSET_ID],
                        RendererBackend::Test if cfg.virtio_gpu.test_capset => {
                            warn!(%dom, "virtio-gpu: offering the test-only capset (virtio_gpu.test_capset)");
                            &[TEST_CAPSET_ID]
                        }
                        RendererBackend::Test => &[],
                    };
                    // Offered as the renderer describes them; a capset it
                    // does not serve stops the start.
                    let offers = describe_capsets(&mut r, ids).map_err(at("renderer capsets"))?;
                    info!(%dom, capsets = ?offers, "virtio-gpu: renderer connected");
                    (Box::new(r), GpuConfig::default().with_capsets(&offers))
                }
                None => (Box::new(NoRenderer), GpuConfig::default()),
            };
            let func =
                GpuModel::with_renderer(scfg.bar_size, scfg.ids.subsystem, mem, gcfg, renderer)
                    .map_err(at("virtio-gpu function"))?;
            info!(%dom, "device: virtio-gpu (1af4:1050), the window is its host-visible region");
            let server = start_server(&ctx, pdm, hm, func, saved.as_deref())?;
            run_server(&ctx, server, restrict)
        }
    }
}

/// `ids` as the renderer describes them (`CAPSET_INFO`): id, newest
/// version, size. A capset it refuses is an error naming it.
fn describe_capsets(r: &mut SocketRenderer, ids: &[u32]) -> Result<Vec<CapsetOffer>, String> {
    ids.iter()
        .map(|&id| {
            let (max_version, max_size) =
                r.capset_info(id).map_err(|e| format!("capset {id}: {e}"))?;
            let offer = CapsetOffer {
                id,
                max_version,
                max_size,
            };
            if !offer.is_valid() {
                return Err(format!("capset {id}: cannot be offered as {offer:?}"));
            }
            Ok(offer)
        })
        .collect()
}

/// What the stages after the server's start need.
struct Ctx<'a> {
    args: &'a Args,
    libs: &'a XenLibs,
    dom: DomainIdentity,
    scfg: ServerConfig,
    run_as: Option<(u32, u32)>,
    reporter: &'a Reporter,
    sig_r: &'a UnixStream,
    ctl: &'a ControlSocket,
    stop: &'a AtomicBool,
}

type XenServer<'x, F> = Server<XenDeviceModel<'x>, XenHostMem<'x>, F>;

/// Stage: the ioreq server (create with RETRY, ioreq page + event
/// channels, PCI function, enable), undone by itself on failure; or, for a
/// restarted worker, the same Xen server taken over with the device state
/// its predecessor saved. The state is saved from now on.
fn start_server<'x, F: FunctionModel>(
    ctx: &Ctx<'_>,
    mut pdm: XenDeviceModel<'x>,
    hm: XenHostMem<'x>,
    func: F,
    saved: Option<&str>,
) -> Result<XenServer<'x, F>, Failure> {
    let (args, dom, scfg) = (ctx.args, ctx.dom, ctx.scfg);
    let domid = dom.domid;
    let mut server = if args.attach {
        // A restart after a crash: the same Xen server, whose id the
        // supervisor took from the record of this instance.
        let id = args
            .ioservid
            .ok_or_else(|| at("re-attach ioreq server")("no --ioservid"))?;
        pdm.adopt(&dom, id).map_err(at("adopt ioreq server"))?;
        match Server::attach_with(pdm, hm, dom, id, scfg, func, saved) {
            Ok(s) => s,
            Err((e, mut pdm, _)) => {
                pdm.forget(&dom, id);
                return Err(at("re-attach ioreq server")(e));
            }
        }
    } else {
        Server::start_with(pdm, hm, dom, scfg, func).map_err(|(e, _, _)| at("ioreq server")(e))?
    };
    let pci_file = crate::supervisor::open_pci_state(domid, !args.attach);
    match pci_file {
        Ok(f) => server.set_pci_saver(Box::new(move |s| {
            use std::os::unix::fs::FileExt;
            f.write_all_at(format!("{s}\n").as_bytes(), 0)
                .map_err(|e| e.to_string())
        })),
        Err(e) => {
            warn!(%dom, error = %e, "no PCI state file: a restarted server could not re-attach")
        }
    }

    Ok(server)
}

/// The stages from the deprivileging of the handles to the teardown.
fn run_server<F: FunctionModel>(
    ctx: &Ctx<'_>,
    mut server: XenServer<'_, F>,
    restrict: impl FnOnce() -> Result<(), gpu_hostmem_xen::XenError>,
) -> Result<(), Failure> {
    let (args, libs, dom, scfg, reporter) = (ctx.args, ctx.libs, ctx.dom, ctx.scfg, ctx.reporter);
    let domid = dom.domid;
    // Stage: deprivilege the handles that touch the guest.
    if let Err(e) = restrict() {
        let _ = server.shutdown();
        return Err(at("restrict handles")(e));
    }

    // Stage: ask hvmloader to place the BAR above 4 GiB and leave it
    // write-back in the guest's MTRRs (it is memory, not registers). The
    // guest has not run yet: the plugin unpauses it only once we are running.
    // A restarted worker (attach) finds the guest running: its firmware is
    // long done, and the server must not be shut down for a failed hint.
    // The xenstore connection is opened for this write only and closed at
    // once: the worker keeps none (report.rs).
    if !args.attach && scfg.sbdf.seg == 0 && scfg.sbdf.bus == 0 {
        let hinted = libs.xenstore.open().and_then(|xs| {
            xs.write(
                &record::wb_bar_hint_path(domid),
                &record::wb_bar_hint_value(scfg.sbdf.dev, scfg.sbdf.func),
            )
        });
        if let Err(e) = hinted {
            let _ = server.shutdown();
            return Err(at("hvmloader hint")(e));
        }
    }

    // Stage: least privilege. Everything is open; what touches the guest
    // is restricted to it. Drop to the unprivileged user, then the
    // seccomp filter (issue 19), before `running` is published and before
    // any request of the guest is read.
    match ctx.run_as {
        Some((uid, gid)) => {
            if let Err(e) = crate::sandbox::enter(uid, gid) {
                if args.attach {
                    // Leave the server to the next attempt: the process
                    // exits, its handles close, nothing is destroyed.
                    std::mem::forget(server);
                } else {
                    let _ = server.shutdown();
                }
                return Err(at("drop privileges")(e));
            }
            info!(%dom, uid, gid, "running unprivileged, seccomp filter installed");
        }
        None => warn!(%dom, "run_as: root: running with every privilege and no seccomp filter"),
    }

    // Stage: tell the plugin we are running (the supervisor publishes the
    // record). A first worker whose supervisor is gone stops: nobody can
    // publish the record, so the plugin fails the creation and the guest
    // never runs. A restarted one serves on: the guest runs, and its
    // supervisor recorded it when it started it (teardown finds it).
    let bdf = scfg.sbdf.to_string();
    let published = reporter.send(&Report::Running {
        ioservid: server.ioservid(),
        sbdf: scfg.sbdf,
        bar_size: scfg.bar_size,
    });
    let published = match published {
        Ok(Sent::SupervisorGone) if !args.attach => Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the supervisor is gone before the guest ran",
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = published {
        let _ = server.shutdown();
        return Err(at("publish state")(e));
    }
    info!(%dom, ioservid = server.ioservid(), %bdf, bar_size = scfg.bar_size, attached = args.attach, "running");
    if args.attach {
        // Answer what the dead process left (slots READY or INPROCESS)
        // now, without waiting for an event that was already consumed.
        if let Err(e) = server.drain(std::time::Instant::now()) {
            warn!(%dom, error = %e, "answering the requests left in flight failed");
        }
    }

    let outcome = event_loop(&mut server, reporter, ctx.sig_r, ctx.ctl, ctx.stop);
    match &outcome {
        Ok(why) => info!(%dom, reason = %why, "stopping"),
        Err(e) => warn!(%dom, error = %e, "stopping after an error"),
    }
    let sent = reporter
        .send(&Report::Stopping)
        .and_then(|_| reporter.flush_within(LAST_REPORT_WAIT));
    report_outcome(sent, "stopping");
    let (pdm, hm, report) = server.shutdown();
    drop(hm);
    drop(pdm);
    for e in &report.errors {
        warn!(%dom, error = %e, "teardown step failed");
    }
    match outcome {
        // The supervisor removes the record when we exit 0.
        Ok(_) if report.is_clean() => {
            crate::supervisor::remove_pci_state(domid);
            info!(%dom, "stopped cleanly");
            Ok(())
        }
        Ok(_) => Err(at("teardown")(format!(
            "{} step(s) failed",
            report.errors.len()
        ))),
        Err(e) => Err(at("event loop")(e)),
    }
}

/// Whether `XEN_DMOP_get_instance` answers for `dom` (the library has
/// the call, Xen implements it, and it names the instance we checked with
/// xenctrl): then the device-model handle alone can check identity.
fn instance_by_dmop(
    dm: &gpu_hostmem_xen::DeviceModel<'_>,
    dom: &DomainIdentity,
) -> Result<(), String> {
    match dm.instance(dom.domid) {
        Ok(Some(i)) if i.unique_id == dom.unique_id() => Ok(()),
        Ok(Some(i)) => Err(format!(
            "XEN_DMOP_get_instance names instance {}, xenctrl {}",
            i.unique_id,
            dom.unique_id()
        )),
        Ok(None) => Err("XEN_DMOP_get_instance: no such domain".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// How long QEMU may take to answer the slot check.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// Refuses a `pci_slot` in which the guest's QEMU placed a device of its
/// own: once the server claims the slot, Xen sends its config cycles to us
/// and that device would vanish from the guest without an error. When
/// QEMU cannot be asked (no QMP socket, e.g. a stub-domain device model,
/// or no answer in time) the slot is not checked, which the log says.
fn check_qemu_slot(domid: u16, sbdf: Sbdf, config: &std::path::Path) -> Result<(), Failure> {
    if sbdf.seg != 0 || sbdf.bus != 0 {
        return Ok(());
    }
    let path = qemu_slots::socket_path(domid);
    if !path.exists() {
        info!(
            path = %path.display(),
            "no QMP socket of the guest's QEMU: pci_slot not checked against QEMU's devices"
        );
        return Ok(());
    }
    let functions = match qemu_slots::query_bus0(&path, QMP_TIMEOUT) {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "could not ask QEMU for its PCI devices: pci_slot not checked");
            return Ok(());
        }
    };
    let taken: Vec<String> = functions
        .iter()
        .filter(|f| f.slot == sbdf.dev)
        .map(ToString::to_string)
        .collect();
    let mut used: Vec<u8> = functions.iter().map(|f| f.slot).collect();
    used.sort_unstable();
    used.dedup();
    let used = used
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    if taken.is_empty() {
        info!(slot = sbdf.dev, qemu_slots = %used, "pci_slot is free of QEMU's devices");
        return Ok(());
    }
    Err(at("PCI slot")(format!(
        "slot {} of bus 0 is taken by the guest's QEMU device {}: set pci_slot in {} to a slot QEMU leaves free (its devices are in slots {used})",
        sbdf.dev,
        taken.join(", "),
        config.display()
    )))
}

/// Why the loop ended.
#[derive(Debug)]
enum Stop {
    Signal,
    DomainGone,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stop::Signal => "SIGTERM",
            Stop::DomainGone => "domain gone",
        })
    }
}

fn drain_pipe(mut r: &UnixStream) {
    let mut buf = [0u8; 64];
    loop {
        match r.read(&mut buf) {
            Ok(n) if n > 0 => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => return,
        }
    }
}

fn event_loop<F: FunctionModel>(
    server: &mut XenServer<'_, F>,
    reporter: &Reporter,
    sig_r: &UnixStream,
    ctl: &ControlSocket,
    stop: &AtomicBool,
) -> Result<Stop, ServerError> {
    let domid = server.domain().domid;
    let mut bar_base: Option<u64> = None;
    let mut checked = Instant::now();
    let mut orphan = false;
    loop {
        match server.run_once(Some(LOOP_TIMEOUT)) {
            Ok(Flow::Continue) => {}
            Ok(Flow::DomainGone) => return Ok(Stop::DomainGone),
            Err(ServerError::Platform(e)) if e.errno == Errno::ESRCH => {
                return Ok(Stop::DomainGone)
            }
            Err(e) => return Err(e),
        }
        drain_pipe(sig_r);
        if stop.load(Ordering::Acquire) {
            return Ok(Stop::Signal);
        }
        // The domain's death: asked of Xen through the restricted handle
        // (no xenstore watch: the worker has no xenstore connection).
        if checked.elapsed() >= ALIVE_CHECK {
            checked = Instant::now();
            let dom = *server.domain();
            // The supervisor's death: the worker serves on (the guest
            // keeps its memory and never waits on a request nobody
            // answers), with the privileges it has, and says so once.
            if !orphan && reporter.supervisor_gone() {
                orphan = true;
                error!(%dom,
                       "the supervisor is gone: serving on without restart-on-crash \
                        (xl destroy or gpu-hostmem teardown stops this worker)");
            }
            match server.device_model().is_alive(&dom) {
                Ok(true) => {}
                Ok(false) => return Ok(Stop::DomainGone),
                Err(e) => warn!(%dom, error = %e, "cannot check whether the domain is alive"),
            }
        }
        ctl.serve(|| server.status(true));
        let now = server.pci().active_bar().map(|r| r.start);
        if now != bar_base {
            bar_base = now;
            let v = now.map_or_else(|| "unmapped".to_owned(), |b| format!("{b:#x}"));
            // The server logs the move within its limit (the guest moves
            // its BAR at will); this one only at debug level.
            tracing::debug!(domid, bar_base = %v, "BAR moved");
            if let Err(e) = reporter.send(&Report::BarBase(now)) {
                warn!(domid, error = %e, "cannot report bar-base to the supervisor");
            }
        } else if let Err(e) = reporter.flush() {
            warn!(domid, error = %e, "cannot report to the supervisor");
        }
    }
}

/// How long a worker about to exit waits for a supervisor that is not
/// reading to take its last report.
const LAST_REPORT_WAIT: Duration = Duration::from_secs(1);

/// Logs what became of a worker's last report.
fn report_outcome(sent: io::Result<Sent>, what: &str) {
    match sent {
        Ok(Sent::Delivered) | Ok(Sent::SupervisorGone) => {}
        Ok(Sent::Queued) => warn!(
            "the supervisor did not read the report of {what} within {:?}: lost",
            LAST_REPORT_WAIT
        ),
        Err(e) => warn!(error = %e, "cannot report {what} to the supervisor"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec![
            "x",
            "--domid",
            "3",
            "--uuid",
            "00112233-4455-6677-8899-aabbccddeeff",
        ];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("args")
    }

    #[test]
    fn bar_size_override_is_validated() {
        let cfg = Config::default();
        assert_eq!(
            server_config(&args(&[]), &cfg).expect("cfg").bar_size,
            2048 << 20
        );
        let s = server_config(&args(&["--bar-size-mib", "256"]), &cfg).expect("cfg");
        assert_eq!(s.bar_size, 256 << 20);
        assert_eq!(s.sbdf.dev as u64, cfg.pci_slot);
        for bad in ["3", "131072", "18446744073709551615"] {
            let e = server_config(&args(&["--bar-size-mib", bad]), &cfg).unwrap_err();
            assert!(e.to_string().contains("--bar-size-mib"), "{e}");
        }
    }

    #[test]
    fn stop_reasons_read_well() {
        assert_eq!(Stop::Signal.to_string(), "SIGTERM");
        assert_eq!(Stop::DomainGone.to_string(), "domain gone");
    }
}

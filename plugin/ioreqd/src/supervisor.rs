//! The process libxl starts (with the plugin's command line): it runs the
//! IOREQ server as a worker child (`--worker`) and restarts it, with
//! backoff, when it dies without having stopped (a signal such as SIGKILL
//! or SIGSYS, a panic). The new
//! worker re-attaches to the same Xen ioreq server (`--attach`: its id is
//! in the xenstore record, the PCI state in a file the worker keeps
//! current) and answers the request that was in flight. A worker that
//! keeps dying is given up after [`RESTART_LIMIT`] deaths within
//! [`RESTART_WINDOW`]: the supervisor then disables the server, answers
//! whatever is still in flight as an unbacked BAR (never leaving a vCPU
//! blocked), and records `failed: ...` for the operator
//! (`gpu-hostmem status`, the log); if that fallback fails, it crashes the
//! guest with the reason rather than leave a vCPU waiting. It also cleans
//! up what a dead worker left when the domain goes away or on SIGTERM. The
//! Xen handles for all this are opened when it starts, restricted to the
//! guest: the fallback and the cleanup open nothing.
//!
//! The record's `pid` names the supervisor: teardown signals it and it
//! forwards SIGTERM to the worker. The worker does not die with its
//! supervisor (no parent-death signal): if the supervisor is killed, the
//! worker, which is what answers the guest, serves on with the privileges
//! it had and only loses restart-on-crash, which it logs (its reports go
//! nowhere from then on). Never is a vCPU left waiting on a request nobody
//! will answer because a process that does not answer requests died. The
//! supervisor records each worker it starts by identity (`worker-pid`,
//! `worker-start`: its pid and its start time, read while it is our
//! unreaped child), and teardown finds an orphaned worker by that identity
//! alone and stops it through a pidfd.

use crate::report::{Budget, Lines, Report, REPORT_FD};
use crate::Args;
use gpu_hostmem_core::config::{Config, Device, VirtioGpuConfig};
use gpu_hostmem_core::ioreq::{STATE_IOREQ_INPROCESS, STATE_IOREQ_READY};
use gpu_hostmem_core::limits::Tally;
use gpu_hostmem_core::platform::{
    DeviceModel, DomainIdentity, HostMem, IoServId, IoreqChannel, RevokeRange,
};
use gpu_hostmem_core::server::{self, unbacked_answer};
use gpu_hostmem_host::control::{control_dir, pci_state_path, socket_path};
use gpu_hostmem_host::identity::ProcessIdentity;
use gpu_hostmem_host::process::Pidfd;
use gpu_hostmem_host::record::{self, key, state, Record};
use gpu_hostmem_xen::platform::{self, Identity, XenDeviceModel, XenHostMem};
use gpu_hostmem_xen::{EventChannels, ForeignMemory, Privcmd, XenLibs, Xenctrl, Xenstore};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Deaths within [`RESTART_WINDOW`] after which the worker is given up.
pub const RESTART_LIMIT: usize = 5;
/// The window of [`RESTART_LIMIT`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// First restart delay; doubled for each death in the window.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the supervisor looks at its worker and its flags.
const POLL: Duration = Duration::from_millis(50);
/// Exit code of a worker that stopped on purpose after a failure it
/// reported (`failed: ...` in the record): never restarted.
const EXIT_REPORTED_FAILURE: i32 = 1;

/// Opens the PCI state file, emptied when `fresh` (a new server).
pub fn open_pci_state(domid: u16, fresh: bool) -> io::Result<File> {
    let dir = control_dir();
    fs::create_dir_all(&dir)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(fresh)
        .mode(0o600)
        .open(pci_state_path(domid))
}

/// The saved PCI state of `domid`, if any.
pub fn read_pci_state(domid: u16) -> Option<String> {
    let mut s = String::new();
    File::open(pci_state_path(domid))
        .ok()?
        .take(4096)
        .read_to_string(&mut s)
        .ok()?;
    let s = s.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Removes the PCI state file of `domid`.
pub fn remove_pci_state(domid: u16) {
    let _ = fs::remove_file(pci_state_path(domid));
}

/// How a worker's death is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Exit 0: it stopped and cleaned up.
    Stopped,
    /// Exit 1: it reported a failure and stopped on purpose.
    Reported,
    /// Anything else (a signal, a panic, a failed re-attach).
    Crashed,
}

/// Classifies an exit status. `attach`: a re-attaching worker's exit 1 is
/// a failed attempt, not a reported failure.
pub fn death(status: ExitStatus, attach: bool) -> Death {
    match status.code() {
        Some(0) => Death::Stopped,
        Some(EXIT_REPORTED_FAILURE) if !attach => Death::Reported,
        _ => Death::Crashed,
    }
}

/// The delay before restart number `n` (1-based) in the window.
pub fn backoff(n: usize) -> Duration {
    let shift = u32::try_from(n.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    BACKOFF_FIRST.saturating_mul(1 << shift).min(BACKOFF_MAX)
}

/// Deaths kept in the window; true when the worker must be given up.
#[derive(Debug, Default)]
pub struct Deaths {
    at: Vec<Instant>,
}

impl Deaths {
    /// Records a death at `now`; returns how many are in the window.
    pub fn record(&mut self, now: Instant) -> usize {
        self.at
            .retain(|t| now.saturating_duration_since(*t) < RESTART_WINDOW);
        self.at.push(now);
        self.at.len()
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(libc::SIGSYS)) => "SIGSYS (a system call the seccomp filter forbids)".into(),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Where a worker finds its end of the renderer socket.
pub const RENDERER_FD: i32 = 4;
/// Where the renderer finds its socket and its privcmd file.
const RENDERER_SOCKET_FD: i32 = 3;
const RENDERER_PRIVCMD_FD: i32 = 4;
/// How long a renderer whose worker is gone may take to exit on its own
/// (it unregisters its blobs on the socket's end) before it is killed.
const RENDERER_EXIT_WAIT: Duration = Duration::from_secs(2);

/// In a forked child before exec: puts each `(from, to)` fd at `to`,
/// without close-on-exec, whatever the numbers (a `from` may be another
/// pair's `to`: everything is first copied above them).
///
/// # Safety
/// Only async-signal-safe calls (fcntl, dup2, close); call it in a child
/// between fork and exec, with every `from` open.
unsafe fn place_fds(pairs: &[(i32, i32)]) -> io::Result<()> {
    let mut high = [-1i32; 4];
    for (i, &(from, _)) in pairs.iter().enumerate().take(high.len()) {
        // SAFETY: fcntl on an open fd; the copy is above every target.
        let h = unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 64) };
        if h < 0 {
            return Err(io::Error::last_os_error());
        }
        high[i] = h;
    }
    for (i, &(_, to)) in pairs.iter().enumerate().take(high.len()) {
        // SAFETY: dup2 between fds of this process; the copy at `to` has
        // no close-on-exec.
        if unsafe { libc::dup2(high[i], to) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the temporary copy made above.
        unsafe { libc::close(high[i]) };
    }
    Ok(())
}

/// The renderer process of one worker's life: it serves the worker's
/// virtio-gpu device over a `SOCK_SEQPACKET` pair and exits when the
/// worker's end closes (unregistering every blob first). Dropping this
/// waits [`RENDERER_EXIT_WAIT`] for that, then kills it.
pub struct RendererProcess {
    child: Child,
}

impl Drop for RendererProcess {
    fn drop(&mut self) {
        let until = Instant::now() + RENDERER_EXIT_WAIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    info!(renderer = self.child.id(), status = %describe(st), "supervisor: renderer exited");
                    return;
                }
                Ok(None) if Instant::now() < until => sleep(POLL),
                _ => break,
            }
        }
        warn!(
            renderer = self.child.id(),
            "supervisor: renderer still running without its worker: killing it"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the renderer `path` of `dom` as `vg` configures it (user,
/// supplementary groups, backend), with no capability and no_new_privs,
/// holding only its socket end and a privcmd file restricted to the guest
/// and narrowed to registering memory (what `gpu-hostmem backend` hands a
/// backend), logging with filter `log`. Returns it and the worker's end of
/// the socket.
fn spawn_renderer(
    path: &std::path::Path,
    vg: &VirtioGpuConfig,
    dom: &DomainIdentity,
    log: &str,
) -> io::Result<(RendererProcess, OwnedFd)> {
    let other = |e: String| io::Error::other(e);
    let user = &vg.renderer_user;
    let (uid, gid) = gpu_hostmem_host::users::resolve(user)
        .map_err(other)?
        .ok_or_else(|| {
            other(format!(
                "renderer_user {user:?}: the renderer never runs as root"
            ))
        })?;
    // Its supplementary groups (none unless configured: the devices a
    // Vulkan driver opens, /dev/udmabuf or a render node), resolved before
    // the fork.
    let groups = gpu_hostmem_host::users::resolve_groups(&vg.renderer_groups)
        .map_err(|e| other(format!("renderer_groups: {e}")))?;
    // Only root has groups to drop (a supervisor under test may not be
    // root; it then cannot give groups either, and setgroups says so).
    // SAFETY: geteuid cannot fail.
    let set_groups = !groups.is_empty() || unsafe { libc::geteuid() } == 0;
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two new fds into `fds`.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nobody else.
    let (worker_end, renderer_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let privcmd = Privcmd::open()
        .and_then(|p| {
            p.restrict(dom.domid)?;
            p.narrow_to_backend()?;
            Ok(p.into_fd())
        })
        .map_err(|e| other(format!("privcmd for the renderer: {e}")))?;
    let (sock_raw, priv_raw) = (renderer_end.as_raw_fd(), privcmd.as_raw_fd());
    let mut cmd = Command::new(path);
    cmd.arg("--socket-fd")
        .arg(RENDERER_SOCKET_FD.to_string())
        .arg("--backend")
        .arg(vg.backend.name())
        .env_clear()
        .env("GPU_HOSTMEM_PRIVCMD_FD", RENDERER_PRIVCMD_FD.to_string())
        .env("GPU_HOSTMEM_UNIQUE_ID", dom.unique_id().to_string())
        .env("GPU_HOSTMEM_DOMID", dom.domid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    cmd.env(crate::logging::LOG_ENV, log);
    // SAFETY: runs in the forked child before exec. It drops the ids
    // first, as std's uid()/gid() would, but with the configured
    // supplementary groups where std can only drop them all (its
    // `groups()` is unstable): setgroups, setresgid, setresuid (real,
    // effective and saved, so every capability is gone), then prctl,
    // fcntl, dup2 and close; all async-signal-safe, allocating nothing
    // (`groups` was made before the fork); both fds are open in the child
    // (close-on-exec only).
    unsafe {
        cmd.pre_exec(move || {
            if (set_groups && libc::setgroups(groups.len(), groups.as_ptr()) < 0)
                || libc::setresgid(gid, gid, gid) < 0
                || libc::setresuid(uid, uid, uid) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            place_fds(&[
                (sock_raw, RENDERER_SOCKET_FD),
                (priv_raw, RENDERER_PRIVCMD_FD),
            ])?;
            // Nothing else crosses the exec, whatever we inherited
            // without close-on-exec (close_range's CLOEXEC flag, Linux
            // 5.11: std's own exec-error pipe keeps working).
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            if libc::syscall(
                libc::SYS_close_range,
                (RENDERER_PRIVCMD_FD + 1) as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Our copies go: the renderer's end must close when the renderer dies,
    // and this privcmd file (narrowed to a backend's rights) is the
    // renderer's alone.
    drop(renderer_end);
    drop(privcmd);
    Ok((RendererProcess { child }, worker_end))
}

/// Starts a worker, with the child's end of a new report socket on
/// [`REPORT_FD`] and, if given, its end of the renderer socket on
/// [`RENDERER_FD`]; returns it and the supervisor's end.
fn spawn_worker(
    attach: bool,
    unique_id: u64,
    ioservid: Option<u16>,
    renderer: Option<&OwnedFd>,
) -> io::Result<(Child, UnixStream)> {
    let exe = std::env::current_exe()?;
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--worker")
        .arg("--unique-id")
        .arg(unique_id.to_string());
    if attach {
        cmd.arg("--attach");
        if let Some(id) = ioservid {
            cmd.arg("--ioservid").arg(id.to_string());
        }
    }
    let renderer_raw = renderer.map(|f| f.as_raw_fd());
    if renderer_raw.is_some() {
        cmd.arg("--renderer-fd").arg(RENDERER_FD.to_string());
    }
    // No parent-death signal: a worker outlives a killed supervisor and
    // keeps answering the guest (see the module comment).
    // SAFETY: runs in the forked child before exec; dup2(2) and fcntl(2)
    // are async-signal-safe and allocate nothing. `theirs_fd` is open in
    // the child (inherited; close-on-exec only).
    unsafe {
        cmd.pre_exec(move || match renderer_raw {
            Some(r) => place_fds(&[(theirs_fd, REPORT_FD), (r, RENDERER_FD)]),
            None => place_fds(&[(theirs_fd, REPORT_FD)]),
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok((child, ours))
}

/// Writes the record from the worker's reports: the worker holds no
/// xenstore connection (report.rs). What the supervisor knows itself (the
/// domain's handle and unique id, its own pid, the control socket) is
/// never taken from the worker; a line that is not a report is logged and
/// dropped.
struct Publisher<'a> {
    xs: &'a Xenstore<'a>,
    dom: DomainIdentity,
    uuid: String,
    /// The worker whose reports these are, as recorded for teardown.
    worker: Option<ProcessIdentity>,
    sock: UnixStream,
    lines: Lines,
    budget: Budget,
    /// The latest BAR address reported and not yet written (the budget
    /// was spent): only the latest matters.
    bar_base: Option<Report>,
    /// Reports over the budget.
    dropped: Tally,
    /// Lines that were no report (a compromised worker's): logged at
    /// powers of two only, so that it cannot flood the log through us.
    refused: Tally,
    /// libxl's startup node, until the first worker's `running` or
    /// `failed` is announced there.
    ready_path: Option<String>,
}

impl Publisher<'_> {
    fn new<'a>(
        xs: &'a Xenstore<'a>,
        dom: DomainIdentity,
        uuid: String,
        worker: Option<ProcessIdentity>,
        sock: UnixStream,
        ready_path: Option<String>,
    ) -> Publisher<'a> {
        Publisher {
            xs,
            dom,
            uuid,
            worker,
            sock,
            lines: Lines::default(),
            budget: Budget::new(Instant::now()),
            bar_base: None,
            dropped: Tally::default(),
            refused: Tally::default(),
            ready_path,
        }
    }

    /// Applies everything the worker sent so far, within the budget.
    fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for line in self.lines.push(&buf[..n]) {
                        self.take(&line);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if self.bar_base.is_some() && self.budget.take(Instant::now()) {
            if let Some(r) = self.bar_base.take() {
                self.apply(&r);
            }
        }
    }

    fn take(&mut self, line: &str) {
        let dom = self.dom;
        let report = match Report::parse(line) {
            Ok(r) => r,
            Err(e) => {
                if let Some(refused) = self.refused.note() {
                    warn!(%dom, error = %e, refused,
                          "supervisor: dropped a line of the worker that is no report");
                }
                return;
            }
        };
        if matches!(report, Report::BarBase(_)) {
            // Written by pump() once the budget allows; a later one
            // replaces it.
            self.bar_base = Some(report);
            return;
        }
        if !self.budget.take(Instant::now()) {
            if let Some(dropped) = self.dropped.note() {
                warn!(%dom, dropped, report = %report,
                      "supervisor: the worker reports faster than the budget; dropped");
            }
            return;
        }
        self.apply(&report);
    }

    fn apply(&mut self, report: &Report) {
        let dom = &self.dom;
        let domid = dom.domid;
        let written = match report {
            Report::Running {
                ioservid,
                sbdf,
                bar_size,
            } => {
                let (unique_id, pid) =
                    (dom.unique_id().to_string(), std::process::id().to_string());
                let (bdf, size, id) =
                    (sbdf.to_string(), bar_size.to_string(), ioservid.to_string());
                let control = socket_path(domid).display().to_string();
                let mut kvs = vec![
                    (key::UUID, self.uuid.as_str()),
                    (key::UNIQUE_ID, &unique_id),
                    (key::PID, &pid),
                    (key::BDF, &bdf),
                    (key::BAR_SIZE, &size),
                    (key::BAR_BASE, "unmapped"),
                    (key::IOSERVID, &id),
                    (key::CONTROL, &control),
                ];
                let worker = self
                    .worker
                    .map(|w| (w.pid.to_string(), w.start.to_string()));
                if let Some((wpid, wstart)) = &worker {
                    kvs.push((key::WORKER_PID, wpid));
                    kvs.push((key::WORKER_START, wstart));
                }
                kvs.push((key::STATE, state::RUNNING));
                record::write(self.xs, domid, &kvs)
            }
            Report::BarBase(b) => self.xs.write(
                &record::path(domid, key::BAR_BASE),
                &b.map_or_else(|| "unmapped".to_owned(), |b| format!("{b:#x}")),
            ),
            Report::Stopping => self
                .xs
                .write(&record::path(domid, key::STATE), state::STOPPING),
            Report::Failed(why) => self.xs.write(
                &record::path(domid, key::STATE),
                &format!("{}{why}", state::FAILED_PREFIX),
            ),
        };
        if let Err(e) = written {
            warn!(%dom, error = %e, report = %report, "supervisor: cannot write the record");
        }
        let startup = match report {
            Report::Running { .. } => Some(state::RUNNING.to_owned()),
            Report::Failed(why) => Some(format!("{}{why}", state::FAILED_PREFIX)),
            _ => None,
        };
        if let (Some(value), Some(path)) = (startup, &self.ready_path) {
            announce(self.xs, path, &value);
            self.ready_path = None;
        }
    }
}

/// Writes `value` into libxl's startup node `path`, only while its parent
/// exists: libxl creates it before starting us and removes it with the
/// domain's directory, which a late write must not bring back.
fn announce(xs: &Xenstore<'_>, path: &str, value: &str) {
    let parent = path.rsplit_once('/').map_or("/", |(p, _)| p);
    let written = (|| -> gpu_hostmem_xen::Result<bool> {
        loop {
            let t = xs.transaction()?;
            if t.read(parent)?.is_none() {
                return Ok(false);
            }
            t.write(path, value)?;
            if t.commit()? {
                return Ok(true);
            }
        }
    })();
    match written {
        Ok(true) => info!(path, value, "supervisor: startup announced to libxl"),
        Ok(false) => warn!(
            path,
            "supervisor: libxl's startup node is gone; not announced"
        ),
        Err(e) => warn!(path, error = %e, "supervisor: cannot announce the startup to libxl"),
    }
}

/// A failure before the server runs: in the record (for the operator and
/// `gpu-hostmem status`) and, from the supervisor, in libxl's startup node,
/// which fails the domain's creation with this reason.
pub fn setup_failed(args: &Args, reason: &str) {
    crate::daemon::report_failure(args.domid, reason);
    if args.worker {
        return;
    }
    let Some(path) = &args.ready_path else {
        return;
    };
    match gpu_hostmem_xen::XenstoreLib::load().and_then(|l| {
        let xs = l.open()?;
        announce(&xs, path, &format!("{}{reason}", state::FAILED_PREFIX));
        Ok(())
    }) {
        Ok(()) => {}
        Err(e) => warn!(path, error = %e, "supervisor: cannot announce the failure to libxl"),
    }
}

/// The ioreq server a restarted worker takes over: only from a record of
/// the instance we serve (by Xen's unique id: the UUID is not unique) in
/// state `running` (a server that was stopped was destroyed, and Xen may
/// have given its id to someone else).
fn recorded_ioservid(xs: &Xenstore<'_>, dom: &DomainIdentity) -> Option<u16> {
    own_record(xs, dom).as_ref().and_then(running_ioservid)
}

/// The record of `domid`, only if it is one of the instance we serve.
fn own_record(xs: &Xenstore<'_>, dom: &DomainIdentity) -> Option<Record> {
    Record::read(xs, dom.domid)
        .ok()
        .flatten()
        .filter(|r| r.unique_id() == Some(dom.unique_id()))
}

/// The ioreq server a record in state `running` names.
fn running_ioservid(r: &Record) -> Option<u16> {
    if r.state.as_deref() != Some(state::RUNNING) {
        return None;
    }
    r.ioservid.as_deref().and_then(|v| v.trim().parse().ok())
}

/// Removes the record if it is one of the instance we serve.
fn remove_record(xs: &Xenstore<'_>, dom: &DomainIdentity) {
    if own_record(xs, dom).is_some() {
        if let Err(e) = record::remove(xs, dom.domid) {
            warn!(%dom, error = %e, "supervisor: cannot remove the record");
        }
    }
}

/// Whether the instance we serve (by Xen's unique id) still has its domid
/// and is not dying. An error counts as alive: the restart then decides.
fn domain_alive(xc: &Xenctrl<'_>, dom: &DomainIdentity) -> bool {
    match platform::current(xc, dom.domid) {
        Ok(Some((id, info))) => id == *dom && !info.dying,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// The instance of `args.domid` to serve: the domain that has the domid
/// now, if its handle is the one libxl gave (`--uuid`) and it is not
/// dying, named by Xen's unique id from then on (the UUID is not unique).
fn resolve_instance(libs: &XenLibs, args: &crate::Args) -> Result<DomainIdentity, String> {
    let xc = libs.xenctrl.open().map_err(|e| e.to_string())?;
    let domid = args.domid;
    match platform::current(&xc, domid).map_err(|e| e.to_string())? {
        None => Err(format!("domain {domid} does not exist")),
        Some((_, info)) if info.handle != args.uuid => Err(format!(
            "domain {domid} is {}, not {}: refusing to serve another domain",
            DomainIdentity::new(domid, info.handle).uid_string(),
            DomainIdentity::new(domid, args.uuid).uid_string()
        )),
        Some((_, info)) if info.dying => Err(format!("domain {domid} is dying")),
        Some((dom, _)) => Ok(dom),
    }
}

fn recorded_state(xs: &Xenstore<'_>, domid: u16) -> Option<String> {
    xs.read(&record::path(domid, key::STATE)).ok().flatten()
}

/// The supervisor's own Xen handles, opened once when it starts (it is
/// root then and nothing has gone wrong yet) and restricted to the guest
/// where Xen allows it: the give-up fallback and the cleanup after a dead
/// worker open nothing when they run. Opened at give-up time, a failure
/// (no fd or memory left, say) would leave the guest's vCPUs waiting on
/// requests nobody answers.
struct Handles<'l> {
    dm: gpu_hostmem_xen::DeviceModel<'l>,
    fm: ForeignMemory<'l>,
    xce: EventChannels<'l>,
    /// The identity checks (xenctrl cannot be restricted).
    xc: Xenctrl<'l>,
}

impl<'l> Handles<'l> {
    /// Opens them, and a privcmd file restricted to `domid`; the error
    /// names the one that failed.
    fn open(libs: &'l XenLibs, domid: u16) -> Result<(Handles<'l>, Privcmd), String> {
        let at = |what: &'static str| move |e: gpu_hostmem_xen::XenError| format!("{what}: {e}");
        let dm = libs.devicemodel.open().map_err(at("devicemodel"))?;
        dm.restrict(domid).map_err(at("restrict devicemodel"))?;
        let fm = libs.foreignmemory.open().map_err(at("foreignmemory"))?;
        fm.restrict(domid).map_err(at("restrict foreignmemory"))?;
        let xce = libs.evtchn.open().map_err(at("evtchn"))?;
        xce.restrict(domid).map_err(at("restrict evtchn"))?;
        let xc = libs.xenctrl.open().map_err(at("xenctrl"))?;
        let pc = Privcmd::open().map_err(at("privcmd"))?;
        pc.restrict(domid).map_err(at("restrict privcmd"))?;
        Ok((Handles { dm, fm, xce, xc }, pc))
    }
}

/// The guest as the supervisor acts on it, over its [`Handles`].
struct Guest<'a> {
    dm: XenDeviceModel<'a>,
    hm: XenHostMem<'a>,
}

/// Runs the supervisor; returns the exit code of the whole server.
pub fn run(args: &Args, cfg: &Config) -> ExitCode {
    let domid = args.domid;
    let libs = match XenLibs::load() {
        Ok(l) => l,
        Err(e) => {
            error!(domid, error = %e, "supervisor: cannot open the Xen libraries");
            setup_failed(args, &format!("open Xen libraries: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let xs = match libs.xenstore.open() {
        Ok(x) => x,
        Err(e) => {
            error!(domid, error = %e, "supervisor: cannot connect to xenstore");
            return ExitCode::FAILURE;
        }
    };
    let dom = match resolve_instance(&libs, args) {
        Ok(d) => d,
        Err(e) => {
            error!(domid, error = %e, "supervisor: domain identity");
            setup_failed(args, &format!("domain identity: {e}"));
            return ExitCode::FAILURE;
        }
    };
    info!(%dom, unique_id = dom.unique_id(), "supervisor: serving this instance");
    let (handles, privcmd) = match Handles::open(&libs, domid) {
        Ok(h) => h,
        Err(e) => {
            error!(%dom, error = %e, "supervisor: cannot open its Xen handles");
            setup_failed(args, &format!("supervisor's Xen handles: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let id = || Identity::Xenctrl(&handles.xc);
    let mut guest = Guest {
        dm: XenDeviceModel::new(&handles.dm, &handles.fm, &handles.xce, id()),
        hm: XenHostMem::new(privcmd, id()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            error!(%dom, error = %e, "supervisor: cannot handle signals");
            return ExitCode::FAILURE;
        }
    }
    // The renderer logs as we do (its environment is cleared).
    let log = crate::logging::directive(&cfg.log);
    let mut deaths = Deaths::default();
    let mut attach = false;
    let uuid = DomainIdentity::new(domid, args.uuid).uid_string();
    loop {
        let ioservid = if attach {
            recorded_ioservid(&xs, &dom)
        } else {
            None
        };
        // device: virtio-gpu with a renderer: one renderer per worker,
        // started first (the worker says hello during its setup).
        let renderer = match (cfg.device, &cfg.virtio_gpu.renderer) {
            (Device::VirtioGpu, Some(path)) => {
                let vg = &cfg.virtio_gpu;
                match spawn_renderer(path, vg, &dom, &log) {
                    Ok((p, end)) => {
                        info!(%dom, renderer = p.child.id(), path = %path.display(), "supervisor: renderer started");
                        Some((p, end))
                    }
                    Err(e) => {
                        let quit = |n| give_up(&mut guest, &xs, &dom, n, &stop);
                        match start_failed(args, &dom, &mut deaths, attach, "renderer", &e, quit) {
                            ControlFlow::Break(code) => return code,
                            ControlFlow::Continue(()) => continue,
                        }
                    }
                }
            }
            _ => None,
        };
        let (renderer, worker_end) = match renderer {
            Some((p, end)) => (Some(p), Some(end)),
            None => (None, None),
        };
        let spawned = spawn_worker(attach, dom.unique_id(), ioservid, worker_end.as_ref());
        // Only the worker holds its end from here: the renderer sees the
        // worker's death as the end of its socket.
        drop(worker_end);
        // Lives until this worker is reaped (the end of this iteration).
        let _renderer = renderer;
        let (mut child, sock) = match spawned {
            Ok(c) => c,
            Err(e) => {
                let quit = |n| give_up(&mut guest, &xs, &dom, n, &stop);
                match start_failed(args, &dom, &mut deaths, attach, "worker", &e, quit) {
                    ControlFlow::Break(code) => return code,
                    ControlFlow::Continue(()) => continue,
                }
            }
        };
        info!(%dom, worker = child.id(), attach, "supervisor: worker started");
        // Only the first worker's setup is libxl's startup.
        let ready = args.ready_path.clone().filter(|_| !attach);
        let worker = record_worker(&xs, &dom, &child, attach);
        let mut publisher = Publisher::new(&xs, dom, uuid.clone(), worker, sock, ready);
        let status = match wait_worker(&mut child, &stop, &mut publisher) {
            Ok(s) => s,
            Err(e) => {
                error!(%dom, error = %e, "supervisor: cannot wait for the worker");
                let _ = child.kill();
                let _ = child.wait();
                return cleanup_exit(&mut guest, &xs, &dom, ExitCode::FAILURE);
            }
        };
        // What it said last (`stopping`, `failed: ...`) is in the record
        // before its death is read.
        publisher.pump();
        drop(publisher);
        let how = death(status, attach);
        if stop.load(Ordering::Acquire) {
            info!(%dom, status = %describe(status), "supervisor: worker stopped on request");
            return match how {
                Death::Stopped => {
                    remove_record(&xs, &dom);
                    remove_pci_state(args.domid);
                    let _ = fs::remove_file(socket_path(args.domid));
                    ExitCode::SUCCESS
                }
                _ => cleanup_exit(&mut guest, &xs, &dom, ExitCode::SUCCESS),
            };
        }
        match how {
            Death::Stopped => {
                info!(%dom, "supervisor: worker stopped cleanly");
                // The record, and files the unprivileged worker cannot
                // unlink.
                remove_record(&xs, &dom);
                remove_pci_state(args.domid);
                let _ = fs::remove_file(socket_path(args.domid));
                return ExitCode::SUCCESS;
            }
            Death::Reported => {
                warn!(%dom, "supervisor: worker stopped after a failure it reported");
                return ExitCode::FAILURE;
            }
            Death::Crashed => {}
        }
        let st = recorded_state(&xs, args.domid);
        if st
            .as_deref()
            .is_some_and(|s| s.starts_with(state::FAILED_PREFIX))
        {
            warn!(%dom, state = ?st, "supervisor: worker stopped after a failure it reported");
            return ExitCode::FAILURE;
        }
        if !attach && st.as_deref() != Some(state::RUNNING) {
            // It died before it was running: libxl sees the failure.
            error!(%dom, status = %describe(status), "supervisor: worker died during setup");
            setup_failed(
                args,
                &format!("worker died during setup ({})", describe(status)),
            );
            return ExitCode::FAILURE;
        }
        if !domain_alive(&handles.xc, &dom) {
            info!(%dom, status = %describe(status), "supervisor: worker died and the domain is gone");
            return cleanup_exit(&mut guest, &xs, &dom, ExitCode::SUCCESS);
        }
        let n = deaths.record(Instant::now());
        error!(%dom, status = %describe(status), deaths = n, window_s = RESTART_WINDOW.as_secs(),
               "supervisor: the IOREQ server died; restarting it");
        if n > RESTART_LIMIT {
            return give_up(&mut guest, &xs, &dom, n, &stop);
        }
        let _ = xs.write(&record::path(args.domid, key::RESTARTS), &n.to_string());
        let until = Instant::now() + backoff(n);
        while Instant::now() < until && !stop.load(Ordering::Acquire) {
            sleep(POLL);
        }
        if stop.load(Ordering::Acquire) {
            return cleanup_exit(&mut guest, &xs, &dom, ExitCode::SUCCESS);
        }
        attach = true;
    }
}

/// The renderer or the worker (`what`) could not be started. During the
/// first setup libxl's startup fails with the error; for a restart it
/// counts as a death: past the bound `give_up` is called with the count,
/// else the loop starts both again after the backoff. Returns the loop's
/// decision: `Break` with the supervisor's exit code, or `Continue`.
fn start_failed(
    args: &Args,
    dom: &DomainIdentity,
    deaths: &mut Deaths,
    attach: bool,
    what: &str,
    e: &io::Error,
    give_up: impl FnOnce(usize) -> ExitCode,
) -> ControlFlow<ExitCode> {
    error!(%dom, error = %e, "supervisor: cannot start the {what}");
    if !attach {
        setup_failed(args, &format!("start {what}: {e}"));
        return ControlFlow::Break(ExitCode::FAILURE);
    }
    let n = deaths.record(Instant::now());
    if n > RESTART_LIMIT {
        return ControlFlow::Break(give_up(n));
    }
    sleep(backoff(n));
    ControlFlow::Continue(())
}

/// The identity of the worker just started, for teardown: read while it
/// is our unreaped child (its pid names it and nobody else). A first
/// worker's is written with the record it reports `running` for; a
/// restarted worker's at once, into the record of the instance we serve,
/// so that a worker that loses its supervisor before it reports is named
/// too.
fn record_worker(
    xs: &Xenstore<'_>,
    dom: &DomainIdentity,
    child: &Child,
    attach: bool,
) -> Option<ProcessIdentity> {
    let Some(w) = ProcessIdentity::of(child.id()) else {
        warn!(%dom, worker = child.id(),
              "supervisor: cannot read the worker's start time: teardown cannot stop it if it outlives us");
        return None;
    };
    if attach && own_record(xs, dom).is_some() {
        let written = record::write(
            xs,
            dom.domid,
            &[
                (key::WORKER_PID, &w.pid.to_string()),
                (key::WORKER_START, &w.start.to_string()),
            ],
        );
        if let Err(e) = written {
            warn!(%dom, error = %e, "supervisor: cannot record the worker");
        }
    }
    Some(w)
}

/// Waits for the worker; forwards SIGTERM to it once a stop is asked,
/// through a pidfd opened while the child is certainly ours (not reaped
/// yet), so that no other process can ever be signalled.
fn wait_worker(
    child: &mut Child,
    stop: &AtomicBool,
    publisher: &mut Publisher<'_>,
) -> io::Result<ExitStatus> {
    let pidfd = Pidfd::open(child.id()).ok().flatten();
    let mut forwarded = false;
    loop {
        publisher.pump();
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if !forwarded && stop.load(Ordering::Acquire) {
            forwarded = true;
            match &pidfd {
                Some(p) => {
                    let _ = p.send_signal(libc::SIGTERM);
                }
                // No pidfd (pidfd_open failed): SIGKILL through the
                // child handle, which knows it was not reaped.
                None => {
                    let _ = child.kill();
                }
            }
        }
        sleep(POLL);
    }
}

/// What a dead worker left: every lent page, the ioreq server (from a
/// record still `running`), the record, the files.
fn cleanup(g: &mut Guest<'_>, xs: &Xenstore<'_>, dom: &DomainIdentity) {
    // Only a record of the instance we serve (by unique id).
    let Some(rec) = own_record(xs, dom) else {
        return;
    };
    let servid = running_ioservid(&rec);
    let _ = xs.write(&record::path(dom.domid, key::STATE), state::STOPPING);
    if let Some(id) = servid {
        let _ = g.dm.adopt(dom, id);
    }
    let report = server::teardown(&mut g.dm, &mut g.hm, dom, servid);
    for e in &report.errors {
        warn!(%dom, error = %e, "supervisor: cleanup step failed");
    }
    let _ = record::remove(xs, dom.domid);
    remove_pci_state(dom.domid);
    let _ = fs::remove_file(socket_path(dom.domid));
    info!(%dom, "supervisor: cleaned up what the worker left");
}

fn cleanup_exit(
    g: &mut Guest<'_>,
    xs: &Xenstore<'_>,
    dom: &DomainIdentity,
    code: ExitCode,
) -> ExitCode {
    cleanup(g, xs, dom);
    code
}

/// The bound is reached: keep the guest running with the BAR unbacked.
/// Disable the server (new accesses then complete in Xen as unbacked),
/// revoke every lent page, answer what is in flight and anything Xen
/// still sends us (RETRY resends) until the domain goes or SIGTERM, then
/// clean up. If the fallback cannot do that, a request may be left
/// unanswered and its vCPU blocked: the guest is crashed instead, with
/// the reason in the log.
fn give_up(
    g: &mut Guest<'_>,
    xs: &Xenstore<'_>,
    dom: &DomainIdentity,
    deaths: usize,
    stop: &AtomicBool,
) -> ExitCode {
    let reason = format!(
        "the IOREQ server died {deaths} times within {} s: given up; BAR accesses complete as unbacked",
        RESTART_WINDOW.as_secs()
    );
    error!(%dom, %reason, "supervisor: giving up the IOREQ server");
    let servid = recorded_ioservid(xs, dom);
    let _ = xs.write(
        &record::path(dom.domid, key::STATE),
        &format!("{}{reason}", state::FAILED_PREFIX),
    );
    let Some(id) = servid else {
        return cleanup_exit(g, xs, dom, ExitCode::FAILURE);
    };
    if let Err(e) = fallback(g, dom, id, stop) {
        error!(%dom, error = %e, "supervisor: fallback failed");
        // A domain that went away needs nothing more.
        if g.dm.is_alive(dom).unwrap_or(true) {
            let why = format!("the give-up fallback failed ({e})");
            error!(%dom, reason = %why, "supervisor: fatal error: shutting the guest down as crashed");
            if let Err(ce) = g.dm.crash_domain(dom, &why) {
                error!(%dom, error = %ce, "supervisor: cannot crash the guest");
            }
        }
    }
    // The adopted server goes; the cleanup (state `failed: ...`) then
    // only revokes and removes the record.
    let _ = g.dm.destroy_server(dom, id);
    cleanup_exit(g, xs, dom, ExitCode::FAILURE)
}

/// The give-up fallback proper, on server `id`: see [`give_up`].
fn fallback(
    g: &mut Guest<'_>,
    dom: &DomainIdentity,
    id: IoServId,
    stop: &AtomicBool,
) -> Result<(), String> {
    g.dm.adopt(dom, id).map_err(|e| e.to_string())?;
    let mut chan = g.dm.open_channel(dom, id).map_err(|e| e.to_string())?;
    g.dm.set_server_state(dom, id, false)
        .map_err(|e| e.to_string())?;
    g.hm.revoke(dom, RevokeRange::All)
        .map_err(|e| e.to_string())?;
    info!(%dom, "supervisor: fallback running: server disabled, pages revoked");
    // An answer the last worker wrote but did not live to notify: Xen
    // wakes the vCPU only on the event (as Server::attach_with does for a
    // restarted worker).
    for vcpu in 0..chan.nr_vcpus() {
        let st = chan.state(vcpu).map_err(|e| e.to_string())?;
        if server::notify_unsent_answer(&chan, vcpu, st).map_err(|e| e.to_string())? {
            info!(%dom, vcpu, "supervisor: fallback notified the answer the dead worker wrote");
        }
    }
    let mut answered = Tally::default();
    while !stop.load(Ordering::Acquire) && g.dm.is_alive(dom).unwrap_or(true) {
        let _ = chan.wait(Some(Duration::from_millis(200)));
        for vcpu in 0..chan.nr_vcpus() {
            let st = chan.state(vcpu).map_err(|e| e.to_string())?;
            if st != STATE_IOREQ_READY && st != STATE_IOREQ_INPROCESS {
                continue;
            }
            let req = chan.read(vcpu).map_err(|e| e.to_string())?;
            let resp = unbacked_answer(&req);
            chan.complete(vcpu, resp.data, resp.state)
                .map_err(|e| e.to_string())?;
            chan.notify(vcpu).map_err(|e| e.to_string())?;
            if let Some(answered) = answered.note() {
                info!(%dom, answered, "supervisor: fallback answered requests as unbacked");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_are_read_from_the_exit_status() {
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        let signal = ExitStatus::from_raw;
        assert_eq!(death(code(0), false), Death::Stopped);
        assert_eq!(death(code(1), false), Death::Reported);
        assert_eq!(death(code(1), true), Death::Crashed, "a failed re-attach");
        assert_eq!(death(code(101), false), Death::Crashed, "a panic");
        assert_eq!(death(signal(libc::SIGKILL), false), Death::Crashed);
        assert_eq!(death(signal(libc::SIGSYS), true), Death::Crashed);
        assert!(describe(signal(libc::SIGSYS)).contains("seccomp"));
    }

    #[test]
    fn restarts_back_off_and_are_bounded_in_a_window() {
        assert_eq!(backoff(1), BACKOFF_FIRST);
        assert_eq!(backoff(2), BACKOFF_FIRST * 2);
        assert_eq!(backoff(100), BACKOFF_MAX);
        let mut d = Deaths::default();
        let t0 = Instant::now();
        for i in 1..=RESTART_LIMIT {
            assert_eq!(d.record(t0 + Duration::from_secs(i as u64)), i);
        }
        assert_eq!(d.record(t0 + Duration::from_secs(10)), RESTART_LIMIT + 1);
        // Deaths older than the window no longer count.
        assert_eq!(d.record(t0 + RESTART_WINDOW + Duration::from_secs(30)), 1);
    }
}

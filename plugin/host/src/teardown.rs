//! Total, idempotent teardown of one guest's gpu-hostmem state from outside
//! the IOREQ server process (the plugin's destroy hook and `gpu-hostmem
//! teardown`): stop the processes (the supervisor, and its worker, which
//! outlives a killed supervisor), revoke every lent page, destroy a server
//! a killed process left, remove the xenstore record and control socket.
//! Never acts on a domain whose identity differs from the recorded one (I5):
//! the identity is the domid plus Xen's unique id of the instance, recorded
//! by the IOREQ server as `unique-id` (the UUID is not unique: xl keeps it
//! across a reboot and users may set it).
//!
//! Identity is checked and acted on in one step where the kernel allows:
//! the process is signalled through a pidfd (a reused pid is never hit),
//! and the record moves from `running` to `stopping` in one xenstore
//! transaction, so only one teardown takes over the ioreq server a dead
//! process left, and never one that was already destroyed (whose id Xen
//! may have given to another emulator since).

use crate::control;
use crate::identity::{Found, ProcessIdentity};
use crate::process::Pidfd;
use crate::record::{self, parse_uuid, Record};
use gpu_hostmem_core::platform::DomainIdentity;
use gpu_hostmem_core::server;
use gpu_hostmem_xen::platform::{Identity, XenDeviceModel, XenHostMem};
use gpu_hostmem_xen::Privcmd;
use gpu_hostmem_xen::{XenError, XenLibs};
use std::time::Duration;

/// The IOREQ server program name, checked before signalling a recorded pid.
pub const IOREQD_NAME: &str = "gpu-hostmem-ioreqd";

/// How long to wait for the process.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// After SIGTERM, before SIGKILL.
    pub term: Duration,
    /// After SIGKILL.
    pub kill: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            term: Duration::from_secs(5),
            kill: Duration::from_secs(2),
        }
    }
}

/// Why a teardown did not (fully) happen.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    /// The record belongs to another domain that had this domid.
    #[error("domain {domid}: the gpu-hostmem record belongs to domain {recorded}, not {expected}: refusing to act")]
    OtherDomain {
        domid: u16,
        recorded: String,
        expected: String,
    },
    /// A Xen call failed.
    #[error(transparent)]
    Xen(#[from] XenError),
    /// Some steps failed (the others were done).
    #[error("teardown of domain {domid} incomplete: {}", .errors.join("; "))]
    Incomplete { domid: u16, errors: Vec<String> },
}

/// What a teardown did, step by step (for `gpu-hostmem teardown`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub actions: Vec<String>,
}

/// Whether `pid` runs our IOREQ server for `domid`.
pub fn is_our_ioreqd(pid: u32, domid: u16) -> bool {
    Pidfd::open(pid)
        .ok()
        .flatten()
        .is_some_and(|p| runs_our_ioreqd(&p, domid))
}

/// Whether the process behind `p` is our IOREQ server for `domid`.
fn runs_our_ioreqd(p: &Pidfd, domid: u16) -> bool {
    let Some(args) = p.cmdline() else {
        return false;
    };
    let name_ok = args
        .first()
        .and_then(|a| a.rsplit('/').next())
        .is_some_and(|n| n == IOREQD_NAME);
    let dom = domid.to_string();
    name_ok && args.windows(2).any(|w| w[0] == "--domid" && w[1] == dom)
}

/// What [`stop_process`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// No process had the recorded pid.
    AlreadyGone,
    /// The pid names another program now (ours is gone): left alone.
    NotOurs,
    /// It exited after SIGTERM, so it cleaned up itself.
    Exited,
    /// It had to be killed: it did not clean up.
    Killed,
}

impl Stopped {
    /// Whether our process is gone without having cleaned up (what it
    /// left, such as its ioreq server, is still there).
    pub fn left_state(self) -> bool {
        self != Stopped::Exited
    }
}

/// Stops the recorded IOREQ server process (the supervisor): SIGTERM,
/// then SIGKILL after `t.term`, both through a pidfd opened before the
/// identity check, so a pid reused meanwhile is never signalled.
pub fn stop_process(
    pid: u32,
    domid: u16,
    t: Timeouts,
    out: &mut Outcome,
) -> Result<Stopped, XenError> {
    let Some(p) = Pidfd::open(pid)?.filter(|p| !p.has_exited()) else {
        out.actions.push(format!("process {pid} already gone"));
        return Ok(Stopped::AlreadyGone);
    };
    if !runs_our_ioreqd(&p, domid) {
        if p.has_exited() {
            out.actions.push(format!("process {pid} already gone"));
            return Ok(Stopped::AlreadyGone);
        }
        out.actions.push(format!(
            "pid {pid} is not {IOREQD_NAME} for domain {domid}: left alone"
        ));
        return Ok(Stopped::NotOurs);
    }
    stop_pidfd(&p, IOREQD_NAME, t, out)
}

/// Stops the worker the record names, a worker that may have outlived its
/// supervisor, only if it is that very process: the pid *and* the start
/// time the supervisor recorded when it started it (a pid given to
/// another process since is left alone, and the worker, which runs
/// unprivileged and parses what the guest sends, has no say in either).
pub fn stop_worker(
    w: ProcessIdentity,
    t: Timeouts,
    out: &mut Outcome,
) -> Result<Stopped, XenError> {
    match w.find()? {
        Found::Gone => {
            out.actions
                .push(format!("{IOREQD_NAME} worker ({w}) already gone"));
            Ok(Stopped::AlreadyGone)
        }
        Found::Other => {
            out.actions.push(format!(
                "pid {} is not the recorded worker ({w}): left alone",
                w.pid
            ));
            Ok(Stopped::NotOurs)
        }
        Found::Same(p) => stop_pidfd(&p, &format!("{IOREQD_NAME} worker"), t, out),
    }
}

/// SIGTERM to the process behind `p` (already known to be ours), then
/// SIGKILL after `t.term`.
fn stop_pidfd(p: &Pidfd, what: &str, t: Timeouts, out: &mut Outcome) -> Result<Stopped, XenError> {
    let pid = p.pid();
    if !p.send_signal(libc::SIGTERM)? {
        out.actions.push(format!("process {pid} already gone"));
        return Ok(Stopped::AlreadyGone);
    }
    out.actions
        .push(format!("sent SIGTERM to {what} (pid {pid})"));
    if p.wait_exit(t.term) {
        out.actions.push(format!("pid {pid} exited"));
        return Ok(Stopped::Exited);
    }
    p.send_signal(libc::SIGKILL)?;
    out.actions.push(format!(
        "pid {pid} still running after {:?}: sent SIGKILL",
        t.term
    ));
    if !p.wait_exit(t.kill) {
        return Err(XenError::invalid(
            "kill",
            format!("pid {pid} survived SIGKILL"),
        ));
    }
    Ok(Stopped::Killed)
}

/// Whether the server's processes, as [`stop_server`] found them, left
/// state behind (an ioreq server to destroy): not if the worker exited on
/// SIGTERM (it shut its server down), nor if the supervisor did and no
/// worker had to be killed (it stopped its worker, or cleaned up after a
/// dead one).
pub fn server_left_state(supervisor: Option<Stopped>, worker: Option<Stopped>) -> bool {
    match (supervisor, worker) {
        (_, Some(Stopped::Exited)) => false,
        (_, Some(Stopped::Killed)) => true,
        (Some(s), _) => s.left_state(),
        (None, _) => true,
    }
}

/// Stops the processes of `rec`'s server: the supervisor (`pid`; it
/// forwards SIGTERM to its worker and waits for it), then the worker
/// (`worker-pid`, `worker-start`) if it still runs, which it does when
/// its supervisor was killed. The worker's identity is taken from
/// `latest()` (the record read again once the supervisor is stopped: it
/// may have restarted its worker meanwhile), else from `rec`. A process
/// that cannot be stopped is an error in `errors` and counts as one that
/// was killed. Returns whether they left state behind
/// ([`server_left_state`]), None when the record names no process.
pub fn stop_server(
    rec: &Record,
    domid: u16,
    latest: impl FnOnce() -> Option<Record>,
    t: Timeouts,
    out: &mut Outcome,
    errors: &mut Vec<String>,
) -> Option<bool> {
    let mut stopped = |r: Result<Stopped, XenError>| {
        r.unwrap_or_else(|e| {
            errors.push(e.to_string());
            Stopped::Killed
        })
    };
    let sup = rec
        .pid()
        .map(|pid| stopped(stop_process(pid, domid, t, out)));
    let worker = latest()
        .and_then(|r| r.worker())
        .or_else(|| rec.worker())
        .map(|w| stopped(stop_worker(w, t, out)));
    (sup.is_some() || worker.is_some()).then(|| server_left_state(sup, worker))
}

/// The domain teardown may act on, decided by unique ids alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The domain that has the domid now, with this unique id: the recorded
    /// instance, or (no record, or one without a unique id) whatever domain
    /// has the domid now (revoking only makes that guest fault again).
    ActOn(u64),
    /// The recorded instance is gone (no domain has the domid, or another
    /// instance does): Xen's teardown of it dropped every lent page and its
    /// ioreq server, and the domain there now must not be touched.
    Gone,
}

/// Which domain teardown acts on, from the record's unique id and that of
/// the domain that has the domid now.
pub fn target(recorded: Option<u64>, current: Option<u64>) -> Target {
    match (recorded, current) {
        (Some(r), Some(c)) if r == c => Target::ActOn(c),
        (Some(_), _) => Target::Gone,
        (None, Some(c)) => Target::ActOn(c),
        (None, None) => Target::Gone,
    }
}

/// Tears down `domid`. With `expected` (the plugin knows the domain's
/// handle), a record of another domain is refused; without it (the CLI),
/// the recorded identity is used. Succeeds when nothing is there.
pub fn teardown(
    domid: u16,
    expected: Option<[u8; 16]>,
    t: Timeouts,
) -> Result<Outcome, TeardownError> {
    let libs = XenLibs::load()?;
    let xs = libs.xenstore.open()?;
    let xc = libs.xenctrl.open()?;
    let mut out = Outcome::default();
    let rec = Record::read(&xs, domid)?;
    let recorded = rec
        .as_ref()
        .and_then(|r| r.uuid.as_deref())
        .and_then(parse_uuid);

    if let (Some(e), Some(r)) = (expected, recorded) {
        if e != r {
            return Err(TeardownError::OtherDomain {
                domid,
                recorded: DomainIdentity::new(domid, r).uid_string(),
                expected: DomainIdentity::new(domid, e).uid_string(),
            });
        }
    }
    // The instance to act for: the recorded one if it still has the
    // domid, else nothing; with no recorded unique id, whatever domain has
    // the domid now (revoking only makes that guest fault again, it never
    // exposes a page).
    let recorded_id = rec.as_ref().and_then(Record::unique_id);
    let act = target(recorded_id, xc.unique_id(domid)?);

    // Take the record over: `running` -> `stopping` in one transaction.
    // Only the teardown that saw `running` may take over the ioreq server
    // the process leaves; any other state means the process (or an earlier
    // teardown) stopped, and destroyed that server, already.
    let mut took_running = false;
    let mut left = None;
    let mut errors = Vec::new();
    if let Some(rec) = &rec {
        out.actions.push(format!(
            "found record {} (state {})",
            record::dir(domid),
            rec.state.as_deref().unwrap_or("?")
        ));
        match record::take_state(&xs, domid, record::state::STOPPING) {
            Ok(prev) => took_running = prev.as_deref() == Some(record::state::RUNNING),
            Err(e) => out.actions.push(format!("could not mark it stopping: {e}")),
        }
        // A process that cannot be stopped is an error, but every lent
        // page is still revoked below.
        let latest = || Record::read(&xs, domid).ok().flatten();
        left = stop_server(rec, domid, latest, t, &mut out, &mut errors);
    }

    // Checked again after stopping the process: the domain may have gone.
    let act = match act {
        Target::ActOn(id) if xc.unique_id(domid)? == Some(id) => act,
        _ => Target::Gone,
    };
    match act {
        Target::ActOn(id) => {
            let dom = DomainIdentity::from_unique_id(domid, id);
            let dm = libs.devicemodel.open()?;
            let fm = libs.foreignmemory.open()?;
            let xce = libs.evtchn.open()?;
            let mut pdm = XenDeviceModel::new(&dm, &fm, &xce, Identity::Xenctrl(&xc));
            let privcmd = Privcmd::open()?;
            privcmd.restrict(domid)?;
            let mut hm = XenHostMem::new(privcmd, Identity::Xenctrl(&xc));
            // A server the process destroyed itself needs nothing; one a
            // dead process left is adopted only from a record we took over
            // in state `running` whose identity is this domain's.
            let leftover = took_running && recorded_id == Some(id) && left == Some(true);
            let servid = rec
                .as_ref()
                .filter(|_| leftover)
                .and_then(|r| r.ioservid.as_deref())
                .and_then(|s| s.trim().parse().ok())
                .filter(|id| pdm.adopt(&dom, *id).is_ok());
            let report = server::teardown(&mut pdm, &mut hm, &dom, servid);
            out.actions
                .push(format!("revoked every page lent to {dom}"));
            if let Some(id) = servid {
                out.actions.push(format!("destroyed ioreq server {id}"));
            }
            errors.extend(report.errors.iter().map(|e| e.to_string()));
        }
        // Gone (or replaced by another domain): Xen's teardown of the
        // recorded domain dropped every lent page and its ioreq server.
        Target::Gone => out.actions.push(format!(
            "domain {domid} (recorded instance) is gone: nothing lent can remain"
        )),
    }

    if rec.is_some() {
        match record::remove(&xs, domid) {
            Ok(()) => out.actions.push(format!("removed {}", record::dir(domid))),
            Err(e) => errors.push(e.to_string()),
        }
    }
    for file in [control::socket_path(domid), control::pci_state_path(domid)] {
        if file.exists() {
            match std::fs::remove_file(&file) {
                Ok(()) => out.actions.push(format!("removed {}", file.display())),
                Err(e) => errors.push(format!("remove {}: {e}", file.display())),
            }
        }
    }
    if rec.is_none() {
        out.actions.push(format!("no record for domain {domid}"));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(TeardownError::Incomplete { domid, errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_hostmem_test_support::is_running;
    use std::process::Command;

    #[test]
    fn only_our_ioreqd_for_that_domain_is_recognised() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn");
        assert!(
            !is_our_ioreqd(child.id(), 3),
            "sleep is not the IOREQ server"
        );
        let mut out = Outcome::default();
        let stopped = stop_process(child.id(), 3, Timeouts::default(), &mut out).expect("stop");
        assert_eq!(stopped, Stopped::NotOurs, "a foreign process is left alone");
        assert!(stopped.left_state(), "ours is gone without cleaning up");
        assert!(is_running(child.id()), "it was not signalled");
        assert!(out.actions[0].contains("left alone"), "{out:?}");
        let _ = child.kill();
        let _ = child.wait();
        let stopped = stop_process(child.id(), 3, Timeouts::default(), &mut out).expect("stop");
        assert_eq!(stopped, Stopped::AlreadyGone);
    }

    /// I5: a record left by a guest that is gone must never make teardown
    /// act on the domain that has its domid now, whatever the UUIDs say
    /// (xl keeps the UUID across a reboot).
    #[test]
    fn teardown_acts_only_on_the_recorded_instance() {
        // The recorded instance still has the domid.
        assert_eq!(target(Some(41), Some(41)), Target::ActOn(41));
        // Replaced by a new instance at the same domid: hands off.
        assert_eq!(target(Some(41), Some(42)), Target::Gone);
        // Nobody has the domid any more.
        assert_eq!(target(Some(41), None), Target::Gone);
        // No recorded unique id (no record, or one from before the server
        // published it): the domain there now, which revoking cannot harm.
        assert_eq!(target(None, Some(42)), Target::ActOn(42));
        assert_eq!(target(None, None), Target::Gone);
    }

    fn quick() -> Timeouts {
        Timeouts {
            term: Duration::from_secs(5),
            kill: Duration::from_secs(2),
        }
    }

    fn dead_pid() -> u32 {
        let mut dead = Command::new("true").spawn().expect("spawn true");
        let pid = dead.id();
        dead.wait().expect("reap");
        pid
    }

    fn worker_record(pid: u32, w: ProcessIdentity) -> Record {
        Record {
            pid: Some(pid.to_string()),
            worker_pid: Some(w.pid.to_string()),
            worker_start: Some(w.start.to_string()),
            ..Record::default()
        }
    }

    /// Issue 19: a worker that outlived its killed supervisor is found by
    /// the record's worker-pid and worker-start and stopped through a
    /// pidfd; a process that has the pid but another start time (a pid
    /// given again, or a record naming someone else) is never signalled.
    #[test]
    fn a_worker_that_outlived_its_supervisor_is_stopped_by_identity() {
        let mut w = Command::new("sleep").arg("30").spawn().expect("spawn");
        let id = ProcessIdentity::of(w.id()).expect("identity");

        // The pid with another start time: left alone, and the server's
        // state is then still there to clean up.
        let wrong = ProcessIdentity {
            start: id.start + 1,
            ..id
        };
        let (mut out, mut errors) = (Outcome::default(), Vec::new());
        let left = stop_server(
            &worker_record(dead_pid(), wrong),
            3,
            || None,
            quick(),
            &mut out,
            &mut errors,
        );
        assert_eq!(left, Some(true), "nobody cleaned up: {out:?}");
        assert!(errors.is_empty(), "{errors:?}");
        assert!(is_running(w.id()), "not signalled: {out:?}");
        assert!(
            out.actions
                .iter()
                .any(|a| a.contains("is not the recorded worker")),
            "{out:?}"
        );

        // The recorded worker: SIGTERM through the pidfd; it exits, so it
        // shut its server down itself (nothing left).
        let (mut out, mut errors) = (Outcome::default(), Vec::new());
        let left = stop_server(
            &worker_record(dead_pid(), id),
            3,
            || None,
            quick(),
            &mut out,
            &mut errors,
        );
        assert_eq!(left, Some(false), "it exited on SIGTERM: {out:?}");
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            out.actions
                .iter()
                .any(|a| a.contains(&format!("sent SIGTERM to {IOREQD_NAME} worker"))),
            "{out:?}"
        );
        let status = w.wait().expect("reap");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );

        // Gone (reaped): nothing to stop, the state it left is there.
        let (mut out, mut errors) = (Outcome::default(), Vec::new());
        let rec = worker_record(dead_pid(), id);
        assert_eq!(
            stop_server(&rec, 3, || None, quick(), &mut out, &mut errors),
            Some(true)
        );
        assert!(
            out.actions.iter().any(|a| a.contains("already gone")),
            "{out:?}"
        );
        assert_eq!(
            stop_server(
                &Record::default(),
                3,
                || None,
                quick(),
                &mut out,
                &mut errors
            ),
            None,
            "no process recorded"
        );
    }

    /// The worker a supervisor restarted while teardown stopped it is the
    /// one the record names afterwards: that one is stopped.
    #[test]
    fn the_latest_recorded_worker_is_stopped() {
        let mut old = Command::new("true").spawn().expect("spawn");
        let old_id = ProcessIdentity::of(old.id()).expect("identity");
        old.wait().expect("reap");
        let mut w = Command::new("sleep").arg("30").spawn().expect("spawn");
        let id = ProcessIdentity::of(w.id()).expect("identity");
        let (mut out, mut errors) = (Outcome::default(), Vec::new());
        let left = stop_server(
            &worker_record(dead_pid(), old_id),
            3,
            || Some(worker_record(dead_pid(), id)),
            quick(),
            &mut out,
            &mut errors,
        );
        assert_eq!(left, Some(false), "{out:?}");
        w.wait().expect("reap");
    }

    #[test]
    fn whether_the_server_left_state_depends_on_who_exited() {
        use Stopped::*;
        let all = [
            None,
            Some(AlreadyGone),
            Some(NotOurs),
            Some(Killed),
            Some(Exited),
        ];
        // The worker shut its server down itself.
        for s in all {
            assert!(!server_left_state(s, Some(Exited)), "{s:?}");
        }
        // The supervisor stopped its worker (or cleaned up after it).
        for w in [None, Some(AlreadyGone), Some(NotOurs)] {
            assert!(!server_left_state(Some(Exited), w), "{w:?}");
        }
        // A worker that had to be killed left its server.
        assert!(server_left_state(Some(Exited), Some(Killed)));
        // Both gone without cleaning up (the supervisor killed, the worker
        // too, or no worker recorded).
        for s in [None, Some(AlreadyGone), Some(NotOurs), Some(Killed)] {
            for w in [None, Some(AlreadyGone), Some(NotOurs), Some(Killed)] {
                assert!(server_left_state(s, w), "{s:?} {w:?}");
            }
        }
    }

    #[test]
    fn only_a_process_that_exited_on_sigterm_cleaned_up() {
        assert!(!Stopped::Exited.left_state());
        for s in [Stopped::AlreadyGone, Stopped::NotOurs, Stopped::Killed] {
            assert!(s.left_state(), "{s:?}");
        }
    }
}

//! Total, idempotent teardown of one guest's gpu-hostmem state from outside
//! the IOREQ server process (the plugin's destroy hook and `gpu-hostmem
//! teardown`): stop the process, revoke every lent page, destroy a server a
//! killed process left, remove the xenstore record and control socket.
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

/// Stops the recorded IOREQ server process: SIGTERM, then SIGKILL after
/// `t.term`, both through a pidfd opened before the identity check, so a
/// pid reused meanwhile is never signalled.
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
    if !p.send_signal(libc::SIGTERM)? {
        out.actions.push(format!("process {pid} already gone"));
        return Ok(Stopped::AlreadyGone);
    }
    out.actions
        .push(format!("sent SIGTERM to {IOREQD_NAME} (pid {pid})"));
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
    let mut stopped = None;
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
        if let Some(pid) = rec.pid() {
            stopped = Some(stop_process(pid, domid, t, &mut out)?);
        }
    }

    let mut errors = Vec::new();
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
            let leftover =
                took_running && recorded_id == Some(id) && stopped.is_some_and(Stopped::left_state);
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
    use crate::process;
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
        assert!(process::is_running(child.id()), "it was not signalled");
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

    #[test]
    fn only_a_process_that_exited_on_sigterm_cleaned_up() {
        assert!(!Stopped::Exited.left_state());
        for s in [Stopped::AlreadyGone, Stopped::NotOurs, Stopped::Killed] {
            assert!(s.left_state(), "{s:?}");
        }
    }
}

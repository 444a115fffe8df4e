//! Total, idempotent teardown of one guest's gpu-hostmem state from outside
//! the IOREQ server process (the plugin's destroy hook and `gpu-hostmem
//! teardown`): stop the process, revoke every lent page, destroy a server a
//! killed process left, remove the xenstore record and control socket.
//! Never acts on a domain whose identity differs from the recorded one (I5).

use crate::control;
use crate::platform::{XenDeviceModel, XenHostMem};
use crate::privcmd::Privcmd;
use crate::process;
use crate::record::{self, key, parse_uuid, Record};
use crate::{XenError, XenLibs};
use gpu_hostmem_core::platform::DomainIdentity;
use gpu_hostmem_core::server;
use std::thread::sleep;
use std::time::{Duration, Instant};

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
    let Some(args) = process::cmdline(pid) else {
        return false;
    };
    let name_ok = args
        .first()
        .and_then(|a| a.rsplit('/').next())
        .is_some_and(|n| n == IOREQD_NAME);
    let dom = domid.to_string();
    name_ok && args.windows(2).any(|w| w[0] == "--domid" && w[1] == dom)
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while process::is_running(pid) {
        if start.elapsed() >= timeout {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
    true
}

/// Stops the recorded IOREQ server process: SIGTERM, then SIGKILL after
/// `t.term`. Returns whether it had to be killed (then it did not clean up).
pub fn stop_process(
    pid: u32,
    domid: u16,
    t: Timeouts,
    out: &mut Outcome,
) -> Result<bool, XenError> {
    if !process::is_running(pid) {
        out.actions.push(format!("process {pid} already gone"));
        return Ok(true);
    }
    if !is_our_ioreqd(pid, domid) {
        out.actions.push(format!(
            "pid {pid} is not {IOREQD_NAME} for domain {domid}: left alone"
        ));
        return Ok(true);
    }
    process::signal(pid, libc::SIGTERM)?;
    out.actions
        .push(format!("sent SIGTERM to {IOREQD_NAME} (pid {pid})"));
    if wait_gone(pid, t.term) {
        out.actions.push(format!("pid {pid} exited"));
        return Ok(false);
    }
    process::signal(pid, libc::SIGKILL)?;
    out.actions.push(format!(
        "pid {pid} still running after {:?}: sent SIGKILL",
        t.term
    ));
    if !wait_gone(pid, t.kill) {
        return Err(XenError::invalid(
            "kill",
            format!("pid {pid} survived SIGKILL"),
        ));
    }
    Ok(true)
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
    // The identity to act for: the recorded one, else the caller's, else
    // whatever domain has the domid now (the CLI with no record: revoking
    // only makes that guest fault again, it never exposes a page).
    let uid = match recorded.or(expected) {
        Some(u) => Some(u),
        None => xc.domain_info(domid)?.map(|i| i.handle),
    };

    let mut killed = false;
    if let Some(rec) = &rec {
        out.actions.push(format!(
            "found record {} (state {})",
            record::dir(domid),
            rec.state.as_deref().unwrap_or("?")
        ));
        if let Err(e) = xs.write(&record::path(domid, key::STATE), record::state::STOPPING) {
            out.actions.push(format!("could not mark it stopping: {e}"));
        }
        if let Some(pid) = rec.pid() {
            killed = stop_process(pid, domid, t, &mut out)?;
        }
    }

    let mut errors = Vec::new();
    match uid {
        Some(uid) if xc.domain_info(domid)?.is_some_and(|i| i.handle == uid) => {
            let dom = DomainIdentity::new(domid, uid);
            let dm = libs.devicemodel.open()?;
            let fm = libs.foreignmemory.open()?;
            let xce = libs.evtchn.open()?;
            let mut pdm = XenDeviceModel::new(&dm, &fm, &xce, &xc);
            let privcmd = Privcmd::open()?;
            privcmd.restrict(domid)?;
            let mut hm = XenHostMem::new(privcmd, &xc);
            // A server the process destroyed itself needs nothing; one a
            // killed process left is adopted (only for this identity).
            let servid = rec
                .as_ref()
                .filter(|_| killed)
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
        _ => out.actions.push(format!(
            "domain {domid} (recorded identity) is gone: nothing lent can remain"
        )),
    }

    if rec.is_some() {
        match record::remove(&xs, domid) {
            Ok(()) => out.actions.push(format!("removed {}", record::dir(domid))),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let sock = control::socket_path(domid);
    if sock.exists() {
        match std::fs::remove_file(&sock) {
            Ok(()) => out.actions.push(format!("removed {}", sock.display())),
            Err(e) => errors.push(format!("remove {}: {e}", sock.display())),
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
    use std::process::Command;

    #[test]
    fn only_our_ioreqd_for_that_domain_is_recognised() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn");
        assert!(
            !is_our_ioreqd(child.id(), 3),
            "sleep is not the IOREQ server"
        );
        let mut out = Outcome::default();
        let killed = stop_process(child.id(), 3, Timeouts::default(), &mut out).expect("stop");
        assert!(
            killed,
            "a foreign process is left alone and reported as not ours"
        );
        assert!(process::is_running(child.id()), "it was not signalled");
        assert!(out.actions[0].contains("left alone"), "{out:?}");
        let _ = child.kill();
        let _ = child.wait();
    }
}

//! Process helpers that need libc: detached spawning (new session) and
//! signalling a recorded pid only if it still is the program we expect.

use crate::error::{Result, XenError};
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Spawns `cmd` in a new session (setsid), like libxl spawns QEMU, so that
/// terminal signals to the caller's group do not reach it.
pub fn spawn_detached(cmd: &mut Command) -> Result<Child> {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setsid(2), which is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| XenError::Os {
        op: "spawn",
        source,
    })
}

/// Whether `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the last ')' (the command name may contain
        // spaces and parentheses).
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The command line of `pid` (arguments split at NUL), None if it is gone.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Sends `signal` to `pid`. ESRCH (already gone) is reported as Ok(false).
pub fn signal(pid: u32, signal: i32) -> Result<bool> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| XenError::invalid("kill", format!("refusing pid {pid}")))?;
    // SAFETY: kill(2) with a positive pid signals one process; no memory is
    // involved.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        return Ok(true);
    }
    let err = XenError::last_os("kill");
    match err.errno() {
        Some(libc::ESRCH) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn detached_child_runs_in_its_own_session_and_can_be_signalled() {
        let mut child = spawn_detached(Command::new("sleep").arg("30")).expect("spawn sleep");
        let pid = child.id();
        assert!(is_running(pid));
        let args = cmdline(pid).expect("cmdline");
        assert_eq!(args, ["sleep", "30"]);
        // Its session id is its own pid (field 6 of /proc/pid/stat).
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let after = &stat[stat.rfind(')').expect(")") + 2..];
        let sid: u32 = after
            .split_whitespace()
            .nth(3)
            .expect("sid")
            .parse()
            .expect("num");
        assert_eq!(sid, pid);
        assert!(signal(pid, libc::SIGTERM).expect("kill"));
        let start = Instant::now();
        while is_running(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!is_running(pid), "a zombie counts as not running");
        child.wait().expect("reap");
        assert!(!signal(pid, 0).expect("ESRCH is not an error"));
    }

    #[test]
    fn refuses_to_signal_nonpositive_pids() {
        assert!(signal(0, 0).is_err());
        assert!(signal(u32::MAX, 0).is_err());
    }
}

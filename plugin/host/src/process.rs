//! Process helpers that need libc: signalling a recorded pid only if it
//! still is the program we expect, through a pidfd, so that a pid reused
//! meanwhile is never signalled. (libxl starts the IOREQ server itself, in
//! a session of its own: libxl__spawn_spawn.)

use gpu_hostmem_xen::{Result, XenError};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// What an fd inherited from the parent must be (`take_inherited_fd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inherited {
    /// Any open fd (e.g. a privcmd file).
    Any,
    /// A `SOCK_SEQPACKET` socket (the supervisor's and the renderer's).
    SeqpacketSocket,
}

/// Takes ownership of fd `raw`, which the parent left open for this
/// process, once it is checked: not a standard stream, open, and of the
/// `kind` asked for. Sets `FD_CLOEXEC` on it, so that nothing this process
/// might exec keeps it. The error names the fd and what it is not.
pub fn take_inherited_fd(raw: RawFd, kind: Inherited) -> std::result::Result<OwnedFd, String> {
    if raw < 3 {
        return Err(format!("fd {raw} is a standard stream"));
    }
    // SAFETY: F_GETFD only reads the fd's flags.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(format!("fd {raw}: {}", std::io::Error::last_os_error()));
    }
    if kind == Inherited::SeqpacketSocket {
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_TYPE writes one int into `ty`, whose size is `len`.
        let rc = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut ty as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc < 0 || ty != libc::SOCK_SEQPACKET {
            return Err(format!("fd {raw} is not a SOCK_SEQPACKET socket"));
        }
    }
    // SAFETY: the fd is open (checked above), was inherited for us and
    // nothing else in this process uses it; we own it from here.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: F_SETFD on an fd we own.
    unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

/// The command line of `pid` (arguments split at NUL), None if it is gone.
/// Only [`Pidfd::cmdline`] uses it: by pid alone the answer may be that of
/// a process that got the pid later.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// A handle on one process (`pidfd_open(2)`, Linux 5.3): signals sent
/// through it reach that process or fail with ESRCH, never a process that
/// got its pid later.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: u32,
}

impl Pidfd {
    /// Opens a pidfd for `pid`; `None` if no process has that pid: none
    /// at all (ESRCH), or, on kernels before 6.9 or so (dom0's 6.12
    /// included; 6.18 says ESRCH), a pid that lives on only as the session
    /// or process group id of others, or as a thread's id (EINVAL with our
    /// valid pid and flags 0). A killed ioreqd supervisor leaves its pid
    /// so: it led the session its worker still runs in.
    pub fn open(pid: u32) -> Result<Option<Pidfd>> {
        let raw = libc::pid_t::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| XenError::invalid("pidfd_open", format!("refusing pid {pid}")))?;
        // SAFETY: pidfd_open(2) takes a pid and flags (0) and returns a new
        // fd or -1; no memory is passed.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if rc < 0 {
            let err = XenError::last_os("pidfd_open");
            return match err.errno() {
                Some(libc::ESRCH | libc::EINVAL) => Ok(None),
                _ => Err(err),
            };
        }
        let fd = i32::try_from(rc)
            .map_err(|_| XenError::invalid("pidfd_open", format!("fd {rc} out of range")))?;
        // SAFETY: `fd` was just returned by pidfd_open and is owned by no
        // one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Some(Pidfd { fd, pid }))
    }

    /// The pid the handle was opened for.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` (0: only check) to the process. `Ok(false)` if it has
    /// been reaped (ESRCH).
    pub fn send_signal(&self, signal: i32) -> Result<bool> {
        // SAFETY: pidfd_send_signal(2) with a pidfd we own, a NULL siginfo
        // (the kernel fills one in as for kill(2)) and flags 0.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = XenError::last_os("pidfd_send_signal");
        match err.errno() {
            Some(libc::ESRCH) => Ok(false),
            _ => Err(err),
        }
    }

    /// Waits up to `timeout` for the process to exit (a zombie has exited).
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on our own fd.
            let rc = unsafe { libc::poll(&mut p, 1, ms) };
            if rc > 0 {
                return true;
            }
            let interrupted = rc < 0 && XenError::last_os("poll").errno() == Some(libc::EINTR);
            if !interrupted && (rc < 0 || start.elapsed() >= timeout) {
                return false;
            }
        }
    }

    /// Whether the process has exited (or been reaped).
    pub fn has_exited(&self) -> bool {
        self.wait_exit(Duration::ZERO)
    }

    /// The command line of the process, `None` if it has exited. Read from
    /// `/proc/PID` and confirmed through the pidfd afterwards: the process
    /// was still there after the read, so its pid was not reused before it.
    pub fn cmdline(&self) -> Option<Vec<String>> {
        let args = cmdline(self.pid)?;
        (!self.has_exited() && self.send_signal(0).unwrap_or(false)).then_some(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn an_inherited_fd_is_taken_only_if_it_is_what_was_asked() {
        use std::os::fd::IntoRawFd;
        use std::os::unix::net::{UnixDatagram, UnixStream};
        assert!(take_inherited_fd(1, Inherited::Any)
            .unwrap_err()
            .contains("standard stream"));
        // Lowest-free allocation: nothing in the test binary reaches 4000.
        assert!(take_inherited_fd(4000, Inherited::Any)
            .unwrap_err()
            .starts_with("fd 4000: "));

        let (a, b) = UnixStream::pair().expect("stream pair");
        let raw = a.as_raw_fd();
        assert!(take_inherited_fd(raw, Inherited::SeqpacketSocket)
            .unwrap_err()
            .contains("not a SOCK_SEQPACKET"));
        let (dg, _) = UnixDatagram::pair().expect("datagram pair");
        assert!(take_inherited_fd(dg.as_raw_fd(), Inherited::SeqpacketSocket).is_err());

        // A regular file is taken as Any, and not as a socket.
        let file = std::fs::File::open("/proc/self/stat").expect("open");
        let raw_file = file.into_raw_fd();
        assert!(take_inherited_fd(raw_file, Inherited::SeqpacketSocket).is_err());
        let owned = take_inherited_fd(raw_file, Inherited::Any).expect("any open fd");
        // SAFETY: F_GETFD reads the flags of an fd the test owns.
        let flags = unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);

        let (s1, _s2) = gpu_hostmem_test_support::seqpacket_pair().expect("seqpacket pair");
        let raw_sock = s1.into_raw_fd();
        let owned = take_inherited_fd(raw_sock, Inherited::SeqpacketSocket).expect("seqpacket");
        assert_eq!(owned.as_raw_fd(), raw_sock);
        drop((a, b));
    }

    #[test]
    fn pidfd_signals_its_process_and_sees_it_exit() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pfd = Pidfd::open(child.id()).expect("pidfd").expect("running");
        assert_eq!(pfd.pid(), child.id());
        // Right after a vfork-style spawn the new image's arguments may not
        // be set up yet (an empty cmdline): wait for them.
        let t = Instant::now();
        while pfd.cmdline().is_some_and(|a| a.is_empty()) && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pfd.cmdline().expect("cmdline"), ["sleep", "30"]);
        assert!(!pfd.has_exited());
        assert!(!pfd.wait_exit(Duration::from_millis(50)), "still sleeping");
        assert!(pfd.send_signal(libc::SIGTERM).expect("signal"));
        assert!(
            pfd.wait_exit(Duration::from_secs(5)),
            "exit seen on the pidfd"
        );
        assert_eq!(pfd.cmdline(), None, "an exited process has no identity");
        child.wait().expect("reap");
        // Reaped: its pid may now name another process, the pidfd does not.
        assert!(!pfd
            .send_signal(libc::SIGKILL)
            .expect("ESRCH is not an error"));
    }

    /// A session leader that exited while a process of its session runs:
    /// its pid names no process (pidfd_open says EINVAL), which is what
    /// teardown finds for a killed ioreqd supervisor whose worker serves
    /// on. It is "gone", not an error.
    #[test]
    fn pidfd_of_a_dead_session_leader_is_none() {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        use std::process::Stdio;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"])
            .stdout(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setsid(), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut leader = cmd.spawn().expect("spawn sh");
        let mut out = String::new();
        leader
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read");
        let member: u32 = out.trim().parse().expect("pid of sleep");
        let member = Pidfd::open(member).expect("pidfd").expect("sleep runs");
        leader.wait().expect("reap the leader");
        let gone = Pidfd::open(leader.id());
        let _ = member.send_signal(libc::SIGKILL);
        assert!(
            gone.expect("not an error").is_none(),
            "a dead session leader's pid names no process"
        );
    }

    #[test]
    fn pidfd_of_a_missing_process_is_none() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("reap");
        assert!(Pidfd::open(pid).expect("pidfd_open").is_none());
        assert!(Pidfd::open(0).is_err());
    }
}

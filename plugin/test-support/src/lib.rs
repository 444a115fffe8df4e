//! Helpers the tests of several crates share; a dev-dependency only.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A copy of an executable in a directory of its own that every user may
/// enter, removed with the directory when dropped.
///
/// A program a test runs as another user (the renderer runs as `nobody`
/// when the test is root) must be reachable by that user, and the build
/// tree may not be: a clean clone under a 0700 directory, as CI's
/// `mktemp -d` makes. An installation has the binary in
/// `/usr/lib/gpu-hostmem/bin`, which every user may enter.
#[derive(Debug)]
pub struct ExeCopy {
    path: PathBuf,
    dir: PathBuf,
}

impl ExeCopy {
    /// Copy `built` into a fresh `<temp dir>/<tag>-<pid>/` (mode 0755),
    /// under its own file name, mode 0755.
    pub fn new(built: &Path, tag: &str) -> io::Result<ExeCopy> {
        let name = built
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{} names no file", built.display())))?;
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir)?;
        // Whatever the umask: every user may enter and run it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let path = dir.join(name);
        fs::copy(built, &path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(ExeCopy { path, dir })
    }

    /// The copy.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ExeCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `cmd.spawn()`, tried again for up to a second while exec fails with
/// ETXTBSY. A program just written ([`ExeCopy`]) is "busy" as long as any
/// process holds it open for writing: a child that another test thread
/// forked while the copy was being written inherits that fd and keeps it
/// until it execs itself.
pub fn spawn_exe(cmd: &mut std::process::Command) -> io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, close-on-exec: the
/// kind the supervisor gives a worker and its renderer.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new fds into `fds`, which has room for
    // two.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether `pid` exists and is not a zombie, for tests that watch a
/// process they did not spawn (a worker, a server libxl started). By pid
/// alone: production code asks through a pidfd
/// (`gpu_hostmem_host::process::Pidfd`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn the_copy_is_enterable_runnable_and_removed_on_drop() {
        let src = std::env::temp_dir().join(format!("gh-test-support-src-{}", std::process::id()));
        fs::write(&src, b"#!/bin/sh\n").expect("source");
        let copy = ExeCopy::new(&src, "gh-test-support").expect("copy");
        let dir = copy.path().parent().expect("dir").to_path_buf();
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(copy.path())), (0o755, 0o755));
        assert_eq!(fs::read(copy.path()).expect("read"), b"#!/bin/sh\n");
        drop(copy);
        assert!(!dir.exists());
        let _ = fs::remove_file(src);
    }

    #[test]
    fn a_child_is_running_until_it_exits_and_a_zombie_is_not() {
        use std::time::{Duration, Instant};
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        assert!(is_running(pid));
        child.kill().expect("kill");
        let start = Instant::now();
        while is_running(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!is_running(pid), "a zombie counts as not running");
        child.wait().expect("reap");
        assert!(!is_running(pid), "a reaped process is not running");
    }

    #[test]
    fn the_pair_keeps_message_boundaries() {
        let (a, b) = seqpacket_pair().expect("pair");
        let (a, b) = (UnixDatagram::from(a), UnixDatagram::from(b));
        a.send(b"one").expect("send");
        a.send(b"two").expect("send");
        let mut buf = [0u8; 16];
        assert_eq!(b.recv(&mut buf).expect("recv"), 3);
        assert_eq!(&buf[..3], b"one");
    }
}

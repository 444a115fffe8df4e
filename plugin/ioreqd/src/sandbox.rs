//! Least privilege for the worker (issue 19), as QEMU does with
//! `-xen-domid-restrict -runas` and crosvm with its sandboxed devices: once
//! every handle is open and those that touch the guest are restricted to it
//! (devicemodel, foreignmemory, evtchn, privcmd), the worker drops to the
//! configured unprivileged user (`run_as`, default `nobody`) with no
//! supplementary groups and no capabilities, and installs a seccomp filter
//! that allows only the system calls its loop makes; any other call kills
//! the process (SIGSYS), which the supervisor logs and counts as a death.
//!
//! What does not stay: the xenctrl handle, whose privcmd fd allows every
//! hypercall of dom0, is closed before the drop (identity checks go
//! through the restricted device-model handle, `XEN_DMOP_get_instance`,
//! xen-patches/0014; only with a Xen or library without that operation
//! does the worker keep xenctrl, and says so), and the worker holds no
//! xenstore connection (a dom0 connection cannot be narrowed): it reports
//! to the supervisor, which writes the record (report.rs).
//! The supervisor, which restarts the worker and cleans up after it, keeps
//! root and parses nothing the guest controls.

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
use std::collections::BTreeMap;

/// The ids to drop to, or `None` for `run_as: root` (no drop, no filter).
pub use gpu_hostmem_host::users::resolve;

/// The system calls of the worker's loop (poll, the event channel and
/// privcmd ioctls, xenstore and control-socket I/O, logging, allocation,
/// signals, exit).
fn allowed() -> Vec<libc::c_long> {
    let mut v = vec![
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_close,
        libc::SYS_ppoll,
        libc::SYS_ioctl,
        libc::SYS_fcntl,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_lseek,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_sched_yield,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getrandom,
        libc::SYS_accept4,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_setsockopt,
        libc::SYS_getsockopt,
        // Removing the control socket at the end: refused by the
        // directory's permissions (the supervisor removes it).
        libc::SYS_unlinkat,
        libc::SYS_tgkill,
        // The SIGSYS reporter kills its own process.
        libc::SYS_kill,
        libc::SYS_restart_syscall,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_poll, libc::SYS_accept, libc::SYS_unlink]);
    v
}

/// Formats the line the SIGSYS handler writes, without allocating.
fn sigsys_line(nr: i32, buf: &mut [u8; 96]) -> usize {
    let head = b"gpu-hostmem-ioreqd: seccomp: system call ";
    let tail = b" is not allowed: killed\n";
    let mut n = 0;
    for b in head {
        buf[n] = *b;
        n += 1;
    }
    let mut digits = [0u8; 12];
    let mut d = 0;
    let neg = nr < 0;
    let mut v = nr.unsigned_abs();
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        buf[n] = b'-';
        n += 1;
    }
    while d > 0 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    for b in tail {
        buf[n] = *b;
        n += 1;
    }
    n
}

/// SIGSYS from the filter (SECCOMP_RET_TRAP): name the call on stderr,
/// then die of SIGSYS as SECCOMP_RET_KILL_PROCESS would.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // `struct siginfo` on 64-bit Linux: signo, errno, code (3 ints), 4
    // bytes of padding, then `_sigsys { void *call_addr; int syscall; }`.
    const SYSCALL_OFFSET: usize = 24;
    let mut buf = [0u8; 96];
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers;
    // for a seccomp SIGSYS the int at SYSCALL_OFFSET is the call number.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let n = sigsys_line(nr, &mut buf);
    // SAFETY: write(2), signal(2) and kill(2) are async-signal-safe and
    // allowed by the filter; the buffer is a live local.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        libc::kill(libc::getpid(), libc::SIGSYS);
    }
}

/// Installs [`on_sigsys`] for SIGSYS.
fn install_sigsys_reporter() -> Result<(), String> {
    // SAFETY: a zeroed sigaction with an SA_SIGINFO handler of the right
    // signature and an empty mask is a valid argument to sigaction(2).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "sigaction(SIGSYS): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The worker's seccomp filter: the calls of [`allowed`]; anything else
/// traps (SIGSYS: [`on_sigsys`] names the call and kills the process).
pub fn filter() -> Result<BpfProgram, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed().into_iter().map(|nr| (nr, Vec::new())).collect();
    SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
        .and_then(BpfProgram::try_from)
        .map_err(|e| e.to_string())
}

/// Drops to `uid`/`gid` (no supplementary groups; the kernel clears every
/// capability when no uid is 0 any more) and installs [`filter`] on every
/// thread (libxenstore's watch thread included), with no_new_privs.
pub fn enter(uid: libc::uid_t, gid: libc::gid_t) -> Result<(), String> {
    let prog = filter()?;
    install_sigsys_reporter()?;
    // No parent-death signal to set again after the drop: the worker
    // outlives a killed supervisor (supervisor.rs).
    gpu_hostmem_host::users::drop_to(uid, gid)?;
    seccompiler::apply_filter_all_threads(&prog).map_err(|e| format!("seccomp: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sigsys_line_names_the_call() {
        let mut buf = [0u8; 96];
        for (nr, want) in [(110, "110"), (0, "0"), (-1, "-1"), (i32::MAX, "2147483647")] {
            let n = sigsys_line(nr, &mut buf);
            let s = std::str::from_utf8(&buf[..n]).expect("utf8");
            assert_eq!(
                s,
                format!("gpu-hostmem-ioreqd: seccomp: system call {want} is not allowed: killed\n")
            );
        }
    }

    #[test]
    fn filter_builds_for_this_architecture() {
        let prog = filter().expect("filter");
        // A jump table over every allowed call, then the default action.
        assert!(prog.len() > allowed().len(), "{} instructions", prog.len());
    }

    #[test]
    fn run_as_is_checked() {
        assert_eq!(resolve("root"), Ok(None));
        assert_eq!(resolve("65534:65534"), Ok(Some((65534, 65534))));
        assert!(resolve("0:5").is_err());
        assert!(resolve("5:0").is_err());
        assert!(resolve("x:y").is_err());
        assert!(resolve("no-such-user-gpu-hostmem").is_err());
        if let Some((u, _)) = gpu_hostmem_host::users::lookup_user("nobody") {
            assert_ne!(u, 0);
        }
    }

    /// What the worker's loop does with std, after [`enter`] in a child
    /// process (as root only: the drop needs it): poll, accept on a
    /// non-blocking unix socket and answer a client, pwrite to a file
    /// opened before, sleep, clock, stderr, allocate, unlink refused by
    /// permissions. None of it may be killed by the filter.
    #[test]
    fn the_loop_runs_under_the_drop_and_the_filter() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        use std::os::unix::net::{UnixListener, UnixStream};
        // SAFETY: geteuid(2) has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to drop privileges");
            return;
        }
        let dir = std::env::temp_dir().join(format!("gh-sandbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let sock = dir.join("s.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let file = std::fs::File::create(dir.join("pci")).expect("file");
        // SAFETY: fork(2); the child exits with _exit and never returns
        // into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let run = || -> Result<(), String> {
                // The client is not the worker: it connects before.
                let mut client = UnixStream::connect(&sock).map_err(|e| e.to_string())?;
                enter(65534, 65534)?;
                client.write_all(b"status\n").map_err(|e| e.to_string())?;
                let mut fds = [libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: one live pollfd.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
                let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
                    .map_err(|e| e.to_string())?;
                let mut line = [0u8; 7];
                s.read_exact(&mut line).map_err(|e| e.to_string())?;
                s.write_all(b"{}\n").map_err(|e| e.to_string())?;
                file.write_all_at(b"04=00000002\n", 0)
                    .map_err(|e| e.to_string())?;
                let t = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_millis(2));
                let v: Vec<u64> = (0..100_000).collect();
                eprintln!("sandboxed child: {} after {:?}", v.len(), t.elapsed());
                // Refused by the directory's owner, not killed.
                let _ = std::fs::remove_file(&sock);
                Ok(())
            };
            let code = match run() {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("sandboxed child: {e}");
                    3
                }
            };
            // SAFETY: _exit(2) ends the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waitpid(2) on our child with a live status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(r, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x} (signal {})",
            libc::WTERMSIG(status)
        );
    }

    /// The filter, installed in a child process: an allowed call works, a
    /// call outside the list (getppid) kills it with SIGSYS.
    #[test]
    fn a_call_outside_the_list_kills_with_sigsys() {
        let prog = filter().expect("filter");
        // SAFETY: fork(2); the child only makes raw system calls and
        // exits, never returning into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = match install_sigsys_reporter()
                .and_then(|()| seccompiler::apply_filter(&prog).map_err(|e| e.to_string()))
            {
                Ok(()) => {
                    // SAFETY: raw system calls with integer arguments.
                    unsafe {
                        libc::getpid();
                        libc::syscall(libc::SYS_getppid);
                        libc::_exit(0)
                    }
                }
                Err(_) => 2,
            };
            // SAFETY: _exit(2) ends the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waitpid(2) on our child with a live status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}

//! The renderer's seccomp filters, one per backend, applied once the
//! backend is set up and before the first request from the device is read.
//! Anything outside the filter kills the process (SIGSYS), which its
//! supervisor logs when it reaps it; the kernel then revokes every page
//! lent from its blobs (owner exit). The filter covers every thread of the
//! process (`SECCOMP_FILTER_FLAG_TSYNC`), so a thread a library started
//! during setup is no way around it.
//!
//! - [`BackendKind::Test`]: the calls the protocol loop makes (the socket,
//!   blob memory, the privcmd ioctls, logging, allocation, exit).
//! - [`BackendKind::Venus`]: the same, plus what libvirglrenderer 1.1 does
//!   while serving venus contexts and blob_id 0 blobs and at its cleanup,
//!   measured with `strace -f` (docs/virtio-gpu.md): `getsockopt` and
//!   `lseek` on its own fds, and `kill(server, SIGKILL)` +
//!   `waitid(P_PID, server)` of the render server it forked during
//!   `virgl_renderer_init` (`proxy_server_destroy`), only for that pid and
//!   that signal: the renderer runs as a user other processes may share
//!   (nobody by default), so it may not signal or reap anything else.
//!   Loading the library, `virgl_renderer_init`, the render server's fork
//!   and the library's Vulkan allocator (its instance and device in this
//!   process: the Vulkan loader's manifests, the driver, its threads; see
//!   `virgl.rs`) all happen before the filter, which then covers the
//!   driver's threads too. Mapping a host-visible (OPAQUE) blob under it
//!   imports the blob's fd into that device: `fcntl` (dup), `lseek`,
//!   `read`, `mmap` on lavapipe, none of them new here. A DMABUF blob
//!   (lavapipe with `/dev/udmabuf`, or a GPU driver's buffer) needs nothing
//!   new either: the library dups the fd to export it (`fcntl`), maps it
//!   with `mmap(fd, 0)` and unmaps it with `munmap` (virglrenderer 1.1's
//!   `virgl_renderer_resource_map`); no dma-buf or udmabuf ioctl is made
//!   in this process (the render server's worker makes the udmabufs).

use std::collections::BTreeMap;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The renderer's backend, as `--backend` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The test-only capset (memfds of the renderer's own).
    Test,
    /// Venus through libvirglrenderer.
    Venus,
}

impl BackendKind {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Test => "test",
            BackendKind::Venus => "venus",
        }
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "test" => Ok(BackendKind::Test),
            "venus" => Ok(BackendKind::Venus),
            _ => Err(format!("unknown backend {s:?} (test or venus)")),
        }
    }
}

/// The calls every backend's loop makes (`ppoll`: the loop waits for the
/// device's socket and the contexts' fence fds at once).
pub fn allowed() -> Vec<libc::c_long> {
    vec![
        libc::SYS_ppoll,
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_memfd_create,
        libc::SYS_ftruncate,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_ioctl,
        libc::SYS_fcntl,
        libc::SYS_futex,
        libc::SYS_getrandom,
        libc::SYS_clock_gettime,
        libc::SYS_sched_yield,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]
}

/// What the venus backend adds without conditions (measured; see the
/// module's notes). `kill` and `waitid` come with conditions
/// ([`Policy::venus`]).
///
/// For fences (read in virglrenderer 1.1's `proxy_context.c` and
/// `virgl_util.c`, not measured with strace): with `THREAD_SYNC` each
/// venus context makes an eventfd at creation (`eventfd(0, EFD_CLOEXEC |
/// EFD_NONBLOCK)`, `eventfd2`), and a fence poll that sees no progress
/// checks the render server's socket with `poll(fd, 1, 0)`
/// (`proxy_socket_is_connected`; glibc's `poll` is `SYS_poll` on x86_64,
/// `ppoll` elsewhere, which every backend allows).
pub fn venus_allowed() -> Vec<libc::c_long> {
    #[allow(unused_mut)] // x86_64 adds to it
    let mut v = vec![libc::SYS_getsockopt, libc::SYS_lseek, libc::SYS_eventfd2];
    #[cfg(target_arch = "x86_64")]
    v.push(libc::SYS_poll);
    v
}

/// A filter: the calls allowed, some only with given arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    kind: BackendKind,
    /// The render server the venus backend may kill and reap.
    render_server: Option<libc::pid_t>,
}

impl Policy {
    /// The test backend's filter.
    pub fn test() -> Self {
        Policy {
            kind: BackendKind::Test,
            render_server: None,
        }
    }

    /// The venus backend's filter, for render server `pid` (> 0).
    pub fn venus(render_server: libc::pid_t) -> Result<Self, String> {
        if render_server <= 0 {
            return Err(format!("render server pid {render_server}"));
        }
        Ok(Policy {
            kind: BackendKind::Venus,
            render_server: Some(render_server),
        })
    }

    /// The filter for `kind` in this process as it is now: for venus, the
    /// render server is this process's only child (forked by
    /// `virgl_renderer_init`); none, or more than one, is an error.
    pub fn for_this_process(kind: BackendKind) -> Result<Self, String> {
        match kind {
            BackendKind::Test => Ok(Policy::test()),
            BackendKind::Venus => {
                // SAFETY: getpid cannot fail.
                let me = unsafe { libc::getpid() };
                match children_of(me)?.as_slice() {
                    [one] => Policy::venus(*one),
                    other => Err(format!(
                        "venus: expected the render server as the only child, found {other:?}"
                    )),
                }
            }
        }
    }

    /// The backend.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The render server the filter lets this process kill and reap.
    pub fn render_server(&self) -> Option<libc::pid_t> {
        self.render_server
    }

    fn rules(&self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
        let mut calls = allowed();
        if self.kind == BackendKind::Venus {
            calls.extend(venus_allowed());
        }
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
            calls.into_iter().map(|nr| (nr, Vec::new())).collect();
        if let Some(pid) = self.render_server {
            let eq = |arg: u8, v: u64| {
                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                    .map_err(|e| e.to_string())
            };
            let pid = u64::from(pid as u32);
            let kill = SeccompRule::new(vec![eq(0, pid)?, eq(1, libc::SIGKILL as u64)?])
                .map_err(|e| e.to_string())?;
            let waitid = SeccompRule::new(vec![eq(0, libc::P_PID as u64)?, eq(1, pid)?])
                .map_err(|e| e.to_string())?;
            rules.insert(libc::SYS_kill, vec![kill]);
            rules.insert(libc::SYS_waitid, vec![waitid]);
        }
        Ok(rules)
    }
}

/// The pids whose parent is `pid`, from `/proc/*/stat`.
pub fn children_of(pid: libc::pid_t) -> Result<Vec<libc::pid_t>, String> {
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // Gone meanwhile: not a child any more.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold anything but ends at
        // the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<libc::pid_t>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Installs `policy`'s filter on every thread of this process, with
/// no_new_privs.
pub fn enter(policy: &Policy) -> Result<(), String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let prog: BpfProgram = SeccompFilter::new(
        policy.rules()?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| e.to_string())?;
    seccompiler::apply_filter_all_threads(&prog).map_err(|e| format!("seccomp: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_by_name() {
        assert_eq!("test".parse(), Ok(BackendKind::Test));
        assert_eq!("venus".parse(), Ok(BackendKind::Venus));
        for bad in ["", "Venus", "virgl", "venus "] {
            assert!(bad.parse::<BackendKind>().is_err(), "{bad:?}");
        }
        assert_eq!(BackendKind::Venus.name(), "venus");
    }

    #[test]
    fn only_venus_gets_its_calls_and_only_for_its_server() {
        let t = Policy::test().rules().expect("rules");
        for nr in [
            libc::SYS_getsockopt,
            libc::SYS_lseek,
            libc::SYS_kill,
            libc::SYS_waitid,
        ] {
            assert!(!t.contains_key(&nr), "{nr} in the test filter");
        }
        let v = Policy::venus(1234).expect("policy").rules().expect("rules");
        assert!(v[&libc::SYS_lseek].is_empty() && v[&libc::SYS_getsockopt].is_empty());
        assert_eq!(v[&libc::SYS_kill].len(), 1, "kill only with conditions");
        assert_eq!(v[&libc::SYS_waitid].len(), 1, "waitid only with conditions");
        for nr in [
            libc::SYS_openat,
            libc::SYS_clone,
            libc::SYS_execve,
            libc::SYS_ptrace,
        ] {
            assert!(!v.contains_key(&nr), "{nr} in the venus filter");
        }
        assert!(Policy::venus(0).is_err() && Policy::venus(-1).is_err());
    }

    #[test]
    fn children_are_found_by_parent() {
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let kids = children_of(me).expect("children");
        assert!(kids.contains(&(c.id() as libc::pid_t)), "{kids:?}");
        let _ = c.kill();
        let _ = c.wait();
        assert!(!children_of(me)
            .expect("children")
            .contains(&(c.id() as libc::pid_t)));
    }
}

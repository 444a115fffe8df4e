//! The renderer's seccomp filter for the test capset: the calls its loop
//! makes (the socket, blob memory, the privcmd ioctls, logging,
//! allocation, exit). Anything else kills the process (SIGSYS), which its
//! supervisor logs when it reaps it; the kernel then revokes every page
//! lent from its blobs (owner exit). A renderer that links virglrenderer
//! will need a wider filter of its own (docs/virtio-gpu.md).

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
use std::collections::BTreeMap;

/// The calls allowed once serving.
pub fn allowed() -> Vec<libc::c_long> {
    vec![
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

/// Installs the filter on this (only) thread, with no_new_privs.
pub fn enter() -> Result<(), String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed().into_iter().map(|nr| (nr, Vec::new())).collect();
    let prog: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| e.to_string())?;
    seccompiler::apply_filter(&prog).map_err(|e| format!("seccomp: {e}"))
}

//! The binary's refusals: a wrong command line, root, and missing or wrong
//! inherited files, each with a message and a failure status, before it
//! touches anything.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-hostmem-renderer"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run gpu-hostmem-renderer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn refuses_a_wrong_command_line() {
    for args in [
        &[][..],
        &["--socket-fd"],
        &["--socket-fd", "x"],
        &["--other", "3"],
    ] {
        let (ok, err) = run(args, &[]);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("usage: gpu-hostmem-renderer --socket-fd N") || err.contains("bad fd"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn refuses_root_or_a_missing_privcmd_file_or_socket() {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let (ok, err) = run(&["--socket-fd", "3"], &[]);
    assert!(!ok);
    if root {
        assert!(err.contains("refusing to run as root"), "{err}");
        return;
    }
    assert!(err.contains("GPU_HOSTMEM_DOMID is not set"), "{err}");
    let env = [
        ("GPU_HOSTMEM_DOMID", "5"),
        ("GPU_HOSTMEM_UNIQUE_ID", "7"),
        ("GPU_HOSTMEM_PRIVCMD_FD", "2"),
    ];
    let (ok, err) = run(&["--socket-fd", "3"], &env);
    assert!(!ok);
    assert!(err.contains("fd 2 is a standard stream"), "{err}");
    let env = [
        ("GPU_HOSTMEM_DOMID", "5"),
        ("GPU_HOSTMEM_UNIQUE_ID", "7"),
        ("GPU_HOSTMEM_PRIVCMD_FD", "40"),
    ];
    let (ok, err) = run(&["--socket-fd", "3"], &env);
    assert!(!ok);
    assert!(err.contains("fd 40"), "{err}");
}

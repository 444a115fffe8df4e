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
        &["--socket-fd", "3", "--backend"],
        &["--backend", "venus", "--socket-fd", "3"],
        &["--socket-fd", "3", "--backend", "vulkan"],
        &["--socket-fd", "3", "--backend", "Venus"],
    ] {
        let (ok, err) = run(args, &[]);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("usage: gpu-hostmem-renderer --socket-fd N [--backend test|venus]")
                || err.contains("bad fd")
                || err.contains("unknown backend"),
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

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Starts the binary as the supervisor does (nobody when we are root, fd
/// 3 its socket, fd 4 a stand-in privcmd file) with `extra` arguments;
/// the child (stderr piped), the device's end and the copy it runs.
fn start(
    extra: &[&str],
) -> (
    std::process::Child,
    std::os::fd::OwnedFd,
    gpu_hostmem_test_support::ExeCopy,
) {
    use gpu_hostmem_test_support::{seqpacket_pair, ExeCopy};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::path::Path;

    // Each start its own files: tests run in parallel.
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (dev, ren) = seqpacket_pair().expect("socketpair");
    let privcmd = std::fs::File::create(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("renderer-privcmd-{}-{n}", std::process::id())),
    )
    .expect("stand-in privcmd");
    let (s, p) = (ren.as_raw_fd(), privcmd.as_raw_fd());
    // As root the binary runs as nobody: run a copy it can reach.
    let exe = ExeCopy::new(
        Path::new(env!("CARGO_BIN_EXE_gpu-hostmem-renderer")),
        &format!("gh-renderer-bin-{n}"),
    )
    .expect("copy the renderer");
    let mut cmd = Command::new(exe.path());
    cmd.args(["--socket-fd", "3"])
        .args(extra)
        .env_clear()
        .env("GPU_HOSTMEM_DOMID", "5")
        .env("GPU_HOSTMEM_UNIQUE_ID", "7")
        .env("GPU_HOSTMEM_PRIVCMD_FD", "4")
        .stderr(std::process::Stdio::piped());
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    // SAFETY: in the child before exec: fcntl and dup2 only, on open fds.
    unsafe {
        cmd.pre_exec(move || {
            let hs = libc::fcntl(s, libc::F_DUPFD_CLOEXEC, 64);
            let hp = libc::fcntl(p, libc::F_DUPFD_CLOEXEC, 64);
            if hs < 0 || hp < 0 || libc::dup2(hs, 3) < 0 || libc::dup2(hp, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = gpu_hostmem_test_support::spawn_exe(&mut cmd).expect("spawn the renderer");
    (child, dev, exe)
}

/// Waits at most 10 s for `child`; its status and stderr.
fn finish(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    use std::time::{Duration, Instant};
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the renderer did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    (status, err)
}

/// `--backend venus` where libvirglrenderer is missing: a clean failure
/// naming it, before any request is read. Where the library is present,
/// the binary gets to serving under its filter instead.
#[test]
fn the_venus_backend_needs_its_library() {
    use gpu_hostmem_renderer::virgl::SONAME;
    use gpu_hostmem_virtio_gpu::renderer_proto::SocketRenderer;
    use std::os::unix::net::UnixDatagram;

    // SAFETY: loading the library runs its constructors, as the binary
    // would; only to learn whether it is there.
    let present = unsafe { libloading::Library::new(SONAME) }.is_ok();
    let (child, dev, _exe) = start(&["--backend", "venus"]);
    if present {
        let r = SocketRenderer::connect(UnixDatagram::from(dev)).expect("hello");
        drop(r);
        let (status, err) = finish(child);
        assert!(status.success(), "{status}: {err}");
        assert!(err.contains("backend=\"venus\""), "{err}");
    } else {
        let (status, err) = finish(child);
        assert!(!status.success(), "{err}");
        assert!(
            err.contains("venus backend: loading libvirglrenderer.so.1"),
            "{err}"
        );
        drop(dev);
    }
}

/// The binary as the supervisor starts it: it answers the protocol under
/// its seccomp filter, makes and frees blobs, passes privcmd's refusal on,
/// and exits cleanly when the device goes; `--backend test` is the
/// default.
#[test]
fn serves_under_its_seccomp_filter_until_the_device_goes() {
    for extra in [&[][..], &["--backend", "test"]] {
        serves_until_the_device_goes(extra);
    }
}

fn serves_until_the_device_goes(extra: &[&str]) {
    use gpu_hostmem_virtio_gpu::blob::TEST_CAPSET_ID;
    use gpu_hostmem_virtio_gpu::renderer::{BlobRequest, Renderer, RendererError};
    use gpu_hostmem_virtio_gpu::renderer_proto::SocketRenderer;
    use std::os::unix::net::UnixDatagram;

    let (child, dev, _exe) = start(extra);
    let mut r = SocketRenderer::connect(UnixDatagram::from(dev)).expect("hello");
    let seccomp = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim().to_string()));
    assert_eq!(seccomp.as_deref(), Some("2"), "serving under a filter");
    r.create_context(1, TEST_CAPSET_ID).expect("context");
    let req = |id| BlobRequest {
        ctx_id: 1,
        capset: TEST_CAPSET_ID,
        resource_id: id,
        blob_id: 0,
        size: 1 << 20,
    };
    let h = r.create_blob(req(5)).expect("blob");
    match r.map_blob(h, 0) {
        Err(RendererError::Refused { errno, .. }) => assert_eq!(errno, libc::ENOTTY),
        other => panic!("map on a file that is not privcmd: {other:?}"),
    }
    r.destroy_blob(h).expect("destroy");
    r.create_blob(req(6))
        .expect("a blob left for the disconnect");
    drop(r);
    let (status, err) = finish(child);
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("serving the device (seccomp filter on)"),
        "{err}"
    );
    assert!(err.contains("blob created"), "{err}");
    assert!(err.contains("the device closed the connection"), "{err}");
}

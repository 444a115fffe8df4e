//! gpu-hostmem-ioreqd as a process, against the fake Xen of
//! plugin/xen/tests/fake (loaded through LD_LIBRARY_PATH, and preloaded to
//! answer the privcmd ioctls): the setup stages, the xenstore record,
//! the control socket, SIGTERM, the domain's death (asked of Xen), and
//! refused setups. No Xen needed.

use gpu_hostmem_core::status::Status;
use gpu_hostmem_host::control;
use gpu_hostmem_test_support::ExeCopy;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const UUID: &str = "0a0b0c0d-0e0f-1011-1213-141516171819";
const UUID_HEX: &str = "0a0b0c0d0e0f10111213141516171819";

/// The fake libraries, built once.
fn fake_libdir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xen/tests/fake/fakexen.c");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ioreqd-fakexen-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        let so = dir.join("libfakexen.so");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let st = Command::new(cc)
            .args(["-shared", "-fPIC", "-w", "-o"])
            .arg(&so)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("a C compiler (cc) is needed for this test");
        assert!(st.success(), "building the fake Xen library failed");
        for soname in [
            "libxenstore.so.4",
            "libxendevicemodel.so.1",
            "libxenforeignmemory.so.1",
            "libxenevtchn.so.1",
            "libxenctrl.so.4.20",
        ] {
            symlink(&so, dir.join(soname)).expect("symlink");
        }
        dir
    })
}

/// One run of the daemon in its own directory.
struct Run {
    dir: PathBuf,
    domid: u16,
    child: Child,
    /// A worker started directly (`--worker`): our end of its report
    /// socket, as a supervisor holds it.
    report: Option<UnixStream>,
}

impl Run {
    fn start(name: &str, domid: u16, uuid: &str, retry: bool) -> Run {
        Run::start_with(name, domid, uuid, retry, &[])
    }

    fn start_with(name: &str, domid: u16, uuid: &str, retry: bool, extra: &[&str]) -> Run {
        Run::start_config(name, domid, uuid, retry, extra, "")
    }

    /// `config` is added to the configuration file.
    fn start_config(
        name: &str,
        domid: u16,
        uuid: &str,
        retry: bool,
        extra: &[&str],
        config: &str,
    ) -> Run {
        let lib = fake_libdir();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ioreqd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for d in ["xs", "run"] {
            fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        fs::write(dir.join("privcmd"), b"").expect("privcmd marker");
        // The fake xenstore is a directory tree: it needs file system
        // calls that the worker's seccomp filter (rightly) forbids.
        fs::write(dir.join("config.yaml"), format!("run_as: root\n{config}")).expect("config");
        let privcmd = dir.join("privcmd").canonicalize().expect("canonical");
        let log = fs::File::create(dir.join("ioreqd.log")).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpu-hostmem-ioreqd"));
        cmd.args([
            "--domid",
            &domid.to_string(),
            "--uuid",
            uuid,
            "--bar-size-mib",
            "64",
            "--config",
        ])
        .arg(dir.join("config.yaml"))
        .args(extra)
        .env("LD_LIBRARY_PATH", lib)
        .env("LD_PRELOAD", lib.join("libfakexen.so"))
        .env("FAKEXS_ROOT", dir.join("xs"))
        .env("FAKE_DOMID", domid.to_string())
        .env("FAKE_UUID", UUID_HEX)
        .env("GPU_HOSTMEM_PRIVCMD", &privcmd)
        .env("FAKE_PRIVCMD", &privcmd)
        .env("FAKE_PRIVCMD_LOG", dir.join("privcmd.log"))
        .env("FAKE_XC_LOG", dir.join("xc.log"))
        .env("GPU_HOSTMEM_RUN_DIR", dir.join("run"))
        .env("GPU_HOSTMEM_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
        if retry {
            cmd.env("FAKE_RETRY", "1");
        }
        let mut report = None;
        if extra.contains(&"--worker") {
            let (ours, theirs) = UnixStream::pair().expect("socketpair");
            let fd = theirs.as_raw_fd();
            // SAFETY: dup2(2) in the forked child before exec, on an fd
            // open there; async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            report = Some(ours);
            let child = cmd.spawn().expect("spawn gpu-hostmem-ioreqd");
            drop(theirs);
            return Run {
                dir,
                domid,
                child,
                report,
            };
        }
        let child = cmd.spawn().expect("spawn gpu-hostmem-ioreqd");
        Run {
            dir,
            domid,
            child,
            report,
        }
    }

    fn key(&self, k: &str) -> Option<String> {
        fs::read_to_string(self.record().join(k).join(".value")).ok()
    }

    fn record(&self) -> PathBuf {
        self.dir
            .join(format!("xs/local/domain/0/gpu-hostmem/{}", self.domid))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("ioreqd.log")).unwrap_or_default()
    }

    fn wait_state(&self, want: &str) {
        let t = Instant::now();
        while self.key("state").as_deref() != Some(want) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "state {:?}, expected {want}; log:\n{}",
                self.key("state"),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the daemon's log contains `needle`, at most `within`.
    #[track_caller]
    fn wait_log(&self, needle: &str, within: Duration) {
        let t = Instant::now();
        while !self.log().contains(needle) {
            assert!(t.elapsed() < within, "log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                panic!("gpu-hostmem-ioreqd did not exit; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // The worker and the renderer outlive a killed supervisor by
        // design: a test that fails before its own teardown must not leave
        // them running. Taken before the supervisor goes (they are its
        // children until then), killed after it (it cannot restart them).
        let kids = children_of(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in kids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn sigterm(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

#[test]
fn runs_reports_and_stops_on_sigterm() {
    let mut r = Run::start("term", 41, UUID, true);
    r.wait_state("running");
    assert_eq!(r.key("uuid").as_deref(), Some(UUID));
    assert_eq!(r.key("pid"), Some(r.child.id().to_string()));
    assert_eq!(r.key("ioservid").as_deref(), Some("3"));
    assert_eq!(r.key("bdf").as_deref(), Some("0000:00:05.0"));
    assert_eq!(r.key("bar-size").as_deref(), Some("67108864"));
    assert_eq!(r.key("bar-base").as_deref(), Some("unmapped"));
    // hvmloader's hint (xen-patches 0012): slot 5, function 0 is devfn 0x28.
    let hint = r
        .dir
        .join("xs/local/domain/41/hvmloader/pci/wb-bar-devfns/.value");
    assert_eq!(fs::read_to_string(hint).ok().as_deref(), Some("0x28"));
    let sock = PathBuf::from(r.key("control").expect("control key"));
    assert_eq!(sock, r.dir.join("run/41.sock"));

    let reply =
        control::request(&sock, control::REQUEST_STATUS, Duration::from_secs(5)).expect("status");
    let st: Status = serde_json::from_str(&reply).expect("status JSON");
    assert_eq!(
        (st.domid, st.state.as_str(), st.ioservid),
        (41, "running", Some(3))
    );
    assert_eq!((st.bar_base, st.bar_size), (None, 64 << 20));
    // The fake's unique id: the first 8 bytes of the handle, little endian.
    assert_eq!(st.unique_id, 0x1110_0f0e_0d0c_0b0a);
    assert_eq!(r.key("unique-id").as_deref(), Some("1229499251294997258"));

    // Least privilege: the worker restricts its privcmd file to the
    // guest (the supervisor restricts its own too: the line must be the
    // worker's); it holds no xenctrl handle (its privcmd fd would allow
    // every hypercall of dom0); its identity checks go through the
    // restricted device-model handle.
    let w = wait_worker(&r, None);
    let privcmd = fs::read_to_string(r.dir.join("privcmd.log")).unwrap_or_default();
    for pid in [w, r.child.id()] {
        assert!(
            privcmd.contains(&format!("restrict dom=41 pid={pid}\n")),
            "privcmd of {pid} restricted: {privcmd}"
        );
    }
    let xc = fs::read_to_string(r.dir.join("xc.log")).unwrap_or_default();
    let held = |open: &str, close: &str| {
        xc.lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, pid)| *pid == w.to_string())
            .fold(0i32, |n, (what, _)| {
                n + i32::from(what == open) - i32::from(what == close)
            })
    };
    assert!(
        xc.lines().any(|l| l == format!("open {w}")),
        "the worker checked with xenctrl first: {xc}"
    );
    assert_eq!(
        held("open", "close"),
        0,
        "xenctrl handles the worker {w} holds: {xc}"
    );
    // Nor a xenstore connection: it reports to the supervisor, which
    // writes the record (the hvmloader hint's connection is closed).
    assert!(
        xc.lines().any(|l| l == format!("xs-open {w}")),
        "the worker wrote the hint: {xc}"
    );
    assert_eq!(
        held("xs-open", "xs-close"),
        0,
        "xenstore connections of the worker {w}: {xc}"
    );
    assert!(r.log().contains("no xenctrl handle kept"), "{}", r.log());

    sigterm(r.child.id());
    let status = r.wait_exit();
    let log = r.log();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert!(!r.record().exists(), "record removed; log:\n{log}");
    assert!(!sock.exists(), "control socket removed");
    let privcmd = fs::read_to_string(r.dir.join("privcmd.log")).unwrap_or_default();
    assert!(
        privcmd.contains("revoke dom=41 flags=1"),
        "every lent page revoked: {privcmd}"
    );
    assert!(log.contains("reason=SIGTERM"), "{log}");
}

/// `device: virtio-gpu`: the server runs with the virtio-gpu model (its
/// status has the model's line, nothing driven yet) and stops cleanly.
#[test]
fn serves_the_virtio_gpu_device_when_configured() {
    let mut r = Run::start_config("vgpu", 47, UUID, true, &[], "device: virtio-gpu\n");
    r.wait_state("running");
    let sock = PathBuf::from(r.key("control").expect("control key"));
    let reply =
        control::request(&sock, control::REQUEST_STATUS, Duration::from_secs(5)).expect("status");
    let st: Status = serde_json::from_str(&reply).expect("status JSON");
    let model = st.device.expect("a model line");
    assert!(model.starts_with("virtio-gpu status 0x00,"), "{model}");
    assert!(
        r.log().contains("device: virtio-gpu (1af4:1050)"),
        "{}",
        r.log()
    );
    sigterm(r.child.id());
    let status = r.wait_exit();
    assert!(status.success(), "exit {status}; log:\n{}", r.log());
}

/// A device the server does not know fails the start, naming the key.
#[test]
fn refuses_an_unknown_device() {
    let mut r = Run::start_config("vgpu-bad", 48, UUID, true, &[], "device: virtio_gpu\n");
    let status = r.wait_exit();
    assert!(!status.success());
    let state = r.key("state").unwrap_or_default();
    let log = r.log();
    assert!(
        state.contains("device") || log.contains("key `device`"),
        "state {state:?}; log:\n{log}"
    );
    assert!(!log.contains("creating ioreq server"), "{log}");
}

#[test]
fn stops_when_the_domain_is_released() {
    let mut r = Run::start("release", 42, UUID, true);
    r.wait_state("running");
    // The domain dies: it disappears from xc_domain_getinfolist, and the
    // @releaseDomain watch fires.
    fs::write(r.dir.join("xs/.gone"), b"").expect("gone");
    fs::write(r.dir.join("xs/.release"), b"").expect("release");
    let status = r.wait_exit();
    let log = r.log();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert!(log.contains("reason=domain gone"), "{log}");
    assert!(!r.record().exists(), "record removed; log:\n{log}");
    // The domain is gone: nothing is revoked on its domid (I5).
    let privcmd = fs::read_to_string(r.dir.join("privcmd.log")).unwrap_or_default();
    assert!(!privcmd.contains("revoke"), "{privcmd}");
}

#[test]
fn refuses_another_domain() {
    let mut r = Run::start("uuid", 43, "ffffffff-0e0f-1011-1213-141516171819", true);
    let status = r.wait_exit();
    assert!(!status.success());
    let state = r.key("state").unwrap_or_default();
    assert!(state.starts_with("failed: domain identity:"), "{state}");
    assert!(
        state.contains("refusing to serve another domain"),
        "{state}"
    );
}

/// A renderer that cannot be started fails the first setup with the
/// reason, as libxl sees it, and nothing is left running.
#[test]
fn a_renderer_that_cannot_start_fails_the_setup() {
    let cfg = "device: virtio-gpu\nvirtio_gpu:\n  renderer: /nonexistent/gpu-hostmem-renderer\n  test_capset: true\n";
    let mut r = Run::start_config("renderer-missing", 50, UUID, true, &[], cfg);
    let status = r.wait_exit();
    assert!(!status.success(), "{status}; log:\n{}", r.log());
    let state = r.key("state").unwrap_or_default();
    assert!(
        state.starts_with("failed: start renderer: "),
        "{state}; log:\n{}",
        r.log()
    );
    let log = r.log();
    assert!(
        log.contains("supervisor: cannot start the renderer"),
        "{log}"
    );
    assert!(!log.contains("worker started"), "{log}");
}

/// A worker serves only the instance its supervisor resolved (by Xen's
/// unique id): started for another instance of the domid (same UUID, as
/// xl keeps it across a reboot), it refuses before creating anything.
#[test]
fn a_worker_refuses_another_instance_of_its_domid() {
    let mut r = Run::start_with(
        "instance",
        46,
        UUID,
        true,
        &["--worker", "--unique-id", "7"],
    );
    let status = r.wait_exit();
    assert!(!status.success());
    // The worker reports to its supervisor (here: us), never to xenstore.
    let mut said = String::new();
    r.report
        .take()
        .expect("report socket")
        .read_to_string(&mut said)
        .expect("read reports");
    assert!(said.starts_with("failed domain identity:"), "{said}");
    assert!(said.contains("not instance 7"), "{said}");
    assert_eq!(r.key("state"), None, "no record written by the worker");
    let log = r.log();
    assert!(!log.contains("creating ioreq server"), "{log}");
}

#[test]
fn fails_cleanly_without_retry_support() {
    // A hypervisor without the RETRY flag: setup stops at the first stage
    // of the ioreq server and says so.
    let mut r = Run::start("noretry", 44, UUID, false);
    let status = r.wait_exit();
    assert!(!status.success());
    let state = r.key("state").unwrap_or_default();
    assert!(state.contains("CreateServer"), "{state}");
    assert!(state.contains("EINVAL"), "{state}");
    assert!(
        !r.dir.join("run/44.sock").exists(),
        "control socket removed"
    );
}

/// The living (not zombie) children of `sup`.
fn children_of(sup: u32) -> Vec<u32> {
    let Ok(d) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    d.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            let mut f = rest.split_whitespace();
            let state = f.next()?;
            let ppid: u32 = f.next()?.parse().ok()?;
            (ppid == sup && state != "Z").then_some(pid)
        })
        .collect()
}

/// The supervisor's worker child (the server itself), if one runs.
fn worker_of(sup: u32) -> Option<u32> {
    children_of(sup).into_iter().next()
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn sigkill(pid: u32) {
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// Waits for a worker other than `old` (None: any) under `r`'s supervisor.
fn wait_worker(r: &Run, old: Option<u32>) -> u32 {
    let t = Instant::now();
    loop {
        if let Some(w) = worker_of(r.child.id()).filter(|w| Some(*w) != old) {
            return w;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no new worker after {old:?}; log:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 16: a SIGKILLed worker is restarted with --attach on the same
/// ioreq server (no new one is created), the record counts the restart
/// and stays `running`; after more deaths than the bound the supervisor
/// gives up, says so in the record, keeps the guest's accesses answered
/// (fallback) and still stops and cleans up on SIGTERM.
#[test]
fn restarts_a_killed_worker_then_gives_up_after_the_bound() {
    let mut r = Run::start("restart", 45, UUID, true);
    r.wait_state("running");
    let sup = r.child.id();
    let w1 = wait_worker(&r, None);
    assert!(cmdline(w1).contains("--worker"), "{}", cmdline(w1));
    assert!(!cmdline(w1).contains("--attach"));

    sigkill(w1);
    let w2 = wait_worker(&r, Some(w1));
    let t = Instant::now();
    while r.key("restarts").as_deref() != Some("1") || !r.log().contains("attached=true") {
        assert!(t.elapsed() < Duration::from_secs(10), "log:\n{}", r.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cmdline(w2).contains("--attach"), "{}", cmdline(w2));
    assert_eq!(r.key("state").as_deref(), Some("running"));
    // The supervisor records the worker just after starting it, while the
    // worker attaches and logs on its own: either may come first.
    let start2 = gpu_hostmem_host::identity::start_time(w2);
    let recorded = |r: &Run| {
        r.key("worker-pid") == Some(w2.to_string())
            && r.key("worker-start").and_then(|s| s.parse().ok()) == start2
    };
    let t = Instant::now();
    while !recorded(&r) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        r.key("worker-pid"),
        Some(w2.to_string()),
        "the record names the restarted worker"
    );
    assert_eq!(r.key("worker-start").and_then(|s| s.parse().ok()), start2);
    assert_eq!(
        r.key("pid"),
        Some(sup.to_string()),
        "the record names the supervisor"
    );
    assert_eq!(r.key("ioservid").as_deref(), Some("3"), "the same server");
    let log = r.log();
    assert_eq!(
        log.matches("creating ioreq server").count(),
        1,
        "no second server was created; log:\n{log}"
    );
    assert!(log.contains("re-attaching"), "{log}");

    // Five more deaths within the window: the sixth is over the bound.
    let mut w = w2;
    for n in 2..=5 {
        sigkill(w);
        w = wait_worker(&r, Some(w));
        let t = Instant::now();
        while r.log().matches("attached=true").count() < n {
            assert!(t.elapsed() < Duration::from_secs(10), "log:\n{}", r.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(r.key("restarts"), Some(n.to_string()));
    }
    sigkill(w);
    let t = Instant::now();
    while !r.key("state").unwrap_or_default().starts_with("failed: ") {
        assert!(t.elapsed() < Duration::from_secs(15), "log:\n{}", r.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = r.key("state").unwrap_or_default();
    assert!(state.contains("given up"), "{state}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(worker_of(sup), None, "no worker after giving up");
    assert!(
        r.child.try_wait().expect("wait").is_none(),
        "the supervisor stays"
    );
    let log = r.log();
    assert!(log.contains("fallback running"), "fallback; log:\n{log}");
    assert!(!log.contains("fallback failed"), "fallback; log:\n{log}");

    sigterm(sup);
    r.wait_exit();
    assert!(!r.record().exists(), "record removed; log:\n{}", r.log());
    assert!(
        !r.dir.join("run/45.sock").exists(),
        "control socket removed"
    );
    assert!(!r.dir.join("run/45.pci").exists(), "PCI state file removed");
}

/// Kills `r`'s worker until the supervisor gives it up: `before_last`
/// runs before the last kill, the one over the bound.
fn kill_until_given_up(r: &Run, before_last: impl FnOnce()) {
    let mut w = wait_worker(r, None);
    for n in 1..=5 {
        sigkill(w);
        w = wait_worker(r, Some(w));
        let t = Instant::now();
        while r.log().matches("attached=true").count() < n {
            assert!(t.elapsed() < Duration::from_secs(10), "log:\n{}", r.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    before_last();
    sigkill(w);
    r.wait_log("giving up the IOREQ server", Duration::from_secs(15));
}

/// Issue 16's fallback must not need anything it could fail to get when
/// it runs: the supervisor opened its Xen handles when it started. Here
/// no Xen handle can be opened any more when the worker is given up (the
/// fake's opens fail with EMFILE from then on): the fallback still runs,
/// and SIGTERM's cleanup still revokes and destroys the server.
#[test]
fn the_fallback_runs_on_handles_opened_at_start() {
    let mut r = Run::start("fallback-handles", 51, UUID, true);
    r.wait_state("running");
    kill_until_given_up(&r, || {
        fs::write(r.dir.join("xs/.no-open"), b"").expect("switch");
    });
    r.wait_log("fallback running", Duration::from_secs(10));
    assert!(
        r.child.try_wait().expect("wait").is_none(),
        "the supervisor stays and answers; log:\n{}",
        r.log()
    );
    sigterm(r.child.id());
    r.wait_exit();
    let log = r.log();
    assert!(!log.contains("fallback failed"), "{log}");
    assert!(!log.contains("cleanup step failed"), "{log}");
    let privcmd = fs::read_to_string(r.dir.join("privcmd.log")).unwrap_or_default();
    assert!(privcmd.contains("destroy dom=51 id=3"), "{privcmd}");
    assert!(privcmd.contains("revoke dom=51 flags=1"), "{privcmd}");
    assert!(!privcmd.contains("shutdown"), "not crashed: {privcmd}");
    assert!(!r.record().exists(), "record removed; log:\n{log}");
}

/// A worker killed between writing its answer (IORESP_READY) and sending
/// the event Xen waits on leaves its vCPU blocked in Xen for good (72's hang
/// in session 19's CI). The give-up fallback sends that event, as a
/// restarted worker does (the simulator's
/// `restarted_server_notifies_an_answer_the_dead_process_wrote`). Here the
/// fake's ioreq page shows such an answer in vCPU 0's slot from the
/// fallback's mapping on.
#[test]
fn the_fallback_notifies_an_answer_the_dead_worker_wrote() {
    let mut r = Run::start("fallback-unsent", 53, UUID, true);
    r.wait_state("running");
    kill_until_given_up(&r, || {
        fs::write(r.dir.join("xs/.answer-unsent"), b"").expect("switch");
    });
    r.wait_log("fallback running", Duration::from_secs(10));
    sigterm(r.child.id());
    r.wait_exit();
    let log = r.log();
    let privcmd = fs::read_to_string(r.dir.join("privcmd.log")).unwrap_or_default();
    // vCPU 0's remote port is 10, bound locally as 110 by the fake.
    assert_eq!(
        privcmd.matches("notify port=110").count(),
        1,
        "one event for the unsent answer: {privcmd}\nlog:\n{log}"
    );
    assert!(
        log.contains("fallback notified the answer the dead worker wrote"),
        "{log}"
    );
    assert!(!log.contains("fallback failed"), "{log}");
    assert!(!privcmd.contains("shutdown"), "not crashed: {privcmd}");
    assert!(!r.record().exists(), "record removed; log:\n{log}");
}

/// A fallback that cannot run (here: Xen refuses to disable the server)
/// may leave a request unanswered, and its vCPU waiting for ever: the
/// supervisor crashes the guest instead, says why, and cleans up.
#[test]
fn a_fallback_that_fails_crashes_the_guest_with_a_reason() {
    let mut r = Run::start("fallback-fails", 52, UUID, true);
    r.wait_state("running");
    kill_until_given_up(&r, || {
        fs::write(r.dir.join("xs/.fail-server-state"), b"").expect("switch");
    });
    let status = r.wait_exit();
    let log = r.log();
    assert!(!status.success(), "exit {status}; log:\n{log}");
    let privcmd = fs::read_to_string(r.dir.join("privcmd.log")).unwrap_or_default();
    assert!(
        privcmd.contains("shutdown dom=52 reason=3"),
        "crashed (SHUTDOWN_crash): {privcmd}\nlog:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("shutting the guest down as crashed"))
        .unwrap_or_else(|| panic!("no crash line; log:\n{log}"));
    assert!(
        line.contains("give-up fallback failed") && line.contains("EIO"),
        "{line}"
    );
    assert!(privcmd.contains("destroy dom=52 id=3"), "{privcmd}");
    assert!(privcmd.contains("revoke dom=52 flags=1"), "{privcmd}");
    assert!(!r.record().exists(), "record removed; log:\n{log}");
}

#[test]
fn shows_xens_retry_counters_and_warns_when_refused_goes_up() {
    let mut r = Run::start("xenretry", 46, UUID, true);
    r.wait_state("running");
    // What the fake Xen counted: 5 honoured, 2 resent, none refused.
    fs::write(r.dir.join("xs/.retry-stats"), "5 2 0\n").expect("counters");
    let sock = PathBuf::from(r.key("control").expect("control key"));
    let status = || -> Status {
        let reply = control::request(&sock, control::REQUEST_STATUS, Duration::from_secs(5))
            .expect("status");
        serde_json::from_str(&reply).expect("status JSON")
    };
    let st = status();
    let x = st.xen_retry.expect("Xen's counters in the status");
    assert_eq!((x.completed, x.resent, x.refused), (5, 2, 0));
    assert_eq!(st.xen_retry_error, None);
    assert!(r.log().contains("retry_stats_call=true"), "{}", r.log());

    // Xen refuses 3 answers: the loop's next reading warns, once.
    fs::write(r.dir.join("xs/.retry-stats"), "5 10 3\n").expect("counters");
    let t = Instant::now();
    while !r.log().contains("new_refused=3") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no warning; log:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = r.log();
    let line = log
        .lines()
        .find(|l| l.contains("new_refused=3"))
        .expect("the line");
    assert!(
        line.contains("WARN") && line.contains("refused=3"),
        "{line}"
    );

    sigterm(r.child.id());
    let status = r.wait_exit();
    let log = r.log();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert_eq!(
        log.matches("new_refused=").count(),
        1,
        "warned once; log:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("RETRY counters of the domain at teardown"))
        .unwrap_or_else(|| panic!("teardown line; log:\n{log}"));
    assert!(
        line.contains("completed=5") && line.contains("resent=10") && line.contains("refused=3"),
        "{line}"
    );
}

/// Kills a process on drop (a worker that outlived its supervisor is not
/// the test's child: `Run` does not stop it).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(Some(p)) = gpu_hostmem_host::process::Pidfd::open(self.0) {
            let _ = p.send_signal(libc::SIGKILL);
        }
    }
}

/// Issue 19: a SIGKILL of the supervisor leaves the worker serving (never
/// a vCPU waiting on a request nobody answers). The record names the
/// worker by pid and start time (written by the supervisor); the worker
/// says it lost its supervisor (its log), still answers on its control
/// socket, and teardown's process step finds it by that identity and
/// stops it; it then cleans up itself (every lent page revoked).
#[test]
fn the_worker_outlives_a_killed_supervisor_and_teardown_stops_it() {
    use gpu_hostmem_host::record::Record;
    use gpu_hostmem_host::teardown::{self, Outcome, Timeouts};
    let mut r = Run::start("orphan", 47, UUID, true);
    r.wait_state("running");
    let sup = r.child.id();
    let w = wait_worker(&r, None);
    let _guard = KillOnDrop(w);
    assert_eq!(
        r.key("worker-pid"),
        Some(w.to_string()),
        "record names the worker"
    );
    let start = gpu_hostmem_host::identity::start_time(w).expect("start time");
    assert_eq!(r.key("worker-start"), Some(start.to_string()));

    sigkill(sup);
    r.wait_exit();
    r.wait_log("the supervisor is gone", Duration::from_secs(10));
    assert!(
        gpu_hostmem_test_support::is_running(w),
        "the worker outlives its supervisor; log:\n{}",
        r.log()
    );
    assert_eq!(r.key("state").as_deref(), Some("running"));
    let sock = PathBuf::from(r.key("control").expect("control key"));
    let reply =
        control::request(&sock, control::REQUEST_STATUS, Duration::from_secs(5)).expect("status");
    let st: Status = serde_json::from_str(&reply).expect("status JSON");
    assert_eq!(st.state, "running", "it still serves");

    // Teardown's process step, from the record as xenstore holds it.
    let rec = Record {
        pid: r.key("pid"),
        worker_pid: r.key("worker-pid"),
        worker_start: r.key("worker-start"),
        unique_id: r.key("unique-id"),
        ..Record::default()
    };
    let (mut out, mut errors) = (Outcome::default(), Vec::new());
    let left = teardown::stop_server(
        &rec,
        47,
        || None,
        Timeouts::default(),
        &mut out,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(left, Some(false), "the worker cleaned up itself: {out:?}");
    assert!(!gpu_hostmem_test_support::is_running(w), "{out:?}");
    let log = r.log();
    assert!(log.contains("stopped cleanly"), "{log}");
    let privcmd = fs::read_to_string(r.dir.join("privcmd.log")).unwrap_or_default();
    assert!(
        privcmd.contains("revoke dom=47 flags=1"),
        "every lent page revoked: {privcmd}"
    );
}

/// The renderer binary of this workspace, built beside this test's (by
/// `cargo test --workspace`, as tests/run does), copied where its
/// unprivileged user can run it ([`ExeCopy`]).
fn renderer_exe() -> ExeCopy {
    let exe = std::env::current_exe().expect("test exe");
    let built = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("gpu-hostmem-renderer");
    assert!(
        built.exists(),
        "{} not built: run cargo test --workspace (or cargo build -p gpu-hostmem-renderer) first",
        built.display()
    );
    ExeCopy::new(&built, "gh-renderer-test").expect("copy the renderer")
}

/// The children of `sup` whose command line contains `what`.
fn children_with(sup: u32, what: &str) -> Vec<u32> {
    children_of(sup)
        .into_iter()
        .filter(|&pid| cmdline(pid).contains(what))
        .collect()
}

fn status_field(pid: u32, key: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool, log: impl Fn() -> String) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{what}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stage 2 wiring (docs/virtio-gpu.md): with `virtio_gpu.renderer` the
/// supervisor starts one renderer per worker, as the configured user,
/// without capabilities and with no_new_privs, holding a privcmd file
/// restricted to the guest and narrowed to a backend's rights; the worker
/// connects to it before its privilege drop and offers the test capset
/// (the model line counts contexts and blobs). A killed worker's renderer
/// exits with it and the restarted worker gets a new one; on SIGTERM
/// everything stops.
#[test]
fn starts_a_renderer_for_each_worker_when_configured() {
    let copy = renderer_exe();
    let renderer = copy.path();
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let user = if uid == 0 {
        "nobody".to_string()
    } else {
        format!("{uid}:{gid}")
    };
    // As root, a supplementary group of its own (what gives a renderer
    // /dev/udmabuf or a render node) and nothing else.
    let groups = if uid == 0 {
        "  renderer_groups: [\"4242\"]\n"
    } else {
        ""
    };
    let cfg = format!(
        "device: virtio-gpu\nvirtio_gpu:\n  renderer: {}\n  renderer_user: \"{user}\"\n{groups}  test_capset: true\n",
        renderer.display()
    );
    let mut r = Run::start_config("vgpu-renderer", 49, UUID, true, &[], &cfg);
    r.wait_state("running");
    let sup = r.child.id();
    let log = || fs::read_to_string(r.dir.join("ioreqd.log")).unwrap_or_default();
    wait_for(
        "the worker connects to its renderer",
        || log().contains("virtio-gpu: renderer connected"),
        log,
    );
    let rens = children_with(sup, "--socket-fd");
    assert_eq!(rens.len(), 1, "one renderer: {rens:?}; log:\n{}", log());
    let ren = rens[0];
    assert_eq!(
        cmdline(ren),
        format!("{} --socket-fd 3 --backend test ", renderer.display())
    );
    if uid == 0 {
        assert!(
            !status_field(ren, "Uid:").starts_with("0"),
            "renderer runs as nobody"
        );
        assert_eq!(
            status_field(ren, "Groups:"),
            "4242",
            "its configured group only"
        );
    }
    assert_eq!(status_field(ren, "NoNewPrivs:"), "1");
    assert_eq!(status_field(ren, "CapEff:"), "0000000000000000");
    let privcmd = fs::read_to_string(r.dir.join("privcmd.log")).unwrap_or_default();
    assert!(
        privcmd.contains("restrict dom=49") && privcmd.contains("narrow-to-backend"),
        "{privcmd}"
    );
    // Only its socket and privcmd file besides stdio, whatever this test
    // process left open without close-on-exec.
    let fds: Vec<String> = fs::read_dir(format!("/proc/{ren}/fd"))
        .expect("fds")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut fds: Vec<u32> = fds.iter().filter_map(|f| f.parse().ok()).collect();
    fds.sort_unstable();

    assert_eq!(fds, [0, 1, 2, 3, 4], "renderer fds");

    let sock = PathBuf::from(r.key("control").expect("control key"));
    let reply =
        control::request(&sock, control::REQUEST_STATUS, Duration::from_secs(5)).expect("status");
    let st: Status = serde_json::from_str(&reply).expect("status JSON");
    let model = st.device.expect("a model line");
    assert!(model.contains("contexts 0, blobs 0"), "{model}");

    // A killed worker takes its renderer with it; the new one gets its own.
    let w1 = children_with(sup, "--worker")[0];
    sigkill(w1);
    wait_for(
        "the first renderer exits with its worker",
        || {
            !Path::new(&format!("/proc/{ren}/cmdline")).exists()
                || status_field(ren, "State:").starts_with('Z')
        },
        log,
    );
    wait_for(
        "a new renderer for the restarted worker",
        || {
            children_with(sup, "--socket-fd").iter().any(|p| *p != ren)
                && log().matches("virtio-gpu: renderer connected").count() == 2
        },
        log,
    );
    let ren2 = children_with(sup, "--socket-fd")[0];
    sigterm(sup);
    let status = r.wait_exit();
    assert!(status.success(), "exit {status}; log:\n{}", r.log());
    assert!(
        !Path::new(&format!("/proc/{ren2}/cmdline")).exists(),
        "renderer gone"
    );
}

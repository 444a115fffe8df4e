//! gpu-hostmem-ioreqd as a process, against the fake Xen of
//! plugin/xen/tests/fake (loaded through LD_LIBRARY_PATH, and preloaded to
//! answer the privcmd ioctls): the setup stages, the xenstore record,
//! the control socket, SIGTERM, the domain's death through @releaseDomain,
//! and refused setups. No Xen needed.

use gpu_hostmem_core::status::Status;
use gpu_hostmem_xen::control;
use std::fs;
use std::os::unix::fs::symlink;
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
}

impl Run {
    fn start(name: &str, domid: u16, uuid: &str, retry: bool) -> Run {
        let lib = fake_libdir();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ioreqd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for d in ["xs", "run"] {
            fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        fs::write(dir.join("privcmd"), b"").expect("privcmd marker");
        fs::write(dir.join("config.yaml"), b"").expect("config");
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
        .env("LD_LIBRARY_PATH", lib)
        .env("LD_PRELOAD", lib.join("libfakexen.so"))
        .env("FAKEXS_ROOT", dir.join("xs"))
        .env("FAKE_DOMID", domid.to_string())
        .env("FAKE_UUID", UUID_HEX)
        .env("GPU_HOSTMEM_PRIVCMD", &privcmd)
        .env("FAKE_PRIVCMD", &privcmd)
        .env("FAKE_PRIVCMD_LOG", dir.join("privcmd.log"))
        .env("GPU_HOSTMEM_RUN_DIR", dir.join("run"))
        .env("GPU_HOSTMEM_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
        if retry {
            cmd.env("FAKE_RETRY", "1");
        }
        let child = cmd.spawn().expect("spawn gpu-hostmem-ioreqd");
        Run { dir, domid, child }
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
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    // hvmloader's hint (xen-patches 0019): slot 5, function 0 is devfn 0x28.
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

    let privcmd = fs::read_to_string(r.dir.join("privcmd.log")).unwrap_or_default();
    assert!(
        privcmd.contains("restrict dom=41"),
        "privcmd restricted: {privcmd}"
    );

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

//! The create and destroy hooks end to end, without Xen: the Xen libraries
//! are the fake of plugin/xen/tests/fake (its xenstore a directory tree
//! shared between processes), and gpu-hostmem-ioreqd is a fake that writes
//! its state like the real one. The hooks run in a child copy of this test
//! binary started with LD_LIBRARY_PATH pointing at the fake libraries; the
//! create hook runs in `tests/c/spawn_server.c`, which does what libxl's
//! spawn child does (call the hook, exec the server it describes), and the
//! test waits for the server on libxl's ready node as libxl does.

use gpu_hostmem_plugin::abi::{
    gpu_hostmem_plugin_destroy, GpuHostmemDomain, GPU_HOSTMEM_PLUGIN_ABI_VERSION,
};
use gpu_hostmem_test_support::is_running;
use std::ffi::{c_char, c_int};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "GH_PLUGIN_FLOW_CHILD";
const UUID_A: [u8; 16] = [0xaa; 16];
const UUID_B: [u8; 16] = [0xbb; 16];

fn cc(args: &[&str], out: &Path, src: &Path) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(cc)
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .expect("a C compiler (cc) is needed for the plugin flow test");
    assert!(st.success(), "compiling {} failed", src.display());
}

#[test]
fn create_and_destroy_against_fake_xen() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // The child runs `child_flow` only.
    }
    let fake = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xen/tests/fake");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("plugin-flow-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let (lib, bin, xs, logs) = (
        tmp.join("lib"),
        tmp.join("bin"),
        tmp.join("xs"),
        tmp.join("log"),
    );
    for d in [&lib, &bin, &xs, &logs] {
        fs::create_dir_all(d).expect("mkdir");
    }
    let so = lib.join("libfakexen.so");
    cc(
        &["-shared", "-fPIC", "-w", "-ldl"],
        &so,
        &fake.join("fakexen.c"),
    );
    for soname in [
        "libxenstore.so.4",
        "libxendevicemodel.so.1",
        "libxenforeignmemory.so.1",
        "libxenevtchn.so.1",
        "libxenctrl.so.4.20",
    ] {
        symlink(&so, lib.join(soname)).expect("symlink");
    }
    let ioreqd = bin.join("gpu-hostmem-ioreqd");
    cc(&["-w"], &ioreqd, &fake.join("fake_ioreqd.c"));
    let spawner = bin.join("spawn_server");
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include");
    cc(
        &[
            "-Wall",
            "-Werror",
            "-ldl",
            "-I",
            &include.display().to_string(),
        ],
        &spawner,
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/spawn_server.c"),
    );
    let exe = std::env::current_exe().expect("test exe");
    let deps = exe.parent().expect("deps dir");
    let plugin = [deps.to_path_buf(), deps.join("..")]
        .iter()
        .map(|d| d.join("libgpu_hostmem_plugin.so"))
        .find(|p| p.exists())
        .expect("libgpu_hostmem_plugin.so is built with the tests");

    let privcmd = tmp.join("privcmd");
    fs::write(&privcmd, b"").expect("privcmd marker");
    let privcmd = privcmd.canonicalize().expect("canonical");
    let out = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child_flow", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("LD_LIBRARY_PATH", &lib)
        .env("LD_PRELOAD", &so)
        .env("GPU_HOSTMEM_PRIVCMD", &privcmd)
        .env("FAKE_PRIVCMD", &privcmd)
        .env("FAKE_PRIVCMD_LOG", tmp.join("privcmd.log"))
        .env("FAKEXS_ROOT", &xs)
        .env("GPU_HOSTMEM_IOREQD", &ioreqd)
        .env("GPU_HOSTMEM_LOG_DIR", &logs)
        .env("GH_SPAWN_SERVER", &spawner)
        .env("GH_PLUGIN_SO", &plugin)
        .output()
        .expect("run child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child flow failed:\n{text}");
    assert!(text.contains("1 passed"), "child flow did not run:\n{text}");
    let _ = fs::remove_dir_all(&tmp);
}

/// What libxl sees of a server it starts.
#[derive(Debug)]
enum Started {
    /// `running` on the ready node; the server's pid.
    Ready(u32),
    /// The process exited first, with this code and stderr (the hook's
    /// reason when it failed), and the ready node's value.
    Exited(Option<i32>, String, Option<String>),
}

fn xs_root() -> PathBuf {
    PathBuf::from(std::env::var_os("FAKEXS_ROOT").expect("FAKEXS_ROOT"))
}

fn ready_path(domid: u32) -> String {
    format!("/libxl/{domid}/gpu-hostmem/state")
}

fn ready_value(domid: u32) -> Option<String> {
    fs::read_to_string(xs_root().join(&ready_path(domid)[1..]).join(".value")).ok()
}

/// Starts the server of `domid` as libxl does: its record node first, then
/// the spawn child (create hook, exec); waits for the ready node or the
/// process's exit, at most 5 s.
fn start(domid: u32, uuid: [u8; 16]) -> Started {
    let parent = xs_root().join(format!("libxl/{domid}/gpu-hostmem"));
    fs::create_dir_all(&parent).expect("mkdir");
    let _ = fs::remove_dir_all(parent.join("state"));
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    let var = |k: &str| std::env::var_os(k).unwrap_or_else(|| panic!("{k}"));
    let mut child: Child = Command::new(var("GH_SPAWN_SERVER"))
        .arg(var("GH_PLUGIN_SO"))
        .arg(domid.to_string())
        .arg(hex)
        .arg(ready_path(domid))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn_server");
    let t = Instant::now();
    loop {
        if ready_value(domid).as_deref() == Some("running") {
            let pid = child.id();
            // Detached, as libxl detaches it; reaped whenever it exits.
            std::thread::spawn(move || child.wait());
            return Started::Ready(pid);
        }
        if let Some(st) = child.try_wait().expect("try_wait") {
            let out = child.wait_with_output().expect("output");
            return Started::Exited(
                st.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                ready_value(domid),
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "server of {domid} neither ready nor gone"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_ok(domid: u32, uuid: [u8; 16]) -> u32 {
    match start(domid, uuid) {
        Started::Ready(pid) => pid,
        other => panic!("server of domain {domid} did not start: {other:?}"),
    }
}

fn call(
    f: unsafe extern "C" fn(*const GpuHostmemDomain, *mut c_char, usize) -> c_int,
    domid: u32,
    uuid: [u8; 16],
) -> (c_int, String) {
    let d = GpuHostmemDomain {
        abi_version: GPU_HOSTMEM_PLUGIN_ABI_VERSION,
        domid,
        uuid,
        bar_size_mib: 64,
        max_vcpus: 1,
        flags: 0,
    };
    let mut err = [0 as c_char; 512];
    // SAFETY: a live struct and a 512-byte buffer.
    let rc = unsafe { f(&d, err.as_mut_ptr(), err.len()) };
    let bytes: Vec<u8> = err
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    (rc, String::from_utf8_lossy(&bytes).into_owned())
}

fn node(domid: u32, key: &str) -> PathBuf {
    let mut p = xs_root().join(format!("local/domain/0/gpu-hostmem/{domid}"));
    if !key.is_empty() {
        p = p.join(key);
    }
    p
}

fn read(domid: u32, key: &str) -> Option<String> {
    fs::read_to_string(node(domid, key).join(".value")).ok()
}

fn wait_dead(pid: u32) -> bool {
    let t = Instant::now();
    while is_running(pid) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    !is_running(pid)
}

#[test]
fn child_flow() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return; // Only meaningful inside the prepared child.
    }
    // The domain does not exist for the fake xenctrl (no FAKE_DOMID): the
    // teardown has nothing lent to revoke and needs no privcmd.

    // 1. The server the create hook describes, executed in the process
    //    that called it, becomes ready on libxl's node; the record names
    //    that process. destroy stops it and leaves nothing; destroy again
    //    is fine.
    std::env::set_var("FAKE_IOREQD_MODE", "ok");
    let spawned = start_ok(5, UUID_A);
    assert_eq!(read(5, "state").as_deref(), Some("running"));
    assert_eq!(
        read(5, "uuid").as_deref(),
        Some("aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa")
    );
    let pid: u32 = read(5, "pid").expect("pid").parse().expect("pid number");
    assert_eq!(pid, spawned, "the record names the process libxl started");
    assert!(is_running(pid));
    let log = fs::read_to_string(
        PathBuf::from(std::env::var_os("GPU_HOSTMEM_LOG_DIR").expect("log dir"))
            .join("gpu-hostmem-5.log"),
    )
    .unwrap_or_default();
    assert!(
        log.contains("fake ioreqd for domain 5"),
        "server log: {log:?}"
    );
    // (A second create for the same running instance is refused: step 9,
    // where the fake domain exists and has a unique id.)
    // destroy with another domain's uuid: refused, nothing touched.
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 5, UUID_B);
    assert_eq!(rc, -libc::EEXIST, "{msg}");
    assert!(msg.contains("refusing"), "{msg}");
    assert!(
        is_running(pid),
        "the server of the recorded domain was left alone"
    );
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 5, UUID_A);
    assert_eq!(rc, 0, "destroy: {msg}");
    assert!(wait_dead(pid), "server stopped");
    assert!(!node(5, "").exists(), "record removed");
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 5, UUID_A);
    assert_eq!(rc, 0, "destroy is idempotent: {msg}");

    // 2. A server that reports a failure: libxl's node says why and the
    //    process exits; the destroy hook libxl then calls leaves nothing.
    std::env::set_var("FAKE_IOREQD_MODE", "fail");
    match start(6, UUID_A) {
        Started::Exited(Some(1), _, Some(why)) => {
            assert!(why.starts_with("failed: "), "{why}");
            assert!(why.contains("setup stage CreateServer"), "{why}");
        }
        other => panic!("a failing server: {other:?}"),
    }
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 6, UUID_A);
    assert_eq!(rc, 0, "{msg}");
    assert!(!node(6, "").exists(), "no record left after a failed start");

    // 3. A server that exits without running: nothing on libxl's node;
    //    the record of the process that started is cleaned by destroy.
    std::env::set_var("FAKE_IOREQD_MODE", "exit");
    match start(7, UUID_A) {
        Started::Exited(Some(0), _, None) => {}
        other => panic!("an exiting server: {other:?}"),
    }
    assert_eq!(read(7, "state").as_deref(), Some("starting"));
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 7, UUID_A);
    assert_eq!(rc, 0, "{msg}");
    assert!(!node(7, "").exists());

    // 4. Stale state of an earlier domain with the same domid (dead pid)
    //    is cleaned before a new server starts.
    std::env::set_var("FAKE_IOREQD_MODE", "ok");
    fs::create_dir_all(node(8, "uuid")).expect("mkdir");
    fs::write(
        node(8, "uuid").join(".value"),
        "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb",
    )
    .expect("w");
    fs::create_dir_all(node(8, "pid")).expect("mkdir");
    fs::write(node(8, "pid").join(".value"), "999999999").expect("w");
    start_ok(8, UUID_A);
    assert_eq!(
        read(8, "uuid").as_deref(),
        Some("aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa")
    );
    let pid: u32 = read(8, "pid").expect("pid").parse().expect("pid number");

    // 5. A server that ignores SIGTERM is killed by destroy.
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 8, UUID_A);
    assert_eq!(rc, 0, "{msg}");
    assert!(wait_dead(pid));
    std::env::set_var("FAKE_IOREQD_MODE", "stubborn");
    start_ok(9, UUID_A);
    let pid: u32 = read(9, "pid").expect("pid").parse().expect("pid number");
    let t = Instant::now();
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 9, UUID_A);
    assert_eq!(rc, 0, "{msg}");
    assert!(
        t.elapsed() >= Duration::from_secs(5),
        "SIGKILL only after the SIGTERM grace period"
    );
    assert!(wait_dead(pid), "stubborn server killed");
    assert!(!node(9, "").exists(), "record removed after a kill");

    // 6. The domain exists (the destroy hook runs before libxl destroys
    //    it) and its server ignores SIGTERM: after the kill, every lent page
    //    is revoked and the ioreq server the killed process left is
    //    destroyed, for that domain only.
    std::env::set_var("FAKE_DOMID", "10");
    std::env::set_var("FAKE_UUID", "aa".repeat(16));
    start_ok(10, UUID_A);
    let pid: u32 = read(10, "pid").expect("pid").parse().expect("pid number");
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 10, UUID_A);
    assert_eq!(rc, 0, "{msg}");
    assert!(wait_dead(pid));
    let log_path = std::env::var_os("FAKE_PRIVCMD_LOG").expect("log env");
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("restrict dom=10"), "{log}");
    assert!(log.contains("revoke dom=10 flags=1"), "{log}");
    assert!(log.contains("destroy dom=10 id=3"), "{log}");
    assert!(
        !log.contains("dom=5") && !log.contains("dom=9"),
        "gone domains untouched: {log}"
    );

    // 7. The recorded ioreq server id is destroyed only for a record in
    //    state "running" of this domain whose process is gone: with any
    //    other state the process (or an earlier teardown) already destroyed
    //    it, and Xen may have given the id to another emulator since.
    let destroys = |log: &str| log.matches("destroy dom=10 id=3").count();
    // The fake guest's unique id (first 8 bytes of its handle, LE).
    const UNIQUE_ID: &str = "12297829382473034410";
    let stale_of = |state: &str, pid: &str, unique_id: &str| {
        for (k, v) in [
            ("uuid", "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"),
            ("unique-id", unique_id),
            ("state", state),
            ("pid", pid),
            ("ioservid", "3"),
        ] {
            fs::create_dir_all(node(10, k)).expect("mkdir");
            fs::write(node(10, k).join(".value"), v).expect("write");
        }
    };
    let stale = |state: &str, pid: &str| stale_of(state, pid, UNIQUE_ID);
    let log_now = || fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(destroys(&log_now()), 1);
    for state in ["stopping", "starting", "failed: x"] {
        stale(state, "999999999");
        let (rc, msg) = call(gpu_hostmem_plugin_destroy, 10, UUID_A);
        assert_eq!(rc, 0, "{msg}");
        assert!(!node(10, "").exists(), "record removed");
        assert_eq!(
            destroys(&log_now()),
            1,
            "server id of a {state:?} record destroyed: {}",
            log_now()
        );
    }
    // "running" and the process gone: it was killed and left its server.
    stale("running", "999999999");
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 10, UUID_A);
    assert_eq!(rc, 0, "{msg}");
    assert_eq!(destroys(&log_now()), 2, "{}", log_now());
    // "running" and the pid now names another program: that program is
    // never signalled; ours is gone, so its server is destroyed.
    let mut other = Command::new("sleep").arg("30").spawn().expect("spawn");
    stale("running", &other.id().to_string());
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 10, UUID_A);
    assert_eq!(rc, 0, "{msg}");
    assert!(is_running(other.id()), "an unrelated process was signalled");
    assert_eq!(destroys(&log_now()), 3, "{}", log_now());
    let _ = other.kill();
    let _ = other.wait();

    // 8. I5: a "running" record of an earlier instance of domid 10 (same
    //    UUID, as xl keeps it across a reboot, but another unique id) whose
    //    process is gone: the domain that has domid 10 now is another
    //    guest, so nothing is revoked from it and no server destroyed; the
    //    stale record goes.
    let revokes = |log: &str| log.matches("revoke dom=10").count();
    let before = (destroys(&log_now()), revokes(&log_now()));
    stale_of("running", "999999999", "1");
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 10, UUID_A);
    assert_eq!(rc, 0, "{msg}");
    assert!(!node(10, "").exists(), "stale record removed");
    assert_eq!(
        (destroys(&log_now()), revokes(&log_now())),
        before,
        "the current domain 10 was touched for a record of another instance: {}",
        log_now()
    );

    // 9. The create hook's "a server already runs for this domain" goes by
    //    Xen's unique id, not the UUID: a second create for the instance a
    //    live server serves is refused; a live server recorded for an
    //    earlier instance of domid 10 (same UUID, as xl keeps it across a
    //    reboot, another unique id) is stopped and a new one started.
    std::env::set_var("FAKE_IOREQD_MODE", "ok");
    start_ok(10, UUID_A);
    assert_eq!(read(10, "unique-id").as_deref(), Some(UNIQUE_ID));
    let first: u32 = read(10, "pid").expect("pid").parse().expect("pid number");
    match start(10, UUID_A) {
        Started::Exited(Some(1), msg, _) => {
            assert!(
                msg.contains("File exists") && msg.contains("already runs"),
                "{msg}"
            )
        }
        other => panic!("same instance, server live: {other:?}"),
    }
    assert!(is_running(first), "the live server was left alone");
    assert_eq!(read(10, "pid").as_deref(), Some(first.to_string().as_str()));
    fs::write(node(10, "unique-id").join(".value"), "1").expect("w");
    start_ok(10, UUID_A);
    assert!(
        wait_dead(first),
        "the earlier instance's server was stopped"
    );
    let second: u32 = read(10, "pid").expect("pid").parse().expect("pid number");
    assert_ne!(second, first);
    assert!(is_running(second));
    assert_eq!(read(10, "unique-id").as_deref(), Some(UNIQUE_ID));
    let (rc, msg) = call(gpu_hostmem_plugin_destroy, 10, UUID_A);
    assert_eq!(rc, 0, "{msg}");
    assert!(wait_dead(second));
    assert!(!node(10, "").exists(), "record removed");
}

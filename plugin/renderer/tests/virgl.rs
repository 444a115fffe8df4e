//! The venus backend against the real libvirglrenderer (Debian trixie's
//! 1.1), set up as the renderer binary sets it up and served under its
//! seccomp filter, with the device's blob table on the other end of the
//! socket and a fake registrar for privcmd. The build machine does not
//! have the library, so the test is `#[ignore]`d: cargo reports it as
//! ignored, never as passed. To run it (as root: it chroots into the root
//! in its own mount and PID namespaces, as tests/renderer-probe/run.sh
//! does, leaving the root unchanged):
//!
//! ```text
//! GH_VIRGL_ROOT=/path/to/trixie-root \
//!     cargo test -p gpu-hostmem-renderer --test virgl -- --ignored --nocapture
//! ```
//!
//! The root needs `libvirglrenderer1`, `virgl-server` (the render server)
//! and `mesa-vulkan-drivers` (lavapipe); `tests/renderer-probe/run.sh`
//! makes one. Run with `--ignored` and without `GH_VIRGL_ROOT`, it fails.
//!
//! Inside the root, one process: the library is loaded and venus
//! initialised (the render server forked), its Vulkan allocator loaded
//! (a stand-in OPAQUE blob mapped before the filter), the device's thread
//! connects and the renderer answers its hello, then the renderer's venus filter
//! goes on (every thread: the device's too) and everything else is served
//! under it: capset info and data through the protocol and the device's
//! GET_CAPSET_INFO/GET_CAPSET, a venus context, a blob_id 0 blob created,
//! mapped and registered, a venus command stream (SUBMIT_3D) whose reply
//! the render server writes into the blob, unmapped, unreferenced, the context destroyed,
//! then, still under the filter, a second stand-in OPAQUE blob mapped
//! (refused by the allocator loaded before the filter, where a first map
//! under the filter would load the Vulkan driver and be killed), and the
//! library cleaned up (its Vulkan allocator's device and instance
//! destroyed, the render server killed and reaped). Last, a call outside
//! the filter must kill the process.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use gpu_hostmem_renderer::sandbox::{self, children_of, BackendKind, Policy};
use gpu_hostmem_renderer::virgl::{
    StandInMap, VirglBackend, CAPSET_VENUS, SONAME, STAND_IN_RES_ID,
};
use gpu_hostmem_renderer::{serve, serve_one, RendererLimits, RendererState};
use gpu_hostmem_virtio_gpu::blob::{resp as bresp, Blobs, CapsetOffer, TEST_CAPSET_ID};
use gpu_hostmem_virtio_gpu::gpu2d::{resp, HDR_LEN};
use gpu_hostmem_virtio_gpu::renderer::{Renderer, RendererError};
use gpu_hostmem_virtio_gpu::renderer_proto::SocketRenderer;

mod common;
use common::{FakeRegistrar, Reg};

const ROOT_ENV: &str = "GH_VIRGL_ROOT";
const INSIDE_ENV: &str = "GH_VIRGL_INSIDE";
const NAME: &str = "venus_served_under_the_renderers_filter_from_libvirglrenderer";
const WINDOW: u64 = 64 << 20;
const MARKER: &str = "VIRGL TEST RAN";
const FORBIDDEN: &str = "a call outside the filter next";

/// A file read whole from its start with `lseek` and `read` only (the
/// calls the venus filter allows; `std::fs::read_to_string` would `statx`).
fn read_all(f: &mut File) -> String {
    f.seek(SeekFrom::Start(0)).expect("lseek");
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The line of `maps` whose range holds `[addr, addr + len)`.
fn vma_of(maps: &str, addr: usize, len: u64) -> Option<String> {
    maps.lines()
        .find(|l| {
            let range = l.split(' ').next().unwrap_or("");
            let Some((a, b)) = range.split_once('-') else {
                return false;
            };
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                return false;
            };
            a <= addr && addr as u64 + len <= b as u64
        })
        .map(str::to_owned)
}

fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        .unwrap_or_default()
}

fn hdr(ty: u32, ctx: u32, words: &[u32]) -> Vec<u8> {
    let mut v = vec![0u8; HDR_LEN];
    v[0..4].copy_from_slice(&ty.to_le_bytes());
    v[16..20].copy_from_slice(&ctx.to_le_bytes());
    for w in words {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The device's side, in its own thread: what the worker's blob table
/// does for a guest's commands. Returns the lines to print.
fn device(
    dev: UnixDatagram,
    regs: Arc<Mutex<Vec<Reg>>>,
    mut maps: File,
    mut status: File,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut sr = SocketRenderer::connect(dev).expect("hello");
    // From here the renderer serves under its filter (and this thread is
    // under it too, TSYNC).
    let (max_version, max_size) = sr.capset_info(CAPSET_VENUS).expect("venus capset info");
    out.push(format!(
        "venus capset info over the protocol: max_version {max_version} max_size {max_size}"
    ));
    assert!(max_size > 0);
    let e = sr.capset_info(TEST_CAPSET_ID).expect_err("test capset");
    out.push(format!("test capset info from the venus renderer: {e}"));
    assert!(matches!(
        e,
        RendererError::Refused {
            errno: libc::EINVAL,
            ..
        }
    ));
    let e = sr
        .capset(CAPSET_VENUS, max_version + 1, max_size)
        .expect_err("a newer version");
    out.push(format!("venus capset version {}: {e}", max_version + 1));
    assert!(matches!(
        e,
        RendererError::Refused {
            errno: libc::EINVAL,
            ..
        }
    ));
    assert!(!sr.is_broken());

    let offer = CapsetOffer {
        id: CAPSET_VENUS,
        max_version,
        max_size,
    };
    let mut b = Blobs::new(Box::new(sr), &[offer], WINDOW, WINDOW);
    let no2d = |_: u32| false;
    // The guest's GET_CAPSET_INFO and GET_CAPSET.
    let (t, body) = b.handle(&hdr(0x108, 0, &[0, 0]), no2d);
    assert_eq!(t, bresp::OK_CAPSET_INFO);
    assert_eq!(
        (u32_at(&body, 0), u32_at(&body, 4), u32_at(&body, 8)),
        (CAPSET_VENUS, max_version, max_size)
    );
    let (t, caps) = b.handle(&hdr(0x109, 0, &[CAPSET_VENUS, max_version]), no2d);
    assert_eq!(t, bresp::OK_CAPSET);
    assert_eq!(caps.len(), max_size as usize);
    let wire = u32_at(&caps, 0);
    out.push(format!(
        "GET_CAPSET venus v{max_version}: {} bytes, wire_format_version {wire}, first 16: {:02x?}",
        caps.len(),
        &caps[..16.min(caps.len())]
    ));
    assert_ne!(wire, 0, "venus's wire format version");
    assert_eq!(
        b.handle(&hdr(0x109, 0, &[CAPSET_VENUS, max_version + 1]), no2d)
            .0,
        resp::ERR_INVALID_PARAMETER
    );
    // CONTEXT_INIT with capset 4.
    let mut ctx = hdr(0x200, 1, &[4, CAPSET_VENUS]);
    ctx.extend_from_slice(b"test\0\0\0\0");
    assert_eq!(b.handle(&ctx, no2d).0, resp::OK_NODATA, "venus context");
    // RESOURCE_CREATE_BLOB: HOST3D, MAPPABLE, blob_id 0, 1 MiB.
    let mut blob = hdr(0x10c, 1, &[7, 2, 1, 0]);
    blob.extend_from_slice(&0u64.to_le_bytes());
    blob.extend_from_slice(&(1u64 << 20).to_le_bytes());
    assert_eq!(b.handle(&blob, no2d).0, resp::OK_NODATA, "blob_id 0 blob");
    // RESOURCE_MAP_BLOB at 2 MiB.
    let mut map = hdr(0x208, 0, &[7, 0]);
    map.extend_from_slice(&(2u64 << 20).to_le_bytes());
    let (t, body) = b.handle(&map, no2d);
    assert_eq!(t, bresp::OK_MAP_INFO);
    out.push(format!(
        "MAP_BLOB at 0x200000: map_info {}",
        u32_at(&body, 0)
    ));
    assert_eq!(u32_at(&body, 0), 1, "VIRTIO_GPU_MAP_CACHE_CACHED");
    let r = {
        let regs = regs.lock().expect("regs");
        assert_eq!(regs.len(), 1);
        regs[0]
    };
    assert_eq!((r.size, r.offset), (1 << 20, 2 << 20));
    let m = read_all(&mut maps);
    let vma = vma_of(&m, r.addr, r.size).expect("the registered range is mapped");
    out.push(format!(
        "registered {:#x}+{:#x} at {:#x}; its VMA: {vma}",
        r.addr, r.size, r.offset
    ));
    assert!(vma.contains(" rw-s ") && vma.contains("memfd:vkr-shmem"));
    // The guest's view of the window is these pages: both ends writable.
    for (i, v) in [(0usize, 0x5eed_0001u32), ((1 << 18) - 1, 0x5eed_0002)] {
        // SAFETY: the registered range is the library's live mapping of
        // r.size bytes, shared and writable (checked above), until UNMAP.
        unsafe {
            let p = (r.addr as *mut u32).add(i);
            p.write_volatile(v);
            assert_eq!(p.read_volatile(), v);
        }
    }
    // SUBMIT_3D of a venus command stream: vkSetReplyCommandStreamMESA
    // (178) naming this blob at 0x1000 for 4096 bytes, then
    // vkEnumerateInstanceVersion (137) asking for a reply. The render
    // server writes the reply into the blob after the submission returns
    // (no fence yet): wait for it in the registered memory, the guest's
    // view of the window.
    let at = 0x1000usize;
    let stream = [
        178, 0, 1, 0, 7, at as u32, 0, 4096, 0, // SetReplyCommandStream
        137, 1, 1, 0, // EnumerateInstanceVersion, GENERATE_REPLY
    ];
    let submit = hdr(0x207, 1, &[4 * stream.len() as u32, 0]);
    let submit = stream.iter().fold(submit, |mut v, w: &u32| {
        v.extend_from_slice(&w.to_le_bytes());
        v
    });
    assert_eq!(b.handle(&submit, no2d).0, resp::OK_NODATA, "SUBMIT_3D");
    // SAFETY: as above; words at..at+20 bytes lie inside the blob.
    let reply = |i: usize| unsafe { (r.addr as *const u32).add(at / 4 + i).read_volatile() };
    let t0 = std::time::Instant::now();
    while reply(0) != 137 && t0.elapsed() < std::time::Duration::from_secs(10) {
        std::hint::spin_loop();
    }
    let words: Vec<u32> = (0..5).map(reply).collect();
    out.push(format!(
        "venus reply after {:?}: {words:08x?} (type, VkResult, pointer, version)",
        t0.elapsed()
    ));
    assert_eq!(
        &words[..4],
        &[137, 0, 1, 0],
        "vkEnumerateInstanceVersion's reply"
    );
    assert!(
        words[4] >= (1 << 22) | (1 << 12),
        "a Vulkan 1.1 or newer instance"
    );
    assert_eq!(b.stats().submits, 1);
    // A fence after the stream on ring 0 (venus's CPU timeline, which the
    // render worker retires when it reaches it): the library reports it
    // from `virgl_renderer_context_poll`, which the renderer's loop calls
    // when the context's eventfd is readable, and the renderer sends it as
    // an event on the socket.
    let t0 = std::time::Instant::now();
    assert!(
        b.create_fence(1, 0, 1, 7),
        "CREATE_FENCE on ring 0 after the stream"
    );
    let mut got = Vec::new();
    // Polled without sleeping: this thread is under the renderer's filter
    // too, which has no clock_nanosleep.
    while got.is_empty() && t0.elapsed() < std::time::Duration::from_secs(5) {
        got = b.poll_events();
        std::hint::spin_loop();
    }
    out.push(format!(
        "fence 1 on ring 0 after the stream: events {got:?} after {:?}",
        t0.elapsed()
    ));
    assert_eq!(
        got,
        [gpu_hostmem_virtio_gpu::renderer::FenceRetired {
            ctx_id: 1,
            ring_idx: 0,
            fence_id: 1,
            generation: 7
        }],
        "the fence retired, reported once"
    );
    assert!(!b.renderer_lost());
    assert_eq!(
        b.handle(&hdr(0x209, 0, &[7, 0]), no2d).0,
        resp::OK_NODATA,
        "UNMAP_BLOB"
    );
    let left = regs.lock().expect("regs").len();
    let m = read_all(&mut maps);
    out.push(format!(
        "unmapped: registrations left {left}, VMA now {:?}",
        vma_of(&m, r.addr, r.size)
    ));
    assert_eq!(left, 0);
    assert_eq!(b.unref(7), resp::OK_NODATA, "RESOURCE_UNREF");
    assert_eq!(
        b.handle(&hdr(0x201, 1, &[]), no2d).0,
        resp::OK_NODATA,
        "CTX_DESTROY"
    );
    let st = b.stats();
    out.push(format!("device: {st:?}"));
    assert_eq!((st.blobs, st.contexts, st.renderer_errors), (0, 0, 0));
    let s = read_all(&mut status);
    out.push(format!(
        "while serving: Seccomp {}, Seccomp_filters {}, NoNewPrivs {}",
        field(&s, "Seccomp:"),
        field(&s, "Seccomp_filters:"),
        field(&s, "NoNewPrivs:")
    ));
    assert_eq!(field(&s, "Seccomp:"), "2");
    drop(b); // the device goes: the renderer's loop ends
    out
}

/// The renderer binary itself with `--backend venus`, started as the
/// supervisor starts it (nobody, fd 3 its socket, fd 4 a stand-in privcmd
/// file, an empty environment): it serves venus under its filter, refuses
/// MAP_BLOB with the stand-in's ENOTTY, and exits cleanly (the library's
/// cleanup kills and reaps the render server under the filter) when the
/// device goes.
fn binary() {
    use gpu_hostmem_virtio_gpu::renderer::BlobRequest;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let (dev, ren) = gpu_hostmem_test_support::seqpacket_pair().expect("socketpair");
    let privcmd = File::create("/tmp/stand-in-privcmd").expect("stand-in privcmd");
    let (s, p) = (ren.as_raw_fd(), privcmd.as_raw_fd());
    let mut cmd = Command::new("/tmp/gpu-hostmem-renderer");
    cmd.args(["--socket-fd", "3", "--backend", "venus"])
        .env_clear()
        .env("GPU_HOSTMEM_DOMID", "5")
        .env("GPU_HOSTMEM_UNIQUE_ID", "7")
        .env("GPU_HOSTMEM_PRIVCMD_FD", "4")
        .stderr(std::process::Stdio::piped())
        .uid(65534)
        .gid(65534);
    // SAFETY: in the child before exec: fcntl, dup2 and prctl only, on
    // open fds.
    unsafe {
        cmd.pre_exec(move || {
            let hs = libc::fcntl(s, libc::F_DUPFD_CLOEXEC, 64);
            let hp = libc::fcntl(p, libc::F_DUPFD_CLOEXEC, 64);
            if hs < 0 || hp < 0 || libc::dup2(hs, 3) < 0 || libc::dup2(hp, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn the renderer");
    drop(ren);
    drop(privcmd);
    let mut r = SocketRenderer::connect(UnixDatagram::from(dev)).expect("hello");
    let (v, size) = r.capset_info(CAPSET_VENUS).expect("capset info");
    let caps = r.capset(CAPSET_VENUS, v, size).expect("capset data");
    let st = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    let server = children_of(child.id() as libc::pid_t).expect("children");
    println!(
        "binary: venus capset v{v} {size} bytes (wire_format_version {}), Uid {}, Seccomp {}, NoNewPrivs {}, children {server:?}",
        u32_at(&caps, 0),
        field(&st, "Uid:"),
        field(&st, "Seccomp:"),
        field(&st, "NoNewPrivs:")
    );
    assert_eq!(field(&st, "Seccomp:"), "2");
    assert_eq!(server.len(), 1, "the render server");
    r.create_context(1, CAPSET_VENUS).expect("context");
    let h = r
        .create_blob(BlobRequest {
            ctx_id: 1,
            capset: CAPSET_VENUS,
            resource_id: 7,
            blob_id: 0,
            size: 1 << 20,
        })
        .expect("blob_id 0 blob");
    match r.map_blob(h, 0) {
        Err(RendererError::Refused { errno, .. }) => {
            println!("binary: MAP_BLOB on the stand-in privcmd: errno {errno}");
            assert_eq!(errno, libc::ENOTTY);
        }
        other => panic!("map on a file that is not privcmd: {other:?}"),
    }
    r.destroy_blob(h).expect("destroy");
    r.destroy_context(1).expect("destroy context");
    drop(r);
    let status = child.wait().expect("wait");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    for l in err.lines().filter(|l| {
        l.contains("seccomp")
            || l.contains("done")
            || l.contains("virglrenderer")
            || l.contains("allocator")
    }) {
        println!("binary: {l}");
    }
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("serving the device (seccomp filter on)"),
        "{err}"
    );
    assert!(
        err.contains("Vulkan allocator loaded before the filter map=Refused(22)"),
        "{err}"
    );
    let gone = !Path::new(&format!("/proc/{}", server[0])).exists();
    println!(
        "binary: exited {status}; render server {} gone: {gone}",
        server[0]
    );
    assert!(gone);
}

/// What runs inside the root.
fn inside() -> ! {
    binary();
    // The renderer binary's setup for `--backend venus`: load the library,
    // initialise venus (which forks the render server) and its Vulkan
    // allocator (a stand-in OPAQUE blob mapped: refused, as it belongs to
    // no device, after the allocator made its instance and device here).
    let backend = match VirglBackend::new(SONAME) {
        Ok(b) => b,
        Err(e) => panic!("venus backend: {e}"),
    };
    let load = backend.allocator();
    println!("Vulkan allocator loaded before the filter: {load:?}");
    assert_eq!(load.map, StandInMap::Refused(libc::EINVAL));
    assert!(!load.udmabuf);
    let virgl = Rc::clone(backend.virgl());
    match VirglBackend::new(SONAME) {
        Err(e) => {
            println!("a second venus backend: {e}");
            assert_eq!(e.errno(), libc::EBUSY);
        }
        Ok(_) => panic!("two initialised libvirglrenderer in one process"),
    }
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    println!(
        "after virgl_renderer_init: threads {}, children {:?}",
        field(&s, "Threads:"),
        children_of(me).expect("children")
    );
    let reg = FakeRegistrar::default();
    let regs = Arc::clone(&reg.regs);
    let mut st = RendererState::with_backend(reg, backend, RendererLimits::default());
    let (dev, ren) = gpu_hostmem_test_support::seqpacket_pair().expect("socketpair");
    let (dev, ren) = (UnixDatagram::from(dev), UnixDatagram::from(ren));
    let maps = File::open("/proc/self/maps").expect("maps");
    let status = File::open("/proc/self/status").expect("status");
    let dev_thread = std::thread::spawn(move || device(dev, regs, maps, status));
    // The device's hello (its connect sets the socket's timeouts first).
    assert!(serve_one(&ren, &mut st).expect("hello"));
    // The binary's filter for venus: the render server is the only child.
    let policy = Policy::for_this_process(BackendKind::Venus).expect("venus policy");
    println!(
        "render server (kill/waitid allowed for it only): {:?}",
        policy.render_server()
    );
    sandbox::enter(&policy).expect("filter");
    let served = serve(&ren, &mut st);
    let stats = st.stats();
    // Under the filter: an OPAQUE map goes to the allocator loaded before
    // it (the stand-in's is refused); had it not been loaded, this map
    // would load it here and the filter would kill the process.
    let late = virgl.map_stand_in_opaque(STAND_IN_RES_ID - 1);
    drop(virgl);
    // virgl_renderer_cleanup under the filter: the allocator's device and
    // instance destroyed, kill + waitid of the server.
    drop(st);
    let lines = dev_thread.join();
    let mut o = std::io::stdout();
    match lines {
        Ok(lines) => {
            for l in lines {
                let _ = writeln!(o, "{l}");
            }
        }
        Err(_) => {
            let _ = writeln!(o, "the device's thread failed");
            let _ = o.flush();
            // SAFETY: _exit ends the process.
            unsafe { libc::_exit(3) }
        }
    }
    let _ = writeln!(o, "an OPAQUE stand-in mapped under the filter: {late:?}");
    let _ = writeln!(o, "renderer: {served:?}, {stats:?}; library cleaned up");
    let ok = served.is_ok()
        && (stats.registered, stats.unregistered, stats.blobs) == (1, 1, 0)
        && matches!(late, Ok(StandInMap::Refused(libc::EINVAL)));
    if !ok {
        let _ = o.flush();
        // SAFETY: _exit ends the process.
        unsafe { libc::_exit(4) }
    }
    let _ = writeln!(
        o,
        "{MARKER}: venus capset, context, blob_id 0 and an OPAQUE map under the renderer's filter"
    );
    let _ = writeln!(o, "{FORBIDDEN}");
    let _ = o.flush();
    // SAFETY: a path with its NUL; the filter must kill us here.
    unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    let _ = writeln!(o, "SURVIVED a call outside the filter");
    let _ = o.flush();
    // SAFETY: _exit ends the process.
    unsafe { libc::_exit(0) }
}

#[test]
#[ignore = "needs GH_VIRGL_ROOT (a trixie root with libvirglrenderer 1.1) and root; see the file's header"]
fn venus_served_under_the_renderers_filter_from_libvirglrenderer() {
    if std::env::var_os(INSIDE_ENV).is_some() {
        inside();
    }
    let Some(root) = std::env::var_os(ROOT_ENV) else {
        panic!("NOT RUN: {ROOT_ENV} is not set (a trixie root with libvirglrenderer1, virgl-server, mesa-vulkan-drivers)");
    };
    let root = Path::new(&root);
    assert!(
        root.join("usr/lib/x86_64-linux-gnu").join(SONAME).exists(),
        "NOT RUN: no {SONAME} in {}",
        root.display()
    );
    let exe = std::env::current_exe().expect("test binary");
    // A private mount and PID namespace: /proc, /dev and a /tmp of its own
    // in the root, the test binary copied into that /tmp; nothing outlives
    // the run and the root on disk is not changed. The environment is the
    // renderer's (the supervisor clears it), with HOME for the test.
    // GH_VIRGL_STRACE=FILE runs it under `strace -f -o FILE` (FILE in the
    // root's /tmp is gone afterwards: give a path under a bind mount).
    let strace = std::env::var("GH_VIRGL_STRACE")
        .map(|f| format!("strace -f -o {f} "))
        .unwrap_or_default();
    let script = format!(
        r#"mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" &&
        mount -t tmpfs tmpfs "$0/tmp" && cp "$1" "$0/tmp/virgl-test" &&
        cp "$2" "$0/tmp/gpu-hostmem-renderer" &&
        exec chroot "$0" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp \
            {INSIDE_ENV}=1 {strace}/tmp/virgl-test --exact {NAME} --ignored --nocapture --test-threads 1"#
    );
    let out = Command::new("timeout")
        .args(["--kill-after=10", "120", "unshare", "-m", "-p", "-f"])
        .args(["--propagation", "private", "sh", "-c", &script])
        .arg(root)
        .arg(&exe)
        .arg(env!("CARGO_BIN_EXE_gpu-hostmem-renderer"))
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!("in the root: {}", out.status);
    assert!(stdout.contains(MARKER), "the test did not run in the root");
    assert!(stdout.contains(FORBIDDEN));
    assert!(
        !stdout.contains("SURVIVED") && !out.status.success(),
        "the call outside the filter did not kill the process"
    );
}

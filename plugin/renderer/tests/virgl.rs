//! The venus backend against the real libvirglrenderer (Debian trixie's
//! 1.1), driven through the renderer's protocol handler with a fake
//! registrar. The build machine does not have the library, so the test is
//! `#[ignore]`d: cargo reports it as ignored, never as passed. To run it
//! (as root: it chroots into the root in its own mount and PID
//! namespaces, as tests/renderer-probe/run.sh does, leaving the root
//! unchanged):
//!
//! ```text
//! GH_VIRGL_ROOT=/path/to/trixie-root \
//!     cargo test -p gpu-hostmem-renderer --test virgl -- --ignored --nocapture
//! ```
//!
//! The root needs `libvirglrenderer1`, `virgl-server` (the render server)
//! and `mesa-vulkan-drivers` (lavapipe); `tests/renderer-probe/run.sh`
//! makes one. Run with `--ignored` and without `GH_VIRGL_ROOT`, it fails.

use std::path::Path;
use std::process::Command;

use gpu_hostmem_renderer::backend::Backend;
use gpu_hostmem_renderer::virgl::{VirglBackend, CAPSET_VENUS, SONAME};
use gpu_hostmem_renderer::{RendererLimits, RendererState};

mod common;
use common::FakeRegistrar;
use gpu_hostmem_virtio_gpu::blob::TEST_CAPSET_ID;
use gpu_hostmem_virtio_gpu::renderer_proto::{Op, Request};

const ROOT_ENV: &str = "GH_VIRGL_ROOT";
const INSIDE_ENV: &str = "GH_VIRGL_INSIDE";
const NAME: &str = "venus_capset_context_and_blob_id_0_from_libvirglrenderer";

/// The line of /proc/self/maps whose range holds `[addr, addr + len)`.
fn vma_of(addr: usize, len: u64) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
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

/// What runs inside the root.
fn inside() {
    let backend = match VirglBackend::new(SONAME) {
        Ok(b) => b,
        Err(e) => panic!("venus backend: {e}"),
    };
    // The library's state is global: a second one in this process is
    // refused while the first lives.
    match VirglBackend::new(SONAME) {
        Err(e) => {
            println!("a second venus backend: {e}");
            assert_eq!(e.errno(), libc::EBUSY);
        }
        Ok(_) => panic!("two initialised libvirglrenderer in one process"),
    }
    let mut st =
        RendererState::with_backend(FakeRegistrar::default(), backend, RendererLimits::default());
    let mut seq = 0;
    let mut next = |op| {
        seq += 1;
        Request::new(op, seq)
    };
    // Capset info from the library, over the protocol's handler.
    let r = st.handle(&Request {
        capset: CAPSET_VENUS,
        ..next(Op::CapsetInfo)
    });
    println!(
        "venus capset info: errno {} max_version {} max_size {}",
        r.errno, r.map_info, r.handle
    );
    assert_eq!(r.errno, 0);
    // libvirglrenderer 1.1 says max_version 0 for venus; the size is
    // that of `struct virgl_renderer_capset_venus`.
    assert!(r.handle > 0);
    let (max_version, max_size) = (r.map_info, r.handle);
    // The test capset is not this backend's.
    let r = st.handle(&Request {
        capset: TEST_CAPSET_ID,
        ..next(Op::CapsetInfo)
    });
    println!("test capset info from the venus backend: errno {}", r.errno);
    assert_eq!(r.errno, libc::EINVAL);

    let caps = st
        .backend()
        .capset(CAPSET_VENUS, max_version)
        .expect("venus capset data");
    let wire = u32::from_le_bytes([caps[0], caps[1], caps[2], caps[3]]);
    println!(
        "venus capset data: {} bytes, first word (wire_format_version) {wire}",
        caps.len()
    );
    assert_eq!(caps.len() as u64, max_size);
    assert_ne!(wire, 0);

    // A venus context (the library forks and execs the render server).
    let mut c = next(Op::CreateContext);
    (c.ctx_id, c.capset) = (1, CAPSET_VENUS);
    let r = st.handle(&c);
    println!("create venus context 1: errno {}", r.errno);
    assert_eq!(r.errno, 0);
    let r = st.handle(&Request { seq: 99, ..c });
    println!("create venus context 1 again: errno {}", r.errno);
    assert_eq!(r.errno, libc::EEXIST);

    // blob_id 0: venus's shm blob, made without any venus command.
    let mut b = next(Op::CreateBlob);
    (b.ctx_id, b.capset, b.resource_id, b.blob_id, b.arg) = (1, CAPSET_VENUS, 7, 0, 1 << 20);
    let r = st.handle(&b);
    println!(
        "create blob (blob_id 0, 1 MiB): errno {} handle {}",
        r.errno, r.handle
    );
    assert_eq!(r.errno, 0);
    let h = r.handle;
    let mut m = next(Op::MapBlob);
    (m.handle, m.arg) = (h, 0x20_0000);
    let r = st.handle(&m);
    println!(
        "map blob at window offset 0x200000: errno {} map_info {}",
        r.errno, r.map_info
    );
    assert_eq!(r.errno, 0);
    assert_eq!(r.map_info, 1, "VIRTIO_GPU_MAP_CACHE_CACHED");
    let regs = st.registrar().regs.lock().expect("regs").clone();
    assert_eq!(regs.len(), 1);
    let (addr, len, off) = (regs[0].addr, regs[0].size, regs[0].offset);
    let vma = vma_of(addr, len).expect("the registered range is mapped");
    println!("registered {addr:#x}+{len:#x} at {off:#x}; its VMA: {vma}");
    assert_eq!((len, off), (1 << 20, 0x20_0000));
    assert!(vma.contains(" rw-s ") && vma.contains("memfd:vkr-shmem"));
    let r = st.handle(&Request {
        handle: h,
        ..next(Op::UnmapBlob)
    });
    assert_eq!(r.errno, 0);
    let left = st.registrar().regs.lock().expect("regs").len();
    assert_eq!(left, 0);
    println!(
        "unmapped: registrations left {left}, VMA now {:?}",
        vma_of(addr, len)
    );
    let r = st.handle(&Request {
        handle: h,
        ..next(Op::DestroyBlob)
    });
    assert_eq!(r.errno, 0);
    let r = st.handle(&Request {
        ctx_id: 1,
        ..next(Op::DestroyContext)
    });
    assert_eq!(r.errno, 0);
    drop(st);
    println!("VIRGL TEST RAN: venus capset, context and blob_id 0 through libvirglrenderer");
}

#[test]
#[ignore = "needs GH_VIRGL_ROOT (a trixie root with libvirglrenderer 1.1) and root; see the file's header"]
fn venus_capset_context_and_blob_id_0_from_libvirglrenderer() {
    if std::env::var_os(INSIDE_ENV).is_some() {
        inside();
        return;
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
    // the run and the root on disk is not changed.
    let script = format!(
        r#"mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" &&
        mount -t tmpfs tmpfs "$0/tmp" && cp "$1" "$0/tmp/virgl-test" &&
        exec chroot "$0" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp \
            {INSIDE_ENV}=1 VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.json \
            /tmp/virgl-test --exact {NAME} --ignored --nocapture --test-threads 1"#
    );
    let out = Command::new("timeout")
        .args(["--kill-after=10", "120", "unshare", "-m", "-p", "-f"])
        .args(["--propagation", "private", "sh", "-c", &script])
        .arg(root)
        .arg(&exe)
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "in the root: {}", out.status);
    assert!(
        stdout.contains("VIRGL TEST RAN"),
        "the test did not run in the root"
    );
}

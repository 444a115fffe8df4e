//! The Rust mirror of `struct gpu_hostmem_domain` against the C header, and
//! the built cdylib loaded the way libxl loads it (a C program using the
//! header's symbol names). Needs the system C compiler, nothing of Xen.

use gpu_hostmem_plugin::abi::{GpuHostmemDomain, GpuHostmemServer};
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds tests/c/abi_check.c against plugin/include (once per run).
fn checker() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_checker).clone()
}

fn build_checker() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("abi_check");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(manifest().join("../include"))
        .arg("-o")
        .arg(&out)
        .arg(manifest().join("tests/c/abi_check.c"))
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) is needed for the ABI test");
    assert!(st.success(), "compiling abi_check.c failed");
    out
}

fn run(exe: &Path, args: &[&Path]) -> String {
    let o = Command::new(exe)
        .args(args)
        .output()
        .expect("run abi_check");
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "abi_check failed: {s}");
    s
}

#[test]
fn struct_layout_matches_the_header() {
    let out = run(&checker(), &[]);
    let rust = format!(
        "size {} align {}\nabi_version {} domid {} uuid {} bar_size_mib {} max_vcpus {} flags {}\n\
         server size {} path {} argv {} log_path {}\n",
        size_of::<GpuHostmemDomain>(),
        align_of::<GpuHostmemDomain>(),
        offset_of!(GpuHostmemDomain, abi_version),
        offset_of!(GpuHostmemDomain, domid),
        offset_of!(GpuHostmemDomain, uuid),
        offset_of!(GpuHostmemDomain, bar_size_mib),
        offset_of!(GpuHostmemDomain, max_vcpus),
        offset_of!(GpuHostmemDomain, flags),
        size_of::<GpuHostmemServer>(),
        offset_of!(GpuHostmemServer, path),
        offset_of!(GpuHostmemServer, argv),
        offset_of!(GpuHostmemServer, log_path),
    );
    assert_eq!(out, rust, "C (left) and Rust (right) disagree");
}

#[test]
fn libxl_style_loading_finds_three_hooks_and_the_version() {
    // `cargo test` leaves the cdylib beside this test binary (deps/);
    // `cargo build` also copies it one level up.
    let exe = std::env::current_exe().expect("test exe");
    let deps = exe.parent().expect("deps dir");
    let so = [deps.to_path_buf(), deps.join("..")]
        .iter()
        .map(|d| d.join("libgpu_hostmem_plugin.so"))
        .find(|p| p.exists())
        .expect("libgpu_hostmem_plugin.so is built with the tests");
    let out = run(&checker(), &[&so]);
    assert!(out.contains("version 2 header 2\n"), "{out}");
    assert!(out.contains("create-flags -22 EINVAL\n"), "{out}");
    assert!(out.contains("reason flags 0x1: must be 0\n"), "{out}");
    assert!(out.contains("server none\n"), "{out}");
    assert!(out.contains("destroy-null -22 EINVAL\n"), "{out}");
}

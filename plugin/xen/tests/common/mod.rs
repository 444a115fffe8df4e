//! Builds the fake Xen library (plugin/xen/tests/fake/fakexen.c) once per
//! test binary. Shared with the tests of gpu-hostmem-host (`#[path]`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Path of the fake library, built with the system C compiler.
pub fn fake_lib() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| build("", &[]))
}

/// The fake library without `xendevicemodel_get_retry_stats`, as a
/// libxendevicemodel without the gpu-hostmem series.
#[allow(dead_code)]
pub fn fake_lib_without_retry_stats() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| build("-no-retry-stats", &["-DFAKE_NO_RETRY_STATS"]))
}

fn build(suffix: &str, defines: &[&str]) -> String {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xen/tests/fake/fakexen.c");
    let exe = std::env::current_exe().expect("test binary path");
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("libfakexen-{stem}{suffix}.so"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(&cc)
        .args(["-shared", "-fPIC", "-w"])
        .args(defines)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed to build the fake Xen library");
    assert!(st.success(), "building {} failed", src.display());
    out.to_string_lossy().into_owned()
}

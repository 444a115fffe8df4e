//! libxl sizes a gpu_hostmem guest's paging pool with its own C copy of
//! the formula (`libxl__gpu_hostmem_paging_memkb`, libxl-patches/0005): libxl
//! cannot link the plugin's Rust. This test takes the expression from the
//! patch as it stands, compiles it with the host's C compiler and checks it
//! against `gpu_hostmem_core::limits::bar_paging_kib` for every BAR size
//! libxl accepts (1 MiB to 64 GiB, whole MiB), so the two copies cannot
//! drift apart unnoticed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpu_hostmem_core::limits::bar_paging_kib;

fn patches() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../libxl-patches")
}

/// The one patch of the series whose text contains `needle`.
fn patch_with(needle: &str) -> String {
    let mut found: Vec<String> = fs::read_dir(patches())
        .expect("libxl-patches/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .map(|p| fs::read_to_string(&p).expect("read patch"))
        .filter(|t| t.contains(needle))
        .collect();
    assert_eq!(found.len(), 1, "exactly one patch defines {needle}");
    found.remove(0)
}

/// The expression returned at the end of the C function, from the added
/// lines of the patch: `return 4 * (...);` over one or more lines.
fn c_expression() -> String {
    let text = patch_with("\n+unsigned long libxl__gpu_hostmem_paging_memkb(");
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("+unsigned long libxl__gpu_hostmem_paging_memkb("))
        .take_while(|l| *l != "+}")
        .collect();
    let start = body
        .iter()
        .rposition(|l| {
            l.trim_start_matches('+')
                .trim_start()
                .starts_with("return ")
        })
        .expect("a return statement in libxl__gpu_hostmem_paging_memkb");
    let mut expr = String::new();
    for l in &body[start..] {
        expr.push_str(l.trim_start_matches('+').trim());
        expr.push(' ');
        if l.trim_end().ends_with(';') {
            break;
        }
    }
    let expr = expr.trim();
    let expr = expr.strip_prefix("return ").expect("return");
    expr.strip_suffix(';').expect("ends with ;").to_string()
}

fn compile(src: &Path, exe: &Path) {
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-Wall", "-Werror", "-O1", "-o"])
        .arg(exe)
        .arg(src)
        .status()
        .expect("run the C compiler");
    assert!(st.success(), "compiling {}", src.display());
}

#[test]
fn libxl_and_the_plugin_size_paging_memory_alike() {
    let max_mib: u64 = 64 * 1024;
    assert!(
        patch_with("\n+#define LIBXL_GPU_HOSTMEM_SIZE_MAX_MIB")
            .contains("#define LIBXL_GPU_HOSTMEM_SIZE_MAX_MIB (64 * 1024)"),
        "libxl's largest BAR is 64 GiB, the range checked here"
    );
    let expr = c_expression();
    let dir = std::env::temp_dir().join(format!("gh-paging-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("paging.c");
    let exe = dir.join("paging");
    fs::write(
        &src,
        format!(
            "#include <inttypes.h>\n#include <stdio.h>\n\
             /* as in Xen's tools/include/xen-tools/common-macros.h */\n\
             #define DIV_ROUNDUP(n, d) (((n) + (d) - 1) / (d))\n\
             static uint64_t kb(uint64_t size) {{ return {expr}; }}\n\
             int main(void) {{\n\
                 for (uint64_t s = 1; s <= {max_mib}; s++)\n\
                     printf(\"%\" PRIu64 \"\\n\", kb(s));\n\
                 return 0;\n\
             }}\n"
        ),
    )
    .expect("write C");
    compile(&src, &exe);
    let out = Command::new(&exe).output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut n = 0u64;
    for (i, line) in text.lines().enumerate() {
        let mib = i as u64 + 1;
        let c: u64 = line.parse().expect("a number");
        assert_eq!(
            c,
            bar_paging_kib(mib << 20),
            "libxl and the plugin disagree for a {mib} MiB BAR"
        );
        n += 1;
    }
    assert_eq!(n, max_mib, "every size was compared");
    let _ = fs::remove_dir_all(&dir);
}

//! Test-only environment overrides (`GPU_HOSTMEM_IOREQD`,
//! `GPU_HOSTMEM_LOG_DIR`, `GPU_HOSTMEM_RUN_DIR`, `GPU_HOSTMEM_PRIVCMD`),
//! live only in builds with the `test-env` feature. A release build (`cargo
//! build --release --workspace`, the test bed's build included) ignores
//! them, so that nobody's environment can choose the binary libxl's plugin
//! runs as root, the directory teardown deletes files in, or the privcmd
//! device. The crates' own tests enable the feature through their
//! dev-dependencies.

use std::ffi::OsString;

/// Whether this build honours the test-only overrides.
pub const ENABLED: bool = cfg!(feature = "test-env");

/// `std::env::var_os(name)` in a `test-env` build, `None` otherwise.
pub fn var_os(name: &str) -> Option<OsString> {
    if ENABLED {
        std::env::var_os(name)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_follow_the_feature() {
        // PATH is always set: only the feature decides.
        assert_eq!(var_os("PATH").is_some(), ENABLED);
        assert_eq!(var_os("GPU_HOSTMEM_NO_SUCH_VARIABLE"), None);
    }
}

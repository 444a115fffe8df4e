//! `/etc/xen/gpu-hostmem.yaml`: defaults for every guest with
//! `gpu_hostmem = 1`.
//!
//! [`EXAMPLE_YAML`] lists every key with its default and allowed range.
//!
//! Every key is optional; unknown keys are errors; every bad value is an
//! error naming the key and its allowed range.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::limits::Limits;
use crate::pci::{PciIds, MAX_BAR_SIZE, MIN_BAR_SIZE};

/// BAR size in MiB of a guest for which the toolstack passes none (only
/// gpu-hostmem-ioreqd run by hand: libxl always passes xl.cfg's
/// `gpu_hostmem_size`, whose default, `LIBXL_GPU_HOSTMEM_SIZE_DEFAULT_MIB`
/// in libxl-patches/0008, is the same). This file sets no BAR size.
pub const DEFAULT_BAR_SIZE_MIB: u64 = 2048;
const _: () = assert!(
    (DEFAULT_BAR_SIZE_MIB << 20).is_power_of_two()
        && DEFAULT_BAR_SIZE_MIB << 20 >= MIN_BAR_SIZE
        && DEFAULT_BAR_SIZE_MIB << 20 <= MAX_BAR_SIZE
);

/// The smallest lent-page limit: one request must fit, with room left.
pub const MIN_LENT_PAGES: u64 = 16;

/// The lowest slot of bus 0 that QEMU does not always take in a Xen HVM
/// guest (0: i440FX host bridge, 1: PIIX3 ISA/IDE/USB/ACPI functions, 2: the
/// Xen platform device, created with the machine). QEMU gives every
/// device without a fixed address (VGA, emulated NICs, USB, sound, AHCI)
/// the lowest free slot from here up, in the order of its command line.
pub const FIRST_FREE_SLOT: u64 = 3;

/// PCI vendor id reserved for Xen (`docs/misc/pci-device-reservations.txt`
/// in Xen): device 0x0001 (and 0x0002 on XenServer) is the Xen platform
/// device.
pub const XEN_VENDOR_ID: u64 = 0x5853;

/// A complete file with every key at its default value: the shipped
/// `examples/gpu-hostmem.yaml` itself.
pub const EXAMPLE_YAML: &str = include_str!("../../../examples/gpu-hostmem.yaml");

/// Default path of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/xen/gpu-hostmem.yaml";

/// Where logs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// Standard error.
    Stderr,
    /// The systemd journal.
    Journald,
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Lifecycle steps (default).
    Info,
    /// Every request.
    Debug,
    /// Everything.
    Trace,
}

/// `log:` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Target.
    pub target: LogTarget,
    /// Level.
    pub level: LogLevel,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            target: LogTarget::Stderr,
            level: LogLevel::Info,
        }
    }
}

/// Which device the guest sees in `pci_slot`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Device {
    /// The plain gpu-hostmem function: the window BAR only, with
    /// `vendor_id`/`device_id` (default).
    #[default]
    Hostmem,
    /// A virtio-gpu device (1af4:1050) whose host-visible shared memory
    /// region is the window BAR (docs/virtio-gpu.md): the guest's
    /// unmodified `virtio_gpu` driver binds to it.
    VirtioGpu,
}

impl Device {
    /// The name the file uses.
    pub fn name(self) -> &'static str {
        match self {
            Device::Hostmem => "hostmem",
            Device::VirtioGpu => "virtio-gpu",
        }
    }
}

/// What serves the renderer's contexts and blobs (`virtio_gpu.backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RendererBackend {
    /// The renderer's own test backend: the test-only capset (with
    /// `test_capset`), blobs that are memfds of the renderer (default).
    #[default]
    Test,
    /// Venus (Vulkan, capset 4) through libvirglrenderer 1.1, loaded by
    /// the renderer at start (Debian: `libvirglrenderer1`, `virgl-server`
    /// and a Vulkan driver, e.g. `mesa-vulkan-drivers`).
    Venus,
}

impl RendererBackend {
    /// The name the file and the renderer's `--backend` use.
    pub fn name(self) -> &'static str {
        match self {
            RendererBackend::Test => "test",
            RendererBackend::Venus => "venus",
        }
    }
}

/// `virtio_gpu:` section (only with `device: virtio-gpu`): the renderer
/// process that serves contexts and host-visible blobs
/// (docs/virtio-gpu.md, stage 2).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VirtioGpuConfig {
    /// The renderer executable (absolute), started per guest by the IOREQ
    /// server's supervisor with a privcmd file restricted to the guest and
    /// narrowed to registering memory. None: no renderer, every context
    /// and blob command refused.
    pub renderer: Option<PathBuf>,
    /// The user the renderer runs as (a name or `UID:GID`, never root).
    pub renderer_user: String,
    /// Supplementary groups of the renderer (names or numbers, never 0),
    /// in place of none: what gives it (and the render server it forks)
    /// the devices a Vulkan driver opens, such as `/dev/udmabuf` (trixie:
    /// group `kvm`) or a GPU's render node (group `render`).
    pub renderer_groups: Vec<String>,
    /// Offer the test-only capset (a context type whose blobs are plain
    /// renderer memory with a pattern), for the end-to-end test. Off by
    /// default; needs `renderer` and the test backend.
    pub test_capset: bool,
    /// The renderer's backend; `venus` offers capset 4 (needs `renderer`).
    pub backend: RendererBackend,
}

impl Default for VirtioGpuConfig {
    fn default() -> Self {
        VirtioGpuConfig {
            renderer: None,
            renderer_user: "nobody".into(),
            renderer_groups: Vec::new(),
            test_capset: false,
            backend: RendererBackend::Test,
        }
    }
}

/// `limits:` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Registrations per guest.
    pub max_registrations: u64,
    /// Pages lent per guest.
    pub max_lent_pages: u64,
    /// Faults per second.
    pub fault_rate: u64,
    /// Fault burst.
    pub fault_burst: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_registrations: u64::from(l.max_registrations),
            max_lent_pages: l.max_lent_pages,
            fault_rate: l.fault_rate,
            fault_burst: l.fault_burst,
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Not a setting: the BAR size is xl.cfg's `gpu_hostmem_size`. An old
    /// file's `bar_size_mib` (which never applied: libxl always passes
    /// the size) is refused with a message saying so.
    bar_size_mib: Option<u64>,
    /// The device the guest sees.
    pub device: Device,
    /// PCI slot (device number) on bus 0.
    pub pci_slot: u64,
    /// Vendor id.
    pub vendor_id: u64,
    /// Device id.
    pub device_id: u64,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: u64,
    /// Subsystem id.
    pub subsystem_id: u64,
    /// Fault-around chunk in KiB.
    pub fault_around_kib: u64,
    /// Limits.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// The user the IOREQ server drops to once its handles are open and
    /// restricted to the guest: a user name, `UID:GID`, or `root` (no drop,
    /// no seccomp filter: for debugging only).
    pub run_as: String,
    /// The virtio-gpu device's renderer.
    pub virtio_gpu: VirtioGpuConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bar_size_mib: None,
            device: Device::Hostmem,
            pci_slot: 5,
            vendor_id: 0x1af4,
            device_id: 0x10f0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x0001,
            fault_around_kib: 2048,
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            run_as: "nobody".into(),
            virtio_gpu: VirtioGpuConfig::default(),
        }
    }
}

/// A configuration error.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid YAML for this schema (unknown key, wrong type...).
    #[error("{path}: {message}")]
    Parse {
        /// File (or `<string>`).
        path: PathBuf,
        /// Parser message, naming the key.
        message: String,
    },
    /// A value out of its range.
    #[error("{path}: {key} = {value}: must be {allowed}")]
    Range {
        /// File (or `<string>`).
        path: PathBuf,
        /// Dotted key, e.g. `limits.max_lent_pages`.
        key: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range, in words.
        allowed: &'static str,
    },
}

/// The parser's message made for an operator: its first line only (the
/// rest is a source excerpt), without advice about parser options, and
/// with the dotted key at the line it names (`limits.fault_rate`), which
/// the parser leaves out of type errors ("invalid u64").
fn parse_message(text: &str, raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw).trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = first
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(first);
    let line = first
        .strip_prefix("line ")
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok());
    match line.and_then(|l| key_at_line(text, l)) {
        Some(key) => format!("key `{key}`: {first}"),
        None => first.to_owned(),
    }
}

/// The dotted key whose `key:` is on 1-based `line` of a block-style YAML
/// mapping, from the indentation of the lines before it.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let body = l.split('#').next().unwrap_or("");
        let trimmed = body.trim_start();
        if trimmed.is_empty() {
            if i + 1 == line {
                return None;
            }
            continue;
        }
        let indent = body.len() - trimmed.len();
        let key = trimmed.split_once(':').map(|(k, _)| k.trim().to_owned());
        while stack.last().is_some_and(|(d, _)| *d >= indent) {
            stack.pop();
        }
        if let Some(k) = key {
            stack.push((indent, k));
        }
        if i + 1 == line {
            let keys: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            return (!keys.is_empty()).then(|| keys.join("."));
        }
    }
    None
}

impl Config {
    /// Read and validate a file. A missing file at the default path gives
    /// the defaults; a missing file named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(s) => Config::parse(&s, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parse and validate YAML text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: parse_message(text, &e.to_string()),
            })?
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |key, value, allowed| ConfigError::Range {
            path: path.to_path_buf(),
            key,
            value,
            allowed,
        };
        let pow2_in = |v: u64, lo: u64, hi: u64| v.is_power_of_two() && (lo..=hi).contains(&v);
        if self.bar_size_mib.is_some() {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: "bar_size_mib is not read: a guest's BAR size is xl.cfg's \
                          gpu_hostmem_size (default 2048 MiB); remove the key"
                    .into(),
            });
        }
        // Slots 0, 1 and 2 of bus 0 are QEMU's in every Xen HVM guest (host
        // bridge, PIIX3, Xen platform device); Xen would route their config
        // cycles to us and hide QEMU's device (docs/operator-guide.md).
        if !(FIRST_FREE_SLOT..=31).contains(&self.pci_slot) {
            return Err(err(
                "pci_slot",
                self.pci_slot,
                "3 .. 31 (0, 1 and 2 are QEMU's host bridge, PIIX3 and Xen platform device)",
            ));
        }
        for (key, v) in [
            ("vendor_id", self.vendor_id),
            ("device_id", self.device_id),
            ("subsystem_vendor_id", self.subsystem_vendor_id),
        ] {
            if v == 0 || v >= 0xffff {
                return Err(err(key, v, "0x0001 .. 0xfffe"));
            }
        }
        // The Xen platform device's ids: the guest's platform driver
        // (Linux xen-platform-pci, Windows PV drivers) would bind to us.
        if self.vendor_id == XEN_VENDOR_ID && matches!(self.device_id, 0x0001 | 0x0002) {
            return Err(err(
                "device_id",
                self.device_id,
                "not 0x0001 or 0x0002 with vendor_id 0x5853 (the Xen platform device)",
            ));
        }
        // A virtio-gpu function has the ids the virtio specification
        // gives it; ids set for the plain function would be ignored.
        let plain = Config::default();
        if self.device == Device::VirtioGpu
            && (self.vendor_id, self.device_id) != (plain.vendor_id, plain.device_id)
        {
            return Err(err(
                if self.vendor_id != plain.vendor_id {
                    "vendor_id"
                } else {
                    "device_id"
                },
                if self.vendor_id != plain.vendor_id {
                    self.vendor_id
                } else {
                    self.device_id
                },
                "left at its default with device: virtio-gpu (the function is then \
                 1af4:1050, the virtio-gpu ids; vendor_id and device_id apply to device: hostmem)",
            ));
        }
        let vg = &self.virtio_gpu;
        let parse_err = |message: &str| ConfigError::Parse {
            path: path.to_path_buf(),
            message: message.into(),
        };
        if self.device != Device::VirtioGpu && *vg != VirtioGpuConfig::default() {
            return Err(parse_err(
                "virtio_gpu: applies to device: virtio-gpu only; remove it or set the device",
            ));
        }
        if vg.renderer.as_deref().is_some_and(|p| !p.is_absolute()) {
            return Err(parse_err("virtio_gpu.renderer must be an absolute path"));
        }
        if vg.test_capset && vg.renderer.is_none() {
            return Err(parse_err(
                "virtio_gpu.test_capset needs virtio_gpu.renderer (the renderer serves it)",
            ));
        }
        if vg.backend != RendererBackend::Test && vg.renderer.is_none() {
            return Err(parse_err(
                "virtio_gpu.backend: venus needs virtio_gpu.renderer (the renderer loads it)",
            ));
        }
        if vg.test_capset && vg.backend != RendererBackend::Test {
            return Err(parse_err(
                "virtio_gpu.test_capset is served by virtio_gpu.backend: test only; \
                 remove one of them",
            ));
        }
        if vg.renderer_user == "root" || vg.renderer_user.starts_with("0:") {
            return Err(parse_err(
                "virtio_gpu.renderer_user must not be root: the renderer needs no privilege \
                 beyond the privcmd file it is handed",
            ));
        }
        if let Some(g) = vg
            .renderer_groups
            .iter()
            .find(|g| g.as_str() == "root" || g.as_str() == "0" || g.is_empty())
        {
            return Err(parse_err(&format!(
                "virtio_gpu.renderer_groups: {g:?}: not the root group, nor an empty name"
            )));
        }
        if self.subsystem_id > 0xffff {
            return Err(err("subsystem_id", self.subsystem_id, "0x0000 .. 0xffff"));
        }
        if !pow2_in(self.fault_around_kib, 4, 1 << 20) {
            return Err(err(
                "fault_around_kib",
                self.fault_around_kib,
                "a power of two from 4 to 1048576 (4 KiB .. 1 GiB)",
            ));
        }
        let l = &self.limits;
        if !(1..=65536).contains(&l.max_registrations) {
            return Err(err(
                "limits.max_registrations",
                l.max_registrations,
                "1 .. 65536",
            ));
        }
        // One request touches up to two pages, which must be lent at once
        // for Xen to complete it, while other vCPUs hold theirs.
        if !(MIN_LENT_PAGES..=1 << 28).contains(&l.max_lent_pages) {
            return Err(err(
                "limits.max_lent_pages",
                l.max_lent_pages,
                "16 .. 268435456 (1 TiB of 4 KiB pages)",
            ));
        }
        if l.fault_rate == 0 || l.fault_rate > 100_000_000 {
            return Err(err("limits.fault_rate", l.fault_rate, "1 .. 100000000"));
        }
        if l.fault_burst == 0 || l.fault_burst > 100_000_000 {
            return Err(err("limits.fault_burst", l.fault_burst, "1 .. 100000000"));
        }
        Ok(())
    }

    /// Fault-around chunk in bytes.
    pub fn fault_around(&self) -> u64 {
        self.fault_around_kib << 10
    }

    /// The PCI ids (validated to fit).
    pub fn pci_ids(&self) -> PciIds {
        PciIds {
            vendor: self.vendor_id as u16,
            device: self.device_id as u16,
            subsystem_vendor: self.subsystem_vendor_id as u16,
            subsystem: self.subsystem_id as u16,
            revision: 1,
        }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_registrations: self.limits.max_registrations as u32,
            max_lent_pages: self.limits.max_lent_pages,
            fault_rate: self.limits.fault_rate,
            fault_burst: self.limits.fault_burst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.yaml"))
    }

    fn range_key(s: &str) -> &'static str {
        match parse(s) {
            Err(ConfigError::Range { key, .. }) => key,
            other => panic!("expected a range error for {s:?}, got {other:?}"),
        }
    }

    /// The shipped example is valid and lists every key at its default.
    #[test]
    fn example_is_valid_and_equals_defaults() {
        assert_eq!(parse(EXAMPLE_YAML).expect("example"), Config::default());
    }

    /// Type errors and duplicate keys name the dotted key and say no more
    /// than a line (issue 19: they printed "invalid u64" and parser
    /// internals).
    #[test]
    fn parse_errors_name_the_key() {
        let msg = |s: &str| match parse(s) {
            Err(ConfigError::Parse { message, .. }) => message,
            other => panic!("expected a parse error for {s:?}, got {other:?}"),
        };
        let m = msg("pci_slot: abc\n");
        assert!(m.starts_with("key `pci_slot`: line 1"), "{m}");
        let m = msg("log:\n  level: info\nlimits:\n  fault_rate: -1\n");
        assert!(m.starts_with("key `limits.fault_rate`: line 4"), "{m}");
        let m = msg("limits:\n  # a comment\n\n  max_lent_pages: 1.5   # half\n");
        assert!(m.starts_with("key `limits.max_lent_pages`:"), "{m}");
        let m = msg("pci_slot: 3\npci_slot: 4\n");
        assert!(
            m.starts_with("key `pci_slot`:") && m.contains("duplicate"),
            "{m}"
        );
        assert!(
            !m.contains("DuplicateKeyPolicy") && !m.contains('\n'),
            "{m}"
        );
        let m = msg("bogus: 1\n");
        assert!(m.contains("unknown field `bogus`"), "{m}");
    }

    /// The shipped example, when present, stays valid.
    #[test]
    fn shipped_example_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/gpu-hostmem.yaml");
        if p.exists() {
            Config::load(&p, true).expect("examples/gpu-hostmem.yaml is valid");
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").expect("defaults"), Config::default());
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            "pci_slot: 7\nvendor_id: 0x1234\ndevice_id: 0x5678\n\
             subsystem_vendor_id: 0x1234\nsubsystem_id: 2\nfault_around_kib: 64\n\
             limits:\n  max_registrations: 10\n  max_lent_pages: 1000\n  fault_rate: 50\n\
             \x20 fault_burst: 5\nlog:\n  target: journald\n  level: debug\n",
        )
        .expect("valid");
        assert_eq!(c.pci_slot, 7);
        assert_eq!(c.pci_ids().vendor, 0x1234);
        assert_eq!(c.fault_around(), 64 << 10);
        assert_eq!(c.limits().fault_burst, 5);
        assert_eq!(c.log.target, LogTarget::Journald);
        assert_eq!(c.log.level, LogLevel::Debug);
    }

    #[test]
    fn unknown_keys_are_rejected_naming_the_key() {
        for s in [
            "bar_sise_mib: 4\n",
            "limits:\n  max_pages: 3\n",
            // Xen bounds the resends of a request itself now.
            "limits:\n  max_retries: 8\n",
            "log:\n  file: x\n",
        ] {
            match parse(s) {
                Err(ConfigError::Parse { message, .. }) => {
                    assert!(message.contains("unknown field"), "{message}")
                }
                other => panic!("{s:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bar_size_mib_is_refused_naming_xl_cfg() {
        for s in ["bar_size_mib: 1024\n", "bar_size_mib: 3\n"] {
            match parse(s) {
                Err(ConfigError::Parse { message, .. }) => {
                    assert!(message.contains("gpu_hostmem_size"), "{message}")
                }
                other => panic!("{s:?}: {other:?}"),
            }
        }
        assert!(!EXAMPLE_YAML.contains("bar_size_mib"));
    }

    #[test]
    fn bad_values_name_key_and_range() {
        assert_eq!(range_key("pci_slot: 32\n"), "pci_slot");
        assert_eq!(range_key("pci_slot: 2\n"), "pci_slot");
        assert_eq!(range_key("pci_slot: 0\n"), "pci_slot");
        assert_eq!(parse("pci_slot: 3\n").map(|c| c.pci_slot).ok(), Some(3));
        assert_eq!(
            range_key("vendor_id: 0x5853\ndevice_id: 0x0001\n"),
            "device_id"
        );
        assert_eq!(range_key("vendor_id: 0x5853\ndevice_id: 2\n"), "device_id");
        // Another id under Xen's vendor id (one reserved in Xen's registry).
        assert!(parse("vendor_id: 0x5853\ndevice_id: 0xc200\n").is_ok());
        assert_eq!(range_key("vendor_id: 0xffff\n"), "vendor_id");
        assert_eq!(range_key("device_id: 0\n"), "device_id");
        assert_eq!(range_key("fault_around_kib: 2\n"), "fault_around_kib");
        assert_eq!(
            range_key("limits:\n  max_lent_pages: 0\n"),
            "limits.max_lent_pages"
        );
        assert_eq!(range_key("limits:\n  fault_rate: 0\n"), "limits.fault_rate");
        assert_eq!(
            range_key("limits:\n  max_lent_pages: 15\n"),
            "limits.max_lent_pages"
        );
        assert_eq!(
            range_key("limits:\n  max_registrations: 0\n"),
            "limits.max_registrations"
        );
        let msg = parse("pci_slot: 40\n").map_err(|e| e.to_string());
        assert_eq!(
            msg.err().as_deref(),
            Some(
                "test.yaml: pci_slot = 40: must be 3 .. 31 (0, 1 and 2 are QEMU's host bridge, \
                 PIIX3 and Xen platform device)"
            )
        );
    }

    #[test]
    fn the_renderer_section_is_checked() {
        let c = parse(
            "device: virtio-gpu\nvirtio_gpu:\n  renderer: /usr/lib/gpu-hostmem/bin/gpu-hostmem-renderer\n  test_capset: true\n",
        )
        .expect("valid");
        assert!(c.virtio_gpu.test_capset);
        assert_eq!(c.virtio_gpu.renderer_user, "nobody");
        assert_eq!(
            parse("").expect("defaults").virtio_gpu,
            VirtioGpuConfig::default()
        );
        assert!(!VirtioGpuConfig::default().test_capset, "off by default");
        assert_eq!(c.virtio_gpu.backend, RendererBackend::Test, "the default");
        let v = parse("device: virtio-gpu\nvirtio_gpu:\n  renderer: /bin/r\n  backend: venus\n")
            .expect("venus");
        assert_eq!(v.virtio_gpu.backend, RendererBackend::Venus);
        assert_eq!(v.virtio_gpu.backend.name(), "venus");
        assert!(v.virtio_gpu.renderer_groups.is_empty(), "none by default");
        let g = parse("device: virtio-gpu\nvirtio_gpu:\n  renderer: /bin/r\n  renderer_groups: [kvm, \"993\"]\n")
            .expect("groups");
        assert_eq!(g.virtio_gpu.renderer_groups, ["kvm", "993"]);
        for (bad, why) in [
            (
                "virtio_gpu:\n  test_capset: false\n  renderer: /bin/r\n",
                "applies to device: virtio-gpu",
            ),
            (
                "device: virtio-gpu\nvirtio_gpu:\n  renderer: bin/r\n",
                "absolute",
            ),
            (
                "device: virtio-gpu\nvirtio_gpu:\n  test_capset: true\n",
                "needs virtio_gpu.renderer",
            ),
            (
                "device: virtio-gpu\nvirtio_gpu:\n  renderer: /bin/r\n  renderer_user: root\n",
                "must not be root",
            ),
            (
                "device: virtio-gpu\nvirtio_gpu:\n  renderer: /bin/r\n  renderer_user: \"0:0\"\n",
                "must not be root",
            ),
            (
                "device: virtio-gpu\nvirtio_gpu:\n  renderer: /bin/r\n  renderer_groups: [kvm, root]\n",
                "renderer_groups: \"root\"",
            ),
            (
                "device: virtio-gpu\nvirtio_gpu:\n  renderer: /bin/r\n  renderer_groups: [\"0\"]\n",
                "renderer_groups: \"0\"",
            ),
            (
                "device: virtio-gpu\nvirtio_gpu:\n  backend: venus\n",
                "virtio_gpu.backend: venus needs virtio_gpu.renderer",
            ),
            (
                "device: virtio-gpu\nvirtio_gpu:\n  renderer: /bin/r\n  backend: venus\n  test_capset: true\n",
                "virtio_gpu.test_capset is served by virtio_gpu.backend: test only",
            ),
            (
                "device: virtio-gpu\nvirtio_gpu:\n  renderer: /bin/r\n  backend: vulkan\n",
                "key `virtio_gpu.backend`:",
            ),
            (
                "device: virtio-gpu\nvirtio_gpu:\n  renderer: /bin/r\n  backend: Venus\n",
                "key `virtio_gpu.backend`:",
            ),
            (
                "virtio_gpu:\n  backend: venus\n  renderer: /bin/r\n",
                "applies to device: virtio-gpu",
            ),
        ] {
            match parse(bad) {
                Err(ConfigError::Parse { message, .. }) => {
                    assert!(message.contains(why), "{bad}: {message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn device_selects_hostmem_or_virtio_gpu() {
        assert_eq!(parse("").expect("defaults").device, Device::Hostmem);
        assert_eq!(
            parse("device: hostmem\n").expect("valid").device,
            Device::Hostmem
        );
        let c = parse("device: virtio-gpu\nsubsystem_id: 0x1100\n").expect("valid");
        assert_eq!(c.device, Device::VirtioGpu);
        assert_eq!(c.device.name(), "virtio-gpu");
        // The example's explicit default ids are fine with either device.
        assert!(parse("device: virtio-gpu\nvendor_id: 0x1af4\ndevice_id: 0x10f0\n").is_ok());
        match parse("device: virtio_gpu\n") {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.starts_with("key `device`:"), "{message}");
                assert!(message.contains("virtio-gpu"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            range_key("device: virtio-gpu\ndevice_id: 0x1050\n"),
            "device_id"
        );
        assert_eq!(
            range_key("device: virtio-gpu\nvendor_id: 0x1234\n"),
            "vendor_id"
        );
        let msg = parse("device: virtio-gpu\ndevice_id: 0x1050\n")
            .map_err(|e| e.to_string())
            .unwrap_err();
        assert!(msg.contains("device: hostmem"), "{msg}");
    }

    #[test]
    fn bad_log_target_is_rejected() {
        assert!(matches!(
            parse("log:\n  target: syslog\n"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn missing_default_file_gives_defaults_but_missing_explicit_file_fails() {
        let p = Path::new("/nonexistent/gpu-hostmem.yaml");
        assert!(Config::load(p, false).is_ok());
        assert!(matches!(Config::load(p, true), Err(ConfigError::Io { .. })));
    }
}

//! tracing to stderr (default) or the journal, as the configuration says.

use gpu_hostmem_core::config::{LogConfig, LogLevel, LogTarget};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Test-only override of the configured level (EnvFilter syntax): honoured
/// only in `test-env` builds ([`gpu_hostmem_xen::testenv`]). A release
/// build logs at the configured `log.level` alone, whatever the
/// environment of the process that started libxl says. The renderer gets
/// the effective filter in this variable from the supervisor, which gives
/// it a cleared environment.
pub const LOG_ENV: &str = "GPU_HOSTMEM_LOG";

fn level(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

/// The filter this process logs with: the test-only override if this
/// build honours it and it is set, else the configured level.
pub fn directive(cfg: &LogConfig) -> String {
    let over = gpu_hostmem_xen::testenv::var_os(LOG_ENV);
    choose(over.as_deref().map(|v| v.to_string_lossy()).as_deref(), cfg)
}

/// `over` if it is a filter that parses, else the configured level.
fn choose(over: Option<&str>, cfg: &LogConfig) -> String {
    over.filter(|v| EnvFilter::try_new(v).is_ok())
        .map_or_else(|| level(cfg.level).to_owned(), str::to_owned)
}

/// Installs the global subscriber. Journald falls back to stderr (with a
/// warning) when the journal socket is not there.
pub fn init(cfg: &LogConfig) {
    let directive = directive(cfg);
    let filter = || EnvFilter::new(&directive);
    let stderr = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
    };
    match cfg.target {
        LogTarget::Stderr => {
            let _ = tracing_subscriber::registry()
                .with(filter())
                .with(stderr())
                .try_init();
        }
        LogTarget::Journald => match tracing_journald::layer() {
            Ok(j) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(j)
                    .try_init();
            }
            Err(e) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(stderr())
                    .try_init();
                tracing::warn!(error = %e, "journald unavailable, logging to stderr");
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_that_does_not_parse_leaves_the_configured_level() {
        let cfg = LogConfig {
            level: LogLevel::Warn,
            ..LogConfig::default()
        };
        assert_eq!(choose(None, &cfg), "warn");
        assert_eq!(choose(Some("gpu_hostmem=trace"), &cfg), "gpu_hostmem=trace");
        assert_eq!(choose(Some("no[such"), &cfg), "warn");
    }
}

//! tracing to stderr (default) or the journal, as the configuration says.

use gpu_hostmem_core::config::{LogConfig, LogLevel, LogTarget};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Environment variable overriding the configured level (EnvFilter syntax).
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

/// Installs the global subscriber. Journald falls back to stderr (with a
/// warning) when the journal socket is not there.
pub fn init(cfg: &LogConfig) {
    let filter =
        || EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(level(cfg.level)));
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

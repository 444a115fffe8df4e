//! Errors of the Xen bindings: every failure names the operation and, where
//! the C library or the kernel reported one, the errno.

use std::io;

/// A failed Xen operation.
#[derive(Debug, thiserror::Error)]
pub enum XenError {
    /// A shared library could not be loaded (Xen tools not installed?).
    #[error("cannot load {library}: {source} (are the Xen tools installed?)")]
    Load {
        library: String,
        #[source]
        source: libloading::Error,
    },
    /// A shared library lacks a symbol we need (too old or too new a Xen).
    #[error("{library} has no symbol {symbol}: {source}")]
    Symbol {
        library: String,
        symbol: &'static str,
        #[source]
        source: libloading::Error,
    },
    /// None of the accepted versioned sonames could be loaded.
    #[error("cannot load any of {tried}: {last}")]
    NoVersion { tried: String, last: String },
    /// A call failed with an errno.
    #[error("{op} failed: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A call returned something inconsistent or an argument was refused
    /// before reaching C.
    #[error("{op}: {reason}")]
    Invalid { op: &'static str, reason: String },
}

impl XenError {
    /// An error from the current thread's errno, as left by a C call (or
    /// a libc call of `gpu-hostmem-host`).
    pub fn last_os(op: &'static str) -> Self {
        XenError::Os {
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// An error with an explicit errno value.
    pub fn from_errno(op: &'static str, errno: i32) -> Self {
        XenError::Os {
            op,
            source: io::Error::from_raw_os_error(errno),
        }
    }

    /// An argument refused, or a result found inconsistent, before or
    /// after the call `op`.
    pub fn invalid(op: &'static str, reason: impl Into<String>) -> Self {
        XenError::Invalid {
            op,
            reason: reason.into(),
        }
    }

    /// The errno of an OS failure, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            XenError::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// An errno for callers that report one (C hooks, the platform traits):
    /// the OS errno, ENOSYS for a missing library or symbol, EINVAL for a
    /// refused argument.
    pub fn as_errno(&self) -> i32 {
        match self {
            XenError::Os { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            XenError::Load { .. } | XenError::Symbol { .. } | XenError::NoVersion { .. } => {
                libc::ENOSYS
            }
            XenError::Invalid { .. } => libc::EINVAL,
        }
    }

    /// The operation that failed, for logs and status.
    pub fn op(&self) -> &'static str {
        match self {
            XenError::Load { .. } | XenError::NoVersion { .. } => "load library",
            XenError::Symbol { symbol, .. } => symbol,
            XenError::Os { op, .. } | XenError::Invalid { op, .. } => op,
        }
    }
}

/// Result of the Xen bindings.
pub type Result<T> = std::result::Result<T, XenError>;

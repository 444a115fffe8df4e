//! Simulated Xen + privcmd platform (work in progress).
#![forbid(unsafe_code)]

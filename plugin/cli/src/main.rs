//! Placeholder: filled in by the Xen bindings work.

fn main() {}

//! The YAML configuration parser must never panic, and whatever it accepts
//! must be within the documented ranges.
#![no_main]

use std::path::Path;

use gpu_hostmem_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(text, Path::new("fuzz.yaml")) {
        assert!(c.pci_slot <= 31);
        assert!(c.fault_around().is_power_of_two() && c.fault_around() >= 4096);
        let l = c.limits();
        assert!(l.max_lent_pages > 0 && l.fault_rate > 0 && l.fault_burst > 0);
    }
});

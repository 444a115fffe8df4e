//! The xenstore record against the fake Xen library of
//! plugin/xen/tests/fake: reading a record that is not there is `None`,
//! and a failed write is an error, not a silent success.

use gpu_hostmem_host::record::{self, key, state, Record};
use gpu_hostmem_xen::XenstoreLib;

#[path = "../../xen/tests/common/mod.rs"]
mod common;
use common::fake_lib;

#[test]
fn record_calls_fail_cleanly() {
    let lib = XenstoreLib::load_from(fake_lib()).expect("fake loads");
    let xs = lib.open().expect("open");
    assert_eq!(Record::read(&xs, 3).expect("absent"), None);
    assert!(record::write(&xs, 3, &[(key::STATE, state::RUNNING)]).is_err());
}

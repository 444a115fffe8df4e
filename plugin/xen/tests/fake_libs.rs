//! The wrappers against a fake Xen library (tests/fake/fakexen.c, built
//! with the system C compiler): missing libraries and symbols are clear
//! errors, and every method fails cleanly with its operation and errno.

use gpu_hostmem_xen::{
    DeviceModelLib, EvtchnLib, ForeignMemoryLib, XenError, XenLibs, XenctrlLib, XenstoreLib,
};

mod common;
use common::{fake_lib, fake_lib_without_retry_stats};

fn errno(e: XenError) -> Option<i32> {
    e.errno()
}

#[test]
fn missing_library_is_a_clear_error() {
    let e = DeviceModelLib::load_from("/nonexistent/libxendevicemodel.so.1").unwrap_err();
    assert!(matches!(e, XenError::Load { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("/nonexistent/libxendevicemodel.so.1"),
        "{e}"
    );
    let e = XenctrlLib::load_from("/nonexistent/libxenctrl.so.4.20").unwrap_err();
    assert!(e.to_string().contains("libxenctrl"), "{e}");
}

#[test]
fn machine_without_xen_fails_at_load_naming_the_library() {
    // This machine has no Xen tools; on one that has them, loading works.
    let have = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libxendevicemodel.so.1").exists()
        || std::path::Path::new("/usr/lib/libxendevicemodel.so.1").exists();
    match XenLibs::load() {
        Ok(_) => assert!(have, "loaded Xen libraries that do not exist?"),
        Err(e) => {
            assert!(!have, "libraries present but load failed: {e}");
            assert!(e.to_string().contains("libxendevicemodel.so.1"), "{e}");
        }
    }
}

#[test]
fn missing_symbol_is_a_clear_error() {
    // libc has none of the Xen symbols: the first one is named.
    let e = DeviceModelLib::load_from("libc.so.6").unwrap_err();
    match &e {
        XenError::Symbol { symbol, .. } => assert_eq!(*symbol, "xendevicemodel_open"),
        other => panic!("expected a symbol error, got {other:?}"),
    }
    assert!(XenstoreLib::load_from("libc.so.6").is_err());
}

#[test]
fn versioned_xenctrl_lists_what_it_tried() {
    if XenctrlLib::load().is_ok() {
        return; // A Xen host: nothing to check here.
    }
    let e = XenctrlLib::load().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("libxenctrl.so.4.20") && msg.contains("libxenctrl.so.4.17"),
        "{msg}"
    );
}

#[test]
fn devicemodel_methods_fail_cleanly() {
    let lib = DeviceModelLib::load_from(fake_lib()).expect("fake loads");
    assert!(lib.has_create_with_flags());
    let dm = lib.open().expect("open");
    assert_eq!(errno(dm.restrict(1).unwrap_err()), Some(libc::EBADF));
    let e = dm.shutdown(1, 3).unwrap_err();
    assert_eq!(
        (e.op(), e.errno()),
        ("xendevicemodel_shutdown", Some(libc::EBADF))
    );
    let sbdf = gpu_hostmem_core::ioreq::Sbdf {
        seg: 0,
        bus: 0,
        dev: 5,
        func: 0,
    };
    let e = dm.set_pci_intx_level(1, sbdf, true).unwrap_err();
    assert_eq!(
        (e.op(), e.errno()),
        ("xendevicemodel_set_pci_intx_level", Some(libc::EBADF))
    );
    // An unpatched hypervisor refuses the RETRY flag with EINVAL: reported
    // as such (falling back is the caller's choice).
    let e = dm.create_ioreq_server(1, true).unwrap_err();
    assert_eq!(e.op(), "xendevicemodel_create_ioreq_server_flags");
    assert_eq!(e.errno(), Some(libc::EINVAL));
    let e = dm.create_ioreq_server(1, false).unwrap_err();
    assert_eq!(e.op(), "xendevicemodel_create_ioreq_server");
    assert_eq!(e.errno(), Some(libc::EBADF));
    assert!(lib.has_retry_stats());
    let e = dm.retry_stats(1).unwrap_err();
    assert_eq!(
        (e.op(), e.errno()),
        ("xendevicemodel_get_retry_stats", Some(libc::EBADF))
    );
}

#[test]
fn a_library_without_the_retry_counters_still_loads() {
    // A libxendevicemodel without the series' counters call: the rest
    // works, reading them is ENOSYS naming the call, never a crash.
    let lib = DeviceModelLib::load_from(fake_lib_without_retry_stats()).expect("loads");
    assert!(!lib.has_retry_stats());
    assert!(lib.has_create_with_flags());
    let dm = lib.open().expect("open");
    let e = dm.retry_stats(1).unwrap_err();
    assert_eq!(
        (e.op(), e.errno()),
        ("xendevicemodel_get_retry_stats", Some(libc::ENOSYS))
    );
}

#[test]
fn foreignmemory_methods_fail_cleanly() {
    let lib = ForeignMemoryLib::load_from(fake_lib()).expect("fake loads");
    let fm = lib.open().expect("open");
    assert_eq!(errno(fm.restrict(1).unwrap_err()), Some(libc::EBADF));
    let e = fm.map_ioreq_page(1, 0, 2).unwrap_err();
    assert_eq!(e.op(), "xenforeignmemory_map_resource");
    assert_eq!(e.errno(), Some(libc::EBADF));
    // Argument checks happen before C is called.
    assert!(matches!(
        fm.map_ioreq_page(1, 0, 0),
        Err(XenError::Invalid { .. })
    ));
    assert!(matches!(
        fm.map_ioreq_page(1, 0, 129),
        Err(XenError::Invalid { .. })
    ));
}

#[test]
fn evtchn_methods_fail_cleanly() {
    let lib = EvtchnLib::load_from(fake_lib()).expect("fake loads");
    let xce = lib.open().expect("open");
    assert!(xce.fd().is_ok());
    assert_eq!(errno(xce.restrict(1).unwrap_err()), Some(libc::EBADF));
    assert_eq!(
        errno(xce.bind_interdomain(1, 5).unwrap_err()),
        Some(libc::EBADF)
    );
    assert_eq!(xce.pending().expect("EAGAIN is nothing pending"), None);
    assert_eq!(errno(xce.unmask(3).unwrap_err()), Some(libc::EBADF));
    assert_eq!(errno(xce.notify(3).unwrap_err()), Some(libc::EBADF));
}

#[test]
fn xenstore_methods_fail_cleanly() {
    let lib = XenstoreLib::load_from(fake_lib()).expect("fake loads");
    let xs = lib.open().expect("open");
    assert_eq!(xs.read("/a").expect("ENOENT is absent"), None);
    assert_eq!(xs.directory("/a").expect("ENOENT is absent"), None);
    xs.rm("/a").expect("removing nothing succeeds");
    assert_eq!(errno(xs.write("/a", "b").unwrap_err()), Some(libc::EACCES));
    assert!(matches!(
        xs.write("/a\0b", "c"),
        Err(XenError::Invalid { .. })
    ));
    assert_eq!(
        errno(xs.watch("@releaseDomain", "t").unwrap_err()),
        Some(libc::EBADF)
    );
    assert_eq!(errno(xs.fd().unwrap_err()), Some(libc::EBADF));
    assert_eq!(xs.check_watch().expect("EAGAIN is nothing fired"), None);
    assert_eq!(errno(xs.transaction().unwrap_err()), Some(libc::EBADF));
}

#[test]
fn xenctrl_checks_the_returned_domid() {
    let lib = XenctrlLib::load_from(fake_lib()).expect("fake loads");
    let xc = lib.open().expect("open");
    // The fake answers with the next domain: not the one asked for.
    assert_eq!(xc.domain_info(5).expect("call works"), None);
    assert_eq!(
        errno(xc.domain_info(0xffff).unwrap_err()),
        Some(libc::EPERM)
    );
    // No fake guest: the paging pool query fails with Xen's errno.
    assert_eq!(
        errno(xc.paging_mempool_size(5).unwrap_err()),
        Some(libc::ESRCH)
    );
}

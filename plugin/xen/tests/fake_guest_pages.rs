//! Mapping guest frames for a device model (virtqueues), against the fake
//! Xen library: the right frame at each page, per-frame failures kept
//! apart, bounds and read-only mappings enforced, unmapped on drop.

mod common;

use gpu_hostmem_xen::{ForeignMemoryLib, XenError};
use std::ffi::c_int;

/// The fake library's counters and its guest are process-wide: the tests
/// that use them take turns (the test harness runs tests in parallel).
static FAKE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Fake {
    lib: libloading::Library,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Fake {
    fn load() -> Self {
        let turn = FAKE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the fake library has no constructors.
        let lib = unsafe { libloading::Library::new(common::fake_lib()) }.expect("load fake");
        Fake { lib, _turn: turn }
    }

    fn set_domain(&self, domid: c_int) {
        // SAFETY: the C prototype is
        // void fake_set_domain(int, const uint8_t[16], uint32_t, int).
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn(c_int, *const u8, u32, c_int)>(b"fake_set_domain\0")
                .expect("symbol");
            f(domid, [0x11u8; 16].as_ptr(), 1, 0);
        }
    }

    fn guest_mapped(&self) -> c_int {
        // SAFETY: `int fake_guest_mapped(void)`.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn() -> c_int>(b"fake_guest_mapped\0")
                .expect("symbol");
            f()
        }
    }
}

#[test]
fn guest_frames_map_page_by_page_and_unmap_on_drop() {
    let fake = Fake::load();
    fake.set_domain(9);
    let fml = ForeignMemoryLib::load_from(common::fake_lib()).expect("fm");
    let fm = fml.open().expect("open");

    // Another domain: the whole call fails with the library's errno.
    let e = fm.map_guest_pages(10, &[1], false).unwrap_err();
    assert_eq!(
        (e.op(), e.errno()),
        ("xenforeignmemory_map", Some(libc::EBADF))
    );
    // Argument checks before C is called.
    assert!(matches!(
        fm.map_guest_pages(9, &[], false),
        Err(XenError::Invalid { .. })
    ));
    assert!(matches!(
        fm.map_guest_pages(9, &vec![1; 1025], false),
        Err(XenError::Invalid { .. })
    ));

    // Frames 0x20, a hole, 0x7f: the fake fills byte j of frame g with g + j.
    let pages = fm
        .map_guest_pages(9, &[0x20, 0x10_0000, 0x7f], true)
        .expect("map");
    assert_eq!(pages.len(), 3);
    assert_eq!(fake.guest_mapped(), 3);
    let mut b = [0u8; 4];
    pages.read(0, 0, &mut b).expect("read");
    assert_eq!(b, [0x20, 0x21, 0x22, 0x23]);
    pages.read(2, 4092, &mut b).expect("last bytes of the page");
    assert_eq!(
        b,
        [
            0x7f_u8.wrapping_add(252),
            0x7f_u8.wrapping_add(253),
            0x7f_u8.wrapping_add(254),
            0x7f_u8.wrapping_add(255)
        ]
    );

    // The hole is reported and never touched.
    assert_eq!(pages.page_error(0), None);
    assert_eq!(pages.page_error(1), Some(libc::EFAULT));
    let e = pages.read(1, 0, &mut b).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EFAULT));
    assert_eq!(
        pages.write(1, 0, &b).unwrap_err().errno(),
        Some(libc::EFAULT)
    );

    // Bounds: past the page, past the mapping.
    assert!(matches!(
        pages.read(0, 4093, &mut b),
        Err(XenError::Invalid { .. })
    ));
    assert!(matches!(
        pages.read(0, usize::MAX, &mut b),
        Err(XenError::Invalid { .. })
    ));
    assert!(matches!(
        pages.read(3, 0, &mut b),
        Err(XenError::Invalid { .. })
    ));

    // Writes land and read back.
    pages.write(2, 100, b"virt").expect("write");
    pages.read(2, 100, &mut b).expect("read");
    assert_eq!(&b, b"virt");
    drop(pages);
    assert_eq!(fake.guest_mapped(), 0, "unmapped on drop");

    // A read-only mapping refuses writes.
    let ro = fm.map_guest_pages(9, &[5], false).expect("map");
    assert!(matches!(
        ro.write(0, 0, b"x"),
        Err(XenError::Invalid { .. })
    ));
    drop(ro);
    assert_eq!(fake.guest_mapped(), 0);
}

#[test]
fn foreign_guest_memory_maps_on_demand_within_its_bound() {
    use gpu_hostmem_virtio_gpu::memory::{GuestMemory, MemError};
    use gpu_hostmem_xen::guest_memory::ForeignGuestMemory;

    let fake = Fake::load();
    fake.set_domain(9);
    let fml = ForeignMemoryLib::load_from(common::fake_lib()).expect("fm");
    let fm = fml.open().expect("open");
    let mut mem = ForeignGuestMemory::new(&fm, 9, 2);

    // Across the boundary of frames 0x20 and 0x21.
    let mut b = [0u8; 4];
    mem.read(0x20ffe, &mut b).expect("read");
    assert_eq!(
        b,
        [
            0x20u8.wrapping_add(254),
            0x20u8.wrapping_add(255),
            0x21,
            0x22
        ]
    );
    assert_eq!(mem.mapped_pages(), 2);
    // Writes reach the mapped frame (the fake's frames live while mapped).
    mem.write(0x21010, b"ring").expect("write");
    mem.read(0x21010, &mut b).expect("read");
    assert_eq!(&b, b"ring");
    // A third frame: the cache is emptied first, never above its bound.
    mem.read(0x7f000, &mut b).expect("read");
    assert_eq!(mem.mapped_pages(), 1);
    assert_eq!(fake.guest_mapped(), 1);

    // A frame that cannot be mapped fails and is not kept.
    assert_eq!(
        mem.read(0x1_0000_0000, &mut b),
        Err(MemError::Unmapped { gfn: 0x10_0000 })
    );
    assert_eq!(
        mem.write(0xffff_fffe, &[0; 4]),
        Err(MemError::Unmapped { gfn: 0x10_0000 }),
        "a write running into the hole"
    );
    assert!(matches!(
        mem.read(u64::MAX - 1, &mut b),
        Err(MemError::Overflow { .. })
    ));
    assert_eq!(fake.guest_mapped() as usize, mem.mapped_pages());
    // Another domain's frames never map on this handle.
    let mut other = ForeignGuestMemory::new(&fm, 10, 4);
    assert_eq!(
        other.read(0x20000, &mut b),
        Err(MemError::Unmapped { gfn: 0x20 })
    );
    drop(mem);
    drop(other);
    assert_eq!(fake.guest_mapped(), 0, "every frame unmapped on drop");
}

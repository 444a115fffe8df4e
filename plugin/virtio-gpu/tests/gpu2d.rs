//! The 2D commands: what the guest's driver does to bring up its DRM
//! device and draw into a dumb buffer, every refusal, fences, a control
//! queue round trip through the split ring, and a property test over
//! arbitrary requests.

use gpu_hostmem_virtio_gpu::gpu2d::{resp, Gpu2d, HDR_LEN, MAX_REQUEST_LEN};
use gpu_hostmem_virtio_gpu::memory::{GuestMemory, SimMemory};
use gpu_hostmem_virtio_gpu::queue::SplitQueue;
use gpu_hostmem_virtio_gpu::transport::QueueConfig;
use proptest::prelude::*;

const GET_DISPLAY_INFO: u32 = 0x100;
const CREATE_2D: u32 = 0x101;
const UNREF: u32 = 0x102;
const SET_SCANOUT: u32 = 0x103;
const FLUSH: u32 = 0x104;
const TRANSFER_TO_HOST_2D: u32 = 0x105;
const ATTACH_BACKING: u32 = 0x106;
const DETACH_BACKING: u32 = 0x107;
const B8G8R8X8: u32 = 2;
const FENCE: u32 = 1;
const INFO_RING_IDX: u32 = 2;

fn hdr(ty: u32) -> Vec<u8> {
    let mut v = vec![0u8; HDR_LEN];
    v[0..4].copy_from_slice(&ty.to_le_bytes());
    v
}

fn with(mut v: Vec<u8>, words: &[u32]) -> Vec<u8> {
    for w in words {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

fn create(id: u32, w: u32, h: u32) -> Vec<u8> {
    with(hdr(CREATE_2D), &[id, B8G8R8X8, w, h])
}

fn attach(id: u32, entries: &[(u64, u32)]) -> Vec<u8> {
    let mut v = with(hdr(ATTACH_BACKING), &[id, entries.len() as u32]);
    for &(addr, len) in entries {
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
    }
    v
}

fn transfer(id: u32, rect: [u32; 4], offset: u64) -> Vec<u8> {
    let mut v = with(hdr(TRANSFER_TO_HOST_2D), &rect);
    v.extend_from_slice(&offset.to_le_bytes());
    with(v, &[id, 0])
}

fn ty(resp: &[u8]) -> u32 {
    u32::from_le_bytes(resp[0..4].try_into().expect("4 bytes"))
}

/// A 16x8 resource whose backing is two scattered guest ranges.
fn drawn() -> (Gpu2d, SimMemory, Vec<u8>) {
    let mut gpu = Gpu2d::new(1 << 20, 0);
    let mut m = SimMemory::new(1 << 20);
    let pixels: Vec<u8> = (0..16 * 8 * 4).map(|i| (i * 7 % 251) as u8).collect();
    // Backing: 200 bytes at 0x3000, the rest at 0x9000.
    m.write(0x3000, &pixels[..200]).expect("w");
    m.write(0x9000, &pixels[200..]).expect("w");
    assert_eq!(ty(&gpu.handle(&mut m, &create(7, 16, 8))), resp::OK_NODATA);
    let entries = [(0x3000, 200), (0x9000, (pixels.len() - 200) as u32)];
    assert_eq!(
        ty(&gpu.handle(&mut m, &attach(7, &entries))),
        resp::OK_NODATA
    );
    (gpu, m, pixels)
}

#[test]
fn create_attach_transfer_flush_unref_as_the_driver_does() {
    let (mut gpu, mut m, pixels) = drawn();
    let r = gpu.handle(&mut m, &hdr(GET_DISPLAY_INFO));
    assert_eq!(ty(&r), resp::OK_DISPLAY_INFO);
    assert_eq!(r.len(), HDR_LEN + 16 * 24);
    assert!(
        r[HDR_LEN..].iter().all(|&b| b == 0),
        "headless: no display enabled"
    );
    assert_eq!(gpu.bytes(), 16 * 8 * 4);
    // The whole resource, across both backing ranges.
    let r = gpu.handle(&mut m, &transfer(7, [0, 0, 16, 8], 0));
    assert_eq!(ty(&r), resp::OK_NODATA);
    assert_eq!(gpu.resource_data(7), Some(&pixels[..]));
    let flush = with(hdr(FLUSH), &[0, 0, 16, 8, 7, 0]);
    assert_eq!(ty(&gpu.handle(&mut m, &flush)), resp::OK_NODATA);
    let unref = with(hdr(UNREF), &[7, 0]);
    assert_eq!(ty(&gpu.handle(&mut m, &unref)), resp::OK_NODATA);
    assert_eq!(gpu.bytes(), 0);
    assert_eq!(gpu.resource_data(7), None);
}

#[test]
fn a_sub_rectangle_takes_rows_at_offset_plus_stride() {
    let (mut gpu, mut m, pixels) = drawn();
    // Rows 2..5, columns 3..7: the driver passes the offset of (3, 2).
    let stride = 16 * 4;
    let offset = (2 * stride + 3 * 4) as u64;
    let r = gpu.handle(&mut m, &transfer(7, [3, 2, 4, 3], offset));
    assert_eq!(ty(&r), resp::OK_NODATA);
    let data = gpu.resource_data(7).expect("resource");
    for y in 0..8 {
        for x in 0..16 {
            let at = y * stride + x * 4;
            let inside = (2..5).contains(&y) && (3..7).contains(&x);
            let want = if inside {
                &pixels[at..at + 4]
            } else {
                &[0u8; 4][..]
            };
            assert_eq!(&data[at..at + 4], want, "pixel ({x}, {y})");
        }
    }
}

#[test]
fn fences_and_ring_indexes_come_back() {
    let mut gpu = Gpu2d::new(1 << 20, 0);
    let mut m = SimMemory::new(4096);
    let mut req = hdr(GET_DISPLAY_INFO);
    req[4..8].copy_from_slice(&(FENCE | INFO_RING_IDX).to_le_bytes());
    req[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    req[16..20].copy_from_slice(&9u32.to_le_bytes());
    req[20] = 3;
    let r = gpu.handle(&mut m, &req);
    assert_eq!(&r[4..8], &(FENCE | INFO_RING_IDX).to_le_bytes());
    assert_eq!(&r[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&r[16..20], &9u32.to_le_bytes());
    assert_eq!(r[20], 3);
    // Without FENCE nothing is echoed.
    req[4..8].copy_from_slice(&INFO_RING_IDX.to_le_bytes());
    let r = gpu.handle(&mut m, &req);
    assert!(r[4..HDR_LEN].iter().all(|&b| b == 0));
}

#[test]
fn refusals_leave_the_state_as_it_was() {
    let (mut gpu, mut m, _) = drawn();
    let before = gpu.resource_data(7).expect("r").to_vec();
    let bytes = gpu.bytes();
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("short header", vec![0u8; 10], resp::ERR_UNSPEC),
        ("unknown command", hdr(0x1ff), resp::ERR_UNSPEC),
        (
            "duplicate id",
            create(7, 4, 4),
            resp::ERR_INVALID_RESOURCE_ID,
        ),
        ("id 0", create(0, 4, 4), resp::ERR_INVALID_RESOURCE_ID),
        (
            "bad format",
            with(hdr(CREATE_2D), &[8, 999, 4, 4]),
            resp::ERR_INVALID_PARAMETER,
        ),
        ("zero width", create(8, 0, 4), resp::ERR_INVALID_PARAMETER),
        (
            "over the limit",
            create(8, 1024, 1024),
            resp::ERR_OUT_OF_MEMORY,
        ),
        (
            "size overflows 64 bits",
            create(8, u32::MAX, u32::MAX),
            resp::ERR_OUT_OF_MEMORY,
        ),
        (
            "truncated create",
            hdr(CREATE_2D),
            resp::ERR_INVALID_PARAMETER,
        ),
        (
            "attach to nothing",
            attach(9, &[(0, 4)]),
            resp::ERR_INVALID_RESOURCE_ID,
        ),
        ("attach twice", attach(7, &[(0, 4)]), resp::ERR_UNSPEC),
        (
            "transfer outside",
            transfer(7, [10, 0, 8, 1], 0),
            resp::ERR_INVALID_PARAMETER,
        ),
        (
            "transfer x + w wraps",
            transfer(7, [u32::MAX, 0, 2, 1], 0),
            resp::ERR_INVALID_PARAMETER,
        ),
        (
            "transfer past the backing",
            transfer(7, [0, 0, 16, 8], 4),
            resp::ERR_INVALID_PARAMETER,
        ),
        (
            "flush outside",
            with(hdr(FLUSH), &[0, 0, 17, 1, 7, 0]),
            resp::ERR_INVALID_PARAMETER,
        ),
        (
            "no scanout",
            with(hdr(SET_SCANOUT), &[0, 0, 16, 8, 0, 7]),
            resp::ERR_INVALID_SCANOUT_ID,
        ),
        (
            "unref nothing",
            with(hdr(UNREF), &[9, 0]),
            resp::ERR_INVALID_RESOURCE_ID,
        ),
    ];
    for (name, req, want) in cases {
        assert_eq!(ty(&gpu.handle(&mut m, &req)), want, "{name}");
        assert_eq!(gpu.resource_data(7), Some(&before[..]), "{name}");
        assert_eq!(gpu.bytes(), bytes, "{name}");
    }
    // Entry counts: none, too many, more than the request holds.
    let mut gpu = Gpu2d::new(1 << 20, 0);
    gpu.handle(&mut m, &create(1, 4, 4));
    let none = with(hdr(ATTACH_BACKING), &[1, 0]);
    let many = with(hdr(ATTACH_BACKING), &[1, 16385]);
    let truncated = with(hdr(ATTACH_BACKING), &[1, 2, 0, 0, 64, 0]);
    for req in [none, many, truncated] {
        assert_eq!(ty(&gpu.handle(&mut m, &req)), resp::ERR_INVALID_PARAMETER);
    }
    assert_eq!(
        ty(&gpu.handle(&mut m, &transfer(1, [0, 0, 4, 4], 0))),
        resp::ERR_INVALID_PARAMETER,
        "no backing"
    );
}

#[test]
fn a_backing_page_the_device_cannot_map_fails_the_transfer_only() {
    let (mut gpu, mut m, _) = drawn();
    m.punch_hole(0x9);
    let r = gpu.handle(&mut m, &transfer(7, [0, 0, 16, 8], 0));
    assert_eq!(ty(&r), resp::ERR_INVALID_PARAMETER);
    assert!(
        gpu.resource_data(7).expect("r").iter().all(|&b| b == 0),
        "nothing copied"
    );
    let detach = with(hdr(DETACH_BACKING), &[7, 0]);
    assert_eq!(ty(&gpu.handle(&mut m, &detach)), resp::OK_NODATA);
    assert_eq!(
        ty(&gpu.handle(&mut m, &detach)),
        resp::ERR_UNSPEC,
        "nothing attached"
    );
}

#[test]
fn a_command_goes_through_the_control_queue_and_back() {
    let mut m = SimMemory::new(1 << 20);
    let (desc, avail, used) = (0x1_0000u64, 0x1_1000u64, 0x1_2000u64);
    let cfg = QueueConfig {
        max_size: 8,
        size: 8,
        enabled: true,
        desc,
        driver: avail,
        device: used,
    };
    // The driver: the command at 0x4000, the response buffer at 0x5000.
    let req = create(3, 8, 8);
    m.write(0x4000, &req).expect("w");
    let d0 = [0x4000u64.to_le_bytes(), [0; 8]].concat();
    let mut d0 = d0;
    d0[8..12].copy_from_slice(&(req.len() as u32).to_le_bytes());
    d0[12..14].copy_from_slice(&1u16.to_le_bytes()); // NEXT
    d0[14..16].copy_from_slice(&1u16.to_le_bytes());
    let mut d1 = [0u8; 16];
    d1[0..8].copy_from_slice(&0x5000u64.to_le_bytes());
    d1[8..12].copy_from_slice(&(HDR_LEN as u32).to_le_bytes());
    d1[12..14].copy_from_slice(&2u16.to_le_bytes()); // WRITE
    m.write(desc, &d0).expect("w");
    m.write(desc + 16, &d1).expect("w");
    m.write(avail + 4, &0u16.to_le_bytes()).expect("w");
    m.write(avail + 2, &1u16.to_le_bytes()).expect("w");
    // The device.
    let mut gpu = Gpu2d::new(1 << 20, 0);
    let mut q = SplitQueue::new(&cfg).expect("queue");
    let chain = q.pop(&mut m).expect("valid").expect("one");
    let request = chain.read_to_vec(&mut m, MAX_REQUEST_LEN).expect("read");
    let response = gpu.handle(&mut m, &request);
    let n = chain.write_from(&mut m, &response).expect("write");
    q.push_used(&mut m, chain.head, n).expect("push");
    // The driver sees OK_NODATA and the resource exists.
    assert_eq!(m.read_u16(used + 2), Ok(1));
    assert_eq!(m.read_u32(used + 4), Ok(0));
    assert_eq!(m.read_u32(used + 8), Ok(HDR_LEN as u32));
    assert_eq!(m.read_u32(0x5000), Ok(resp::OK_NODATA));
    assert_eq!(gpu.resource_data(3).map(<[u8]>::len), Some(8 * 8 * 4));
}

proptest! {
    /// Arbitrary requests never panic, and the byte count is always the
    /// sum of the resources' sizes.
    #[test]
    fn arbitrary_requests_keep_the_accounting_right(
        reqs in prop::collection::vec(
            (0x100u32..0x108, prop::collection::vec(any::<u32>(), 0..12)), 1..40),
    ) {
        let mut gpu = Gpu2d::new(1 << 16, 0);
        let mut m = SimMemory::new(1 << 16);
        let mut ids = std::collections::BTreeSet::new();
        for (cmd, words) in reqs {
            // Small ids and sizes so that some commands succeed.
            let words: Vec<u32> = words.iter().map(|w| w % 70).collect();
            let req = with(hdr(cmd), &words);
            let r = gpu.handle(&mut m, &req);
            prop_assert!(r.len() >= HDR_LEN);
            if cmd == CREATE_2D && ty(&r) == resp::OK_NODATA {
                ids.insert(words[0]);
            }
            if cmd == UNREF && ty(&r) == resp::OK_NODATA {
                ids.remove(&words[0]);
            }
            let sum: u64 = ids
                .iter()
                .map(|id| gpu.resource_data(*id).map_or(0, |d| d.len() as u64))
                .sum();
            prop_assert_eq!(gpu.bytes(), sum);
            prop_assert!(gpu.bytes() <= 1 << 16);
        }
    }
}

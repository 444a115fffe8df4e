//! Contexts, capsets and host-visible blobs against a hostile driver, with
//! a fake renderer that records what reached it: every refusal leaves the
//! renderer untouched, mapped blobs never overlap and stay inside the
//! window, unmap and unref take a blob out of the window before the offset
//! is reused, and a renderer that fails never leaves the table claiming
//! less than may still be registered.

use std::sync::{Arc, Mutex};

use gpu_hostmem_virtio_gpu::blob::{
    resp as bresp, BlobStats, Blobs, CapsetOffer, MAX_CAPSETS, MAX_CONTEXTS, TEST_CAPSET,
    TEST_CAPSET_DATA, TEST_CAPSET_ID, VENUS_CAPSET_ID,
};
use gpu_hostmem_virtio_gpu::gpu2d::{resp, HDR_LEN};
use gpu_hostmem_virtio_gpu::renderer::{
    BlobHandle, BlobRequest, MapCache, Renderer, RendererError,
};
use gpu_hostmem_virtio_gpu::renderer_proto::{MAX_CAPSET_SIZE, MAX_SUBMIT_LEN};
use proptest::prelude::*;

const GET_CAPSET_INFO: u32 = 0x108;
const GET_CAPSET: u32 = 0x109;
const CREATE_BLOB: u32 = 0x10c;
const CTX_CREATE: u32 = 0x200;
const CTX_DESTROY: u32 = 0x201;
const CTX_ATTACH: u32 = 0x202;
const CTX_DETACH: u32 = 0x203;
const MAP_BLOB: u32 = 0x208;
const UNMAP_BLOB: u32 = 0x209;
const SUBMIT_3D: u32 = 0x207;
const HOST3D: u32 = 2;
const MAPPABLE: u32 = 1;
const WINDOW: u64 = 1 << 20;
const PAGE: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    CreateCtx(u32, u32),
    DestroyCtx(u32),
    Create(BlobRequest),
    Map(BlobHandle, u64),
    Unmap(BlobHandle),
    Destroy(BlobHandle),
    Capset(u32, u32, u32),
    Submit(u32, u32, Vec<u8>),
}

#[derive(Debug, Default)]
struct Log {
    calls: Vec<Call>,
    next: u64,
    /// Fail the next call of this name.
    fail: Option<(&'static str, RendererErrorKind)>,
    /// Handle -> mapped offset and size, as a renderer that registers would
    /// hold it.
    registered: Vec<(BlobHandle, u64, u64)>,
    sizes: Vec<(BlobHandle, u64)>,
    /// What GET_CAPSET answers (None: the test capset's data).
    capset_data: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy)]
enum RendererErrorKind {
    Refused(i32),
    Gone,
}

#[derive(Debug, Clone, Default)]
struct Fake(Arc<Mutex<Log>>);

impl Fake {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.0.lock().expect("log")
    }
    fn calls(&self) -> Vec<Call> {
        self.log().calls.clone()
    }
    fn fail_next(&self, op: &'static str, kind: RendererErrorKind) {
        self.log().fail = Some((op, kind));
    }
    fn check(&self, op: &'static str) -> Result<(), RendererError> {
        let mut l = self.log();
        match l.fail {
            Some((o, kind)) if o == op => {
                l.fail = None;
                Err(match kind {
                    RendererErrorKind::Refused(errno) => RendererError::Refused { op, errno },
                    RendererErrorKind::Gone => RendererError::Io {
                        op,
                        source: std::io::Error::from_raw_os_error(32),
                    },
                })
            }
            _ => Ok(()),
        }
    }
}

impl Renderer for Fake {
    fn create_context(&mut self, ctx: u32, capset: u32) -> Result<(), RendererError> {
        self.check("create_context")?;
        self.log().calls.push(Call::CreateCtx(ctx, capset));
        Ok(())
    }
    fn destroy_context(&mut self, ctx: u32) -> Result<(), RendererError> {
        self.check("destroy_context")?;
        self.log().calls.push(Call::DestroyCtx(ctx));
        Ok(())
    }
    fn create_blob(&mut self, req: BlobRequest) -> Result<BlobHandle, RendererError> {
        self.check("create_blob")?;
        let mut l = self.log();
        l.next += 1;
        let h = BlobHandle(l.next * 100);
        l.calls.push(Call::Create(req));
        l.sizes.push((h, req.size));
        Ok(h)
    }
    fn map_blob(&mut self, h: BlobHandle, offset: u64) -> Result<MapCache, RendererError> {
        self.check("map_blob")?;
        let mut l = self.log();
        l.calls.push(Call::Map(h, offset));
        let size = l
            .sizes
            .iter()
            .find(|(x, _)| *x == h)
            .map(|(_, s)| *s)
            .expect("map of a blob the renderer never made");
        // What the kernel refuses: an overlapping registration.
        assert!(
            l.registered
                .iter()
                .all(|&(_, o, s)| o + s <= offset || offset + size <= o),
            "overlapping registration reached the renderer"
        );
        assert!(l.registered.iter().all(|(x, _, _)| *x != h), "mapped twice");
        l.registered.push((h, offset, size));
        Ok(MapCache::Cached)
    }
    fn unmap_blob(&mut self, h: BlobHandle) -> Result<(), RendererError> {
        self.check("unmap_blob")?;
        let mut l = self.log();
        l.calls.push(Call::Unmap(h));
        l.registered.retain(|(x, _, _)| *x != h);
        Ok(())
    }
    fn destroy_blob(&mut self, h: BlobHandle) -> Result<(), RendererError> {
        self.check("destroy_blob")?;
        let mut l = self.log();
        l.calls.push(Call::Destroy(h));
        // Destroying unregisters too.
        l.registered.retain(|(x, _, _)| *x != h);
        l.sizes.retain(|(x, _)| *x != h);
        Ok(())
    }
    fn capset(&mut self, capset: u32, version: u32, size: u32) -> Result<Vec<u8>, RendererError> {
        self.check("get_capset")?;
        let mut l = self.log();
        l.calls.push(Call::Capset(capset, version, size));
        Ok(l.capset_data.clone().unwrap_or(TEST_CAPSET_DATA.to_vec()))
    }
    fn submit(&mut self, ctx: u32, capset: u32, cmds: &[u8]) -> Result<(), RendererError> {
        self.check("submit")?;
        self.log()
            .calls
            .push(Call::Submit(ctx, capset, cmds.to_vec()));
        Ok(())
    }
}

fn hdr(ty: u32, ctx: u32) -> Vec<u8> {
    let mut v = vec![0u8; HDR_LEN];
    v[0..4].copy_from_slice(&ty.to_le_bytes());
    v[16..20].copy_from_slice(&ctx.to_le_bytes());
    v
}

fn words(mut v: Vec<u8>, w: &[u32]) -> Vec<u8> {
    for x in w {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn ctx_create(ctx: u32, init: u32) -> Vec<u8> {
    let mut v = words(hdr(CTX_CREATE, ctx), &[4, init]);
    v.extend_from_slice(&[b't'; 64]);
    v
}

fn create_blob(ctx: u32, id: u32, mem: u32, flags: u32, entries: u32, size: u64) -> Vec<u8> {
    let mut v = words(hdr(CREATE_BLOB, ctx), &[id, mem, flags, entries]);
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&size.to_le_bytes());
    v
}

fn map(id: u32, offset: u64) -> Vec<u8> {
    let mut v = words(hdr(MAP_BLOB, 0), &[id, 0]);
    v.extend_from_slice(&offset.to_le_bytes());
    v
}

fn unmap(id: u32) -> Vec<u8> {
    words(hdr(UNMAP_BLOB, 0), &[id, 0])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A table with the test capset, one context (1) and the fake.
fn setup() -> (Blobs, Fake) {
    let fake = Fake::default();
    let mut b = Blobs::new(Box::new(fake.clone()), &[TEST_CAPSET], WINDOW, WINDOW);
    assert_eq!(
        b.handle(&ctx_create(1, TEST_CAPSET_ID), no2d).0,
        resp::OK_NODATA
    );
    (b, fake)
}

fn no2d(_: u32) -> bool {
    false
}

fn ok(b: &mut Blobs, req: &[u8]) -> u32 {
    b.handle(req, no2d).0
}

#[test]
fn without_the_option_no_capset_and_no_context() {
    let fake = Fake::default();
    let mut b = Blobs::new(Box::new(fake.clone()), &[], WINDOW, WINDOW);
    assert!(b.capsets().is_empty());
    assert_eq!(
        ok(&mut b, &words(hdr(GET_CAPSET_INFO, 0), &[0, 0])),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        ok(&mut b, &words(hdr(GET_CAPSET, 0), &[TEST_CAPSET_ID, 1])),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        ok(&mut b, &ctx_create(1, TEST_CAPSET_ID)),
        resp::ERR_INVALID_PARAMETER
    );
    assert!(fake.calls().is_empty());
}

#[test]
fn capsets_a_guest_cannot_be_offered_are_dropped() {
    let fake = Fake::default();
    let c = |id, max_version, max_size| CapsetOffer {
        id,
        max_version,
        max_size,
    };
    // Id 0, ids Linux's `1 << id` int mask cannot hold, no data, more data
    // than the protocol carries.
    let bad = [
        c(0, 1, 16),
        c(31, 1, 16),
        c(32, 1, 16),
        c(u32::MAX, 1, 16),
        c(4, 0, 0),
        c(4, 0, MAX_CAPSET_SIZE + 1),
        c(4, 0, u32::MAX),
    ];
    for o in bad {
        let b = Blobs::new(Box::new(fake.clone()), &[o], WINDOW, WINDOW);
        assert!(b.capsets().is_empty(), "{o:?} offered");
    }
    // The first of an id wins; at most MAX_CAPSETS.
    let b = Blobs::new(
        Box::new(fake.clone()),
        &[c(4, 0, 160), c(4, 3, 16), TEST_CAPSET],
        WINDOW,
        WINDOW,
    );
    assert_eq!(b.capsets(), [c(4, 0, 160), TEST_CAPSET]);
    let many: Vec<CapsetOffer> = (1..=20).map(|id| c(id, 0, 8)).collect();
    let b = Blobs::new(Box::new(fake.clone()), &many, WINDOW, WINDOW);
    assert_eq!(b.capsets(), &many[..MAX_CAPSETS]);
    assert!(fake.calls().is_empty());
}

/// Venus as the renderer describes it (virglrenderer 1.1: version 0,
/// 160 bytes).
const VENUS: CapsetOffer = CapsetOffer {
    id: VENUS_CAPSET_ID,
    max_version: 0,
    max_size: 160,
};

#[test]
fn capset_data_comes_from_the_renderer_at_exactly_the_offered_size() {
    let fake = Fake::default();
    let mut b = Blobs::new(
        Box::new(fake.clone()),
        &[VENUS, TEST_CAPSET],
        WINDOW,
        WINDOW,
    );
    let info = |b: &mut Blobs, i: u32| {
        let (t, body) = b.handle(&words(hdr(GET_CAPSET_INFO, 0), &[i, 0]), no2d);
        assert_eq!(t, bresp::OK_CAPSET_INFO);
        (u32_at(&body, 0), u32_at(&body, 4), u32_at(&body, 8))
    };
    assert_eq!(info(&mut b, 0), (4, 0, 160));
    assert_eq!(info(&mut b, 1), (TEST_CAPSET_ID, 1, 16));
    // Venus's real bytes, passed on as they are.
    let venus: Vec<u8> = (0..160u32).map(|i| (i * 7) as u8).collect();
    fake.log().capset_data = Some(venus.clone());
    let get = |b: &mut Blobs, id: u32, v: u32| b.handle(&words(hdr(GET_CAPSET, 0), &[id, v]), no2d);
    assert_eq!(get(&mut b, 4, 0), (bresp::OK_CAPSET, venus.clone()));
    assert_eq!(fake.calls(), [Call::Capset(4, 0, 160)]);

    // A guest asking for a capset not offered, or a newer version: the
    // renderer is not asked.
    for (id, v) in [
        (4, 1),
        (4, u32::MAX),
        (1, 0),
        (2, 0),
        (0, 0),
        (6, 0),
        (31, 0),
    ] {
        assert_eq!(
            get(&mut b, id, v),
            (resp::ERR_INVALID_PARAMETER, Vec::new()),
            "capset {id} version {v}"
        );
    }
    assert_eq!(
        ok(&mut b, &words(hdr(GET_CAPSET, 0), &[4])),
        resp::ERR_INVALID_PARAMETER,
        "short"
    );
    assert_eq!(fake.calls().len(), 1);

    // A renderer answering more bytes than its info said, or fewer: an
    // error for the guest, never the bytes.
    for n in [161usize, 4096, 159, 0] {
        fake.log().capset_data = Some(vec![0x5a; n]);
        assert_eq!(
            get(&mut b, 4, 0),
            (resp::ERR_UNSPEC, Vec::new()),
            "{n} bytes"
        );
    }
    assert_eq!(b.stats().renderer_errors, 4);
    // A refusal, and a renderer gone.
    fake.fail_next("get_capset", RendererErrorKind::Refused(22));
    assert_eq!(get(&mut b, 4, 0).0, resp::ERR_INVALID_PARAMETER);
    fake.fail_next("get_capset", RendererErrorKind::Gone);
    assert_eq!(get(&mut b, 4, 0).0, resp::ERR_UNSPEC);
    assert_eq!(b.stats().renderer_errors, 6);
    // Still served afterwards (the fake is not broken).
    fake.log().capset_data = Some(venus.clone());
    assert_eq!(get(&mut b, 4, 0), (bresp::OK_CAPSET, venus));
}

#[test]
fn capset_info_and_data() {
    let (mut b, _) = setup();
    let (t, body) = b.handle(&words(hdr(GET_CAPSET_INFO, 0), &[0, 0]), no2d);
    assert_eq!(t, bresp::OK_CAPSET_INFO);
    assert_eq!(
        (u32_at(&body, 0), u32_at(&body, 4), u32_at(&body, 8)),
        (TEST_CAPSET_ID, 1, TEST_CAPSET_DATA.len() as u32)
    );
    assert_eq!(
        ok(&mut b, &words(hdr(GET_CAPSET_INFO, 0), &[1, 0])),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        ok(&mut b, &words(hdr(GET_CAPSET_INFO, 0), &[u32::MAX, 0])),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        ok(&mut b, &hdr(GET_CAPSET_INFO, 0)),
        resp::ERR_INVALID_PARAMETER,
        "short"
    );
    let (t, body) = b.handle(&words(hdr(GET_CAPSET, 0), &[TEST_CAPSET_ID, 1]), no2d);
    assert_eq!(t, bresp::OK_CAPSET);
    assert_eq!(body, TEST_CAPSET_DATA);
    for (id, v) in [(TEST_CAPSET_ID, 2), (4, 1), (4, 0), (0, 1)] {
        assert_eq!(
            ok(&mut b, &words(hdr(GET_CAPSET, 0), &[id, v])),
            resp::ERR_INVALID_PARAMETER,
            "capset {id} version {v}"
        );
    }
}

#[test]
fn contexts_refused_for_bad_ids_capsets_and_names() {
    let (mut b, fake) = setup();
    let before = fake.calls();
    assert_eq!(
        ok(&mut b, &ctx_create(1, TEST_CAPSET_ID)),
        bresp::ERR_INVALID_CONTEXT_ID,
        "exists"
    );
    assert_eq!(
        ok(&mut b, &ctx_create(0, TEST_CAPSET_ID)),
        bresp::ERR_INVALID_CONTEXT_ID,
        "id 0"
    );
    for init in [0, 4, TEST_CAPSET_ID | 0x100, 0xff] {
        assert_eq!(
            ok(&mut b, &ctx_create(2, init)),
            resp::ERR_INVALID_PARAMETER,
            "context_init {init:#x}"
        );
    }
    let mut long = words(hdr(CTX_CREATE, 2), &[65, TEST_CAPSET_ID]);
    long.extend_from_slice(&[0; 64]);
    assert_eq!(ok(&mut b, &long), resp::ERR_INVALID_PARAMETER, "nlen 65");
    assert_eq!(
        ok(&mut b, &hdr(CTX_CREATE, 2)),
        resp::ERR_INVALID_PARAMETER,
        "short"
    );
    assert_eq!(
        ok(&mut b, &hdr(CTX_DESTROY, 9)),
        bresp::ERR_INVALID_CONTEXT_ID
    );
    assert_eq!(fake.calls(), before, "nothing refused reached the renderer");

    for c in 2..=MAX_CONTEXTS as u32 {
        assert_eq!(ok(&mut b, &ctx_create(c, TEST_CAPSET_ID)), resp::OK_NODATA);
    }
    assert_eq!(
        ok(&mut b, &ctx_create(1000, TEST_CAPSET_ID)),
        resp::ERR_OUT_OF_MEMORY,
        "limit"
    );
    assert_eq!(ok(&mut b, &hdr(CTX_DESTROY, 5)), resp::OK_NODATA);
    assert_eq!(fake.calls().last(), Some(&Call::DestroyCtx(5)));
    assert_eq!(
        ok(&mut b, &ctx_create(1000, TEST_CAPSET_ID)),
        resp::OK_NODATA
    );

    // A renderer refusal is the guest's error, and the context is not made.
    fake.fail_next("create_context", RendererErrorKind::Refused(12));
    assert_eq!(
        ok(&mut b, &hdr(CTX_DESTROY, 6)),
        resp::OK_NODATA,
        "make room"
    );
    assert_eq!(
        ok(&mut b, &ctx_create(1001, TEST_CAPSET_ID)),
        resp::ERR_OUT_OF_MEMORY
    );
    assert_eq!(
        ok(&mut b, &hdr(CTX_DESTROY, 1001)),
        bresp::ERR_INVALID_CONTEXT_ID
    );
}

#[test]
fn blobs_refused_for_what_is_not_served() {
    let (mut b, fake) = setup();
    let before = fake.calls();
    let cases: [(Vec<u8>, u32, &str); 14] = [
        (
            create_blob(9, 1, HOST3D, MAPPABLE, 0, PAGE),
            bresp::ERR_INVALID_CONTEXT_ID,
            "no such context",
        ),
        (
            create_blob(0, 1, HOST3D, MAPPABLE, 0, PAGE),
            bresp::ERR_INVALID_CONTEXT_ID,
            "context 0",
        ),
        (
            create_blob(1, 0, HOST3D, MAPPABLE, 0, PAGE),
            resp::ERR_INVALID_RESOURCE_ID,
            "resource 0",
        ),
        (
            create_blob(1, 7, HOST3D, MAPPABLE, 0, PAGE),
            resp::ERR_INVALID_RESOURCE_ID,
            "a 2D resource's id",
        ),
        (
            create_blob(1, 1, 1, MAPPABLE, 0, PAGE),
            resp::ERR_INVALID_PARAMETER,
            "GUEST",
        ),
        (
            create_blob(1, 1, 3, MAPPABLE, 0, PAGE),
            resp::ERR_INVALID_PARAMETER,
            "HOST3D_GUEST",
        ),
        (
            create_blob(1, 1, 0, MAPPABLE, 0, PAGE),
            resp::ERR_INVALID_PARAMETER,
            "blob_mem 0",
        ),
        (
            create_blob(1, 1, HOST3D, MAPPABLE, 1, PAGE),
            resp::ERR_INVALID_PARAMETER,
            "guest entries",
        ),
        (
            create_blob(1, 1, HOST3D, 8, 0, PAGE),
            resp::ERR_INVALID_PARAMETER,
            "unknown flag",
        ),
        (
            create_blob(1, 1, HOST3D, 4, 0, PAGE),
            resp::ERR_INVALID_PARAMETER,
            "CROSS_DEVICE",
        ),
        (
            create_blob(1, 1, HOST3D, MAPPABLE, 0, 0),
            resp::ERR_INVALID_PARAMETER,
            "size 0",
        ),
        (
            create_blob(1, 1, HOST3D, MAPPABLE, 0, PAGE + 1),
            resp::ERR_INVALID_PARAMETER,
            "unaligned size",
        ),
        (
            create_blob(1, 1, HOST3D, MAPPABLE, 0, u64::MAX - PAGE + 1),
            resp::ERR_OUT_OF_MEMORY,
            "huge",
        ),
        (
            create_blob(1, 1, HOST3D, MAPPABLE, 0, WINDOW + PAGE),
            resp::ERR_OUT_OF_MEMORY,
            "over the limit",
        ),
    ];
    for (req, want, what) in cases {
        assert_eq!(b.handle(&req, |i| i == 7).0, want, "{what}");
    }
    let short = create_blob(1, 1, HOST3D, MAPPABLE, 0, PAGE);
    assert_eq!(
        ok(&mut b, &short[..short.len() - 1]),
        resp::ERR_INVALID_PARAMETER,
        "short"
    );
    assert_eq!(fake.calls(), before, "nothing refused reached the renderer");
    assert_eq!(b.stats().blobs, 0);

    // The limit counts every blob.
    assert_eq!(
        ok(
            &mut b,
            &create_blob(1, 1, HOST3D, MAPPABLE, 0, WINDOW - PAGE)
        ),
        resp::OK_NODATA
    );
    assert_eq!(
        ok(&mut b, &create_blob(1, 2, HOST3D, MAPPABLE, 0, 2 * PAGE)),
        resp::ERR_OUT_OF_MEMORY
    );
    assert_eq!(
        ok(&mut b, &create_blob(1, 1, HOST3D, MAPPABLE, 0, PAGE)),
        resp::ERR_INVALID_RESOURCE_ID,
        "id taken"
    );
    // A renderer out of memory is the guest's ERR_OUT_OF_MEMORY.
    fake.fail_next("create_blob", RendererErrorKind::Refused(12));
    assert_eq!(
        ok(&mut b, &create_blob(1, 3, HOST3D, MAPPABLE, 0, PAGE)),
        resp::ERR_OUT_OF_MEMORY
    );
    assert!(!b.contains(3));
}

#[test]
fn map_checks_offset_window_overlap_and_state() {
    let (mut b, fake) = setup();
    for (id, pages, flags) in [(1, 4, MAPPABLE), (2, 4, MAPPABLE), (3, 1, 0), (4, 16, 1)] {
        assert_eq!(
            ok(&mut b, &create_blob(1, id, HOST3D, flags, 0, pages * PAGE)),
            resp::OK_NODATA
        );
    }
    let (t, body) = b.handle(&map(1, 8 * PAGE), no2d);
    assert_eq!(t, bresp::OK_MAP_INFO);
    assert_eq!(u32_at(&body, 0), 1, "map_info CACHED");
    assert_eq!(b.mapped_at(1), Some(8 * PAGE));
    let before = fake.calls();
    let cases = [
        (map(9, 0), resp::ERR_INVALID_RESOURCE_ID, "unknown resource"),
        (map(3, 0), resp::ERR_INVALID_PARAMETER, "not mappable"),
        (map(1, 0), resp::ERR_INVALID_PARAMETER, "mapped twice"),
        (map(2, 100), resp::ERR_INVALID_PARAMETER, "unaligned"),
        (map(2, 5 * PAGE), resp::ERR_INVALID_PARAMETER, "ends inside"),
        (map(2, 8 * PAGE), resp::ERR_INVALID_PARAMETER, "same offset"),
        (
            map(2, 11 * PAGE),
            resp::ERR_INVALID_PARAMETER,
            "starts inside",
        ),
        (
            map(4, 6 * PAGE),
            resp::ERR_INVALID_PARAMETER,
            "contains the other",
        ),
        (
            map(2, WINDOW - 3 * PAGE),
            resp::ERR_INVALID_PARAMETER,
            "past the window",
        ),
        (map(2, WINDOW), resp::ERR_INVALID_PARAMETER, "at the end"),
        (
            map(2, u64::MAX - PAGE + 1),
            resp::ERR_INVALID_PARAMETER,
            "wraps",
        ),
        (map(2, 1 << 40), resp::ERR_INVALID_PARAMETER, "far outside"),
        (
            words(hdr(MAP_BLOB, 0), &[2, 0]),
            resp::ERR_INVALID_PARAMETER,
            "short",
        ),
    ];
    for (req, want, what) in cases {
        assert_eq!(b.handle(&req, no2d).0, want, "{what}");
    }
    assert_eq!(fake.calls(), before, "nothing refused reached the renderer");
    // Right next to it on both sides, and the last pages of the window.
    assert_eq!(ok(&mut b, &map(2, 4 * PAGE)), bresp::OK_MAP_INFO);
    assert_eq!(ok(&mut b, &map(4, WINDOW - 16 * PAGE)), bresp::OK_MAP_INFO);
    let s = b.stats();
    assert_eq!((s.blobs, s.mapped, s.mapped_bytes), (4, 3, 24 * PAGE));
}

#[test]
fn unmap_and_unref_take_the_blob_out_of_the_window_first() {
    let (mut b, fake) = setup();
    for id in [1, 2] {
        assert_eq!(
            ok(&mut b, &create_blob(1, id, HOST3D, MAPPABLE, 0, 2 * PAGE)),
            resp::OK_NODATA
        );
    }
    assert_eq!(
        ok(&mut b, &unmap(1)),
        resp::ERR_INVALID_PARAMETER,
        "unmapped"
    );
    assert_eq!(ok(&mut b, &unmap(9)), resp::ERR_INVALID_RESOURCE_ID);
    assert_eq!(
        ok(&mut b, &words(hdr(UNMAP_BLOB, 0), &[])),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(ok(&mut b, &map(1, 0)), bresp::OK_MAP_INFO);
    assert_eq!(ok(&mut b, &map(2, 0)), resp::ERR_INVALID_PARAMETER);
    assert_eq!(ok(&mut b, &unmap(1)), resp::OK_NODATA);
    assert_eq!(ok(&mut b, &unmap(1)), resp::ERR_INVALID_PARAMETER, "twice");
    assert_eq!(
        ok(&mut b, &map(2, 0)),
        bresp::OK_MAP_INFO,
        "offset free again"
    );
    assert_eq!(
        ok(&mut b, &map(1, 2 * PAGE)),
        bresp::OK_MAP_INFO,
        "remapped"
    );

    let handle2 = match &fake.calls()[2] {
        Call::Create(r) if r.resource_id == 2 => BlobHandle(200),
        c => panic!("unexpected {c:?}"),
    };
    let n = fake.calls().len();
    assert_eq!(b.unref(2), resp::OK_NODATA);
    assert_eq!(
        fake.calls()[n..],
        [Call::Unmap(handle2), Call::Destroy(handle2)],
        "unmapped, then destroyed"
    );
    assert!(!b.contains(2));
    assert_eq!(b.unref(2), resp::ERR_INVALID_RESOURCE_ID);
    assert_eq!(
        ok(&mut b, &create_blob(1, 3, HOST3D, MAPPABLE, 0, 2 * PAGE)),
        resp::OK_NODATA
    );
    assert_eq!(ok(&mut b, &map(3, 0)), bresp::OK_MAP_INFO, "offset reused");

    // Attach/detach check ids only.
    assert_eq!(
        ok(&mut b, &words(hdr(CTX_ATTACH, 1), &[3, 0])),
        resp::OK_NODATA
    );
    assert_eq!(
        b.handle(&words(hdr(CTX_DETACH, 1), &[7, 0]), |i| i == 7).0,
        resp::OK_NODATA,
        "a 2D resource"
    );
    assert_eq!(
        ok(&mut b, &words(hdr(CTX_ATTACH, 1), &[9, 0])),
        resp::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        ok(&mut b, &words(hdr(CTX_ATTACH, 2), &[3, 0])),
        bresp::ERR_INVALID_CONTEXT_ID
    );

    // A destroyed context leaves its blobs; a reset takes everything.
    assert_eq!(ok(&mut b, &hdr(CTX_DESTROY, 1)), resp::OK_NODATA);
    assert!(b.contains(3));
    b.reset();
    assert_eq!(b.stats(), BlobStats::default());
    assert!(fake.log().registered.is_empty());
    assert!(fake.log().sizes.is_empty());
}

#[test]
fn a_failing_renderer_never_frees_an_offset_it_may_still_use() {
    let (mut b, fake) = setup();
    for id in [1, 2] {
        assert_eq!(
            ok(&mut b, &create_blob(1, id, HOST3D, MAPPABLE, 0, PAGE)),
            resp::OK_NODATA
        );
    }
    fake.fail_next("map_blob", RendererErrorKind::Refused(22));
    assert_eq!(ok(&mut b, &map(1, 0)), resp::ERR_INVALID_PARAMETER);
    assert_eq!(b.mapped_at(1), None);
    assert_eq!(ok(&mut b, &map(1, 0)), bresp::OK_MAP_INFO);
    fake.fail_next("unmap_blob", RendererErrorKind::Gone);
    assert_eq!(ok(&mut b, &unmap(1)), resp::ERR_UNSPEC);
    assert_eq!(b.mapped_at(1), Some(0), "still claimed");
    assert_eq!(ok(&mut b, &map(2, 0)), resp::ERR_INVALID_PARAMETER);
    assert_eq!(b.stats().renderer_errors, 2);
    // Unref destroys even so (destroying unregisters).
    fake.fail_next("unmap_blob", RendererErrorKind::Gone);
    assert_eq!(b.unref(1), resp::OK_NODATA);
    assert!(fake.calls().contains(&Call::Destroy(BlobHandle(100))));
    assert_eq!(ok(&mut b, &map(2, 0)), bresp::OK_MAP_INFO);
}

#[derive(Debug, Clone)]
enum Op {
    Create { id: u32, pages: u64, mappable: bool },
    Map { id: u32, page: u64 },
    Unmap { id: u32 },
    Unref { id: u32 },
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    let id = 1u32..6;
    prop_oneof![
        (id.clone(), 1u64..64, any::<bool>()).prop_map(|(id, pages, mappable)| Op::Create {
            id,
            pages,
            mappable
        }),
        (id.clone(), 0u64..300).prop_map(|(id, page)| Op::Map { id, page }),
        id.clone().prop_map(|id| Op::Unmap { id }),
        id.prop_map(|id| Op::Unref { id }),
        Just(Op::Reset),
    ]
}

proptest! {
    /// Whatever the driver does, the mapped blobs the renderer holds are
    /// the table's, inside the window and disjoint (the fake asserts
    /// disjointness on every map).
    #[test]
    fn mapped_blobs_stay_disjoint_and_inside_the_window(ops in prop::collection::vec(op(), 1..60)) {
        let (mut b, fake) = setup();
        for o in ops {
            match o {
                Op::Create { id, pages, mappable } => {
                    b.handle(&create_blob(1, id, HOST3D, u32::from(mappable), 0, pages * PAGE), no2d);
                }
                Op::Map { id, page } => {
                    b.handle(&map(id, page * PAGE), no2d);
                }
                Op::Unmap { id } => {
                    b.handle(&unmap(id), no2d);
                }
                Op::Unref { id } => {
                    b.unref(id);
                }
                Op::Reset => {
                    b.reset();
                    prop_assert_eq!(ok(&mut b, &ctx_create(1, TEST_CAPSET_ID)), resp::OK_NODATA);
                }
            }
            let l = fake.log();
            let s = b.stats();
            prop_assert_eq!(l.registered.len(), s.mapped);
            prop_assert_eq!(l.sizes.len(), s.blobs);
            for &(_, off, size) in &l.registered {
                prop_assert!(off % PAGE == 0 && off + size <= WINDOW);
            }
            prop_assert_eq!(l.registered.iter().map(|r| r.2).sum::<u64>(), s.mapped_bytes);
        }
    }
}

/// SUBMIT_3D of context `ctx`: `size` in the command, then `stream` (which
/// may be longer or shorter than `size` says).
fn submit(ctx: u32, size: u32, stream: &[u8]) -> Vec<u8> {
    let mut v = words(hdr(SUBMIT_3D, ctx), &[size, 0]);
    v.extend_from_slice(stream);
    v
}

#[test]
fn a_command_stream_reaches_its_context_exactly_and_nothing_past_its_size() {
    let (mut b, fake) = setup();
    let stream: Vec<u8> = (0u8..16).collect();
    // Bytes after `size` (the driver's next buffer, say) are not passed.
    let mut req = submit(1, 12, &stream);
    req.extend_from_slice(&[0xee; 8]);
    assert_eq!(ok(&mut b, &req), resp::OK_NODATA);
    assert_eq!(
        fake.calls().last(),
        Some(&Call::Submit(1, TEST_CAPSET_ID, stream[..12].to_vec()))
    );
    // The largest stream the protocol carries goes through whole.
    let big = vec![0x5a; MAX_SUBMIT_LEN];
    assert_eq!(
        ok(&mut b, &submit(1, MAX_SUBMIT_LEN as u32, &big)),
        resp::OK_NODATA
    );
    assert_eq!(
        fake.calls().last(),
        Some(&Call::Submit(1, TEST_CAPSET_ID, big))
    );
    let s = b.stats();
    assert_eq!(
        (s.submits, s.submitted_bytes),
        (2, 12 + MAX_SUBMIT_LEN as u64)
    );
}

#[test]
fn command_streams_the_device_refuses_never_reach_the_renderer() {
    let (mut b, fake) = setup();
    let before = fake.calls().len();
    let cases: [(&str, Vec<u8>, u32); 6] = [
        (
            "no such context",
            submit(7, 4, &[1, 2, 3, 4]),
            bresp::ERR_INVALID_CONTEXT_ID,
        ),
        (
            "context 0",
            submit(0, 4, &[1, 2, 3, 4]),
            bresp::ERR_INVALID_CONTEXT_ID,
        ),
        (
            "a partial dword",
            submit(1, 6, &[1, 2, 3, 4, 5, 6]),
            resp::ERR_INVALID_PARAMETER,
        ),
        (
            "size past the request",
            submit(1, 16, &[1, 2, 3, 4, 5, 6, 7, 8]),
            resp::ERR_INVALID_PARAMETER,
        ),
        (
            "more than the protocol carries",
            submit(1, MAX_SUBMIT_LEN as u32 + 4, &vec![0; MAX_SUBMIT_LEN + 4]),
            resp::ERR_INVALID_PARAMETER,
        ),
        (
            "no size field",
            words(hdr(SUBMIT_3D, 1), &[4]),
            resp::ERR_INVALID_PARAMETER,
        ),
    ];
    for (what, req, want) in cases {
        assert_eq!(ok(&mut b, &req), want, "{what}");
    }
    // size u32::MAX: no overflow, refused.
    assert_eq!(
        ok(&mut b, &submit(1, u32::MAX, &[0; 64])),
        resp::ERR_INVALID_PARAMETER
    );
    // An empty stream is done, with nothing to pass on.
    assert_eq!(ok(&mut b, &submit(1, 0, &[])), resp::OK_NODATA);
    assert_eq!(fake.calls().len(), before);
    // A destroyed context's streams are refused too.
    assert_eq!(ok(&mut b, &hdr(CTX_DESTROY, 1)), resp::OK_NODATA);
    assert_eq!(
        ok(&mut b, &submit(1, 4, &[1, 2, 3, 4])),
        bresp::ERR_INVALID_CONTEXT_ID
    );
    assert!(!fake.calls().iter().any(|c| matches!(c, Call::Submit(..))));
    assert_eq!(b.stats().submits, 0);
}

#[test]
fn a_stream_the_renderer_refuses_or_cannot_take_is_an_error_answer() {
    let (mut b, fake) = setup();
    fake.fail_next("submit", RendererErrorKind::Refused(22));
    assert_eq!(
        ok(&mut b, &submit(1, 4, &[1, 2, 3, 4])),
        resp::ERR_INVALID_PARAMETER
    );
    fake.fail_next("submit", RendererErrorKind::Gone);
    assert_eq!(ok(&mut b, &submit(1, 4, &[1, 2, 3, 4])), resp::ERR_UNSPEC);
    let s = b.stats();
    assert_eq!((s.submits, s.renderer_errors), (0, 2));
}

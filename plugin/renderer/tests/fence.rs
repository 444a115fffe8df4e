//! Context fences across the renderer protocol (version 5), without Xen:
//! the device (the whole engine, driven by a driver in simulated memory)
//! over `SocketRenderer`, the renderer's loop with the test capset in a
//! thread. The test capset's HOLD and RELEASE commands hold a ring's
//! fences back and let them go, so the device's keeping is seen with the
//! renderer's real timing; and the renderer's side is checked against a
//! device that asks for fences it should not, and the device's side
//! against a renderer that floods or lies.

use std::os::unix::net::UnixDatagram;
use std::thread;
use std::time::{Duration, Instant};

use gpu_hostmem_renderer::backend::{TEST_CMD_HOLD, TEST_CMD_RELEASE};
use gpu_hostmem_renderer::{serve, RendererLimits, RendererState, RendererStats};
use gpu_hostmem_virtio_gpu::blob::TEST_CAPSET_ID;
use gpu_hostmem_virtio_gpu::device::GpuConfig;
use gpu_hostmem_virtio_gpu::engine::VirtioGpu;
use gpu_hostmem_virtio_gpu::gpu2d::resp;
use gpu_hostmem_virtio_gpu::renderer::{FenceRetired, Renderer};
use gpu_hostmem_virtio_gpu::renderer_proto::{
    encode_event, Op, Reply, Request, SocketRenderer, EVENT_LEN, MAX_EVENTS_PER_POLL,
    MAX_PENDING_EVENTS, REPLY_LEN, REQUEST_LEN, VERSION,
};

mod common;
use common::FakeRegistrar;

#[path = "../../virtio-gpu/tests/support/guest.rs"]
mod guest;
use guest::*;

fn seqpacket_pair() -> (UnixDatagram, UnixDatagram) {
    let (a, b) = gpu_hostmem_test_support::seqpacket_pair().expect("socketpair");
    (UnixDatagram::from(a), UnixDatagram::from(b))
}

type Served = thread::JoinHandle<(Result<(), String>, RendererStats)>;

/// A guest of the device with the test capset, over the renderer at the
/// other end of `dev` (not probed yet).
fn guest_over(dev: UnixDatagram) -> Guest {
    let sr = SocketRenderer::connect(dev).expect("hello");
    let dev = VirtioGpu::with_renderer(
        256 << 20,
        1,
        GpuConfig::default().with_test_capset(),
        1 << 20,
        Box::new(sr),
    )
    .expect("device");
    Guest::with(dev)
}

/// The device with the test capset over a renderer serving in a thread.
fn device() -> (Guest, Served) {
    let (dev, ren) = seqpacket_pair();
    let t = thread::spawn(move || {
        let mut st = RendererState::new(FakeRegistrar::default(), RendererLimits::default());
        let r = serve(&ren, &mut st).map_err(|e| e.to_string());
        (r, st.stats())
    });
    let mut g = guest_over(dev);
    assert!(g.probe().activated);
    (g, t)
}

/// Polls the device (as the server does when the renderer's socket is
/// readable) until `n` responses came back or a second passed.
fn poll_for(g: &mut Guest, n: usize) -> Vec<Resp> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && t0.elapsed() < Duration::from_secs(1) {
        got.extend(g.poll());
        thread::sleep(Duration::from_millis(1));
    }
    got
}

#[test]
fn a_held_fence_keeps_its_response_until_the_renderer_retires_it() {
    let (mut g, served) = device();
    let (_, r) = g.command(&ctx_create(1, TEST_CAPSET_ID));
    assert_eq!(r[0].ty, resp::OK_NODATA);
    // Hold ring 1's fences, then a fenced stream on ring 1 and one on ring
    // 0, which is not held.
    let (_, r) = g.command(&submit(1, None, &[TEST_CMD_HOLD, 1, 0, 0]));
    assert_eq!(r[0].ty, resp::OK_NODATA);
    let held = g.post(&submit(1, Some((5, Some(1))), &[TEST_CMD_HOLD, 2, 0, 0]));
    let free = g.post(&submit(1, Some((6, Some(0))), &[TEST_CMD_HOLD, 3, 0, 0]));
    g.kick();
    let mut r = g.used();
    r.extend(poll_for(&mut g, 1 - r.len().min(1)));
    assert_eq!(ns(&r), [free], "ring 0's fence retired, ring 1's held");
    assert_eq!((r[0].ty, r[0].fence_id, r[0].ring), (resp::OK_NODATA, 6, 0));
    thread::sleep(Duration::from_millis(50));
    assert!(g.poll().is_empty(), "still held");
    assert_eq!(g.dev.fence_stats().waiting, 1);
    // Unfenced commands go by meanwhile; RELEASE lets it go.
    let (_, r) = g.command(&submit(1, None, &[TEST_CMD_RELEASE, 1, 0, 0]));
    let mut all = r;
    all.extend(poll_for(&mut g, 2 - all.len().min(2)));
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all
        .iter()
        .any(|x| x.n == held && x.fence_id == 5 && x.ty == resp::OK_NODATA));
    assert_eq!(g.dev.fence_stats().kept, 0);
    drop(g);
    let (res, stats) = served.join().expect("renderer");
    assert_eq!(res, Ok(()));
    assert_eq!((stats.fences, stats.fence_events), (2, 2));
}

#[test]
fn global_fences_of_two_contexts_leave_in_the_guest_order() {
    let (mut g, _served) = device();
    for c in [1, 2] {
        g.command(&ctx_create(c, TEST_CAPSET_ID));
    }
    // Context 1 holds ring 0: its global fence waits; context 2's, after
    // it on the global timeline, retires at once in the renderer but must
    // not leave first.
    g.command(&submit(1, None, &[TEST_CMD_HOLD, 0, 0, 0]));
    let a = g.post(&submit(1, Some((10, None)), &[TEST_CMD_HOLD, 5, 0, 0]));
    let b = g.post(&submit(2, Some((11, None)), &[TEST_CMD_HOLD, 5, 0, 0]));
    g.kick();
    let mut r = g.used();
    thread::sleep(Duration::from_millis(50));
    r.extend(g.poll());
    assert!(r.is_empty(), "{r:?}");
    let (rel, mut r) = g.command(&submit(1, None, &[TEST_CMD_RELEASE, 0, 0, 0]));
    r.retain(|x| x.n != rel);
    let more = 2 - r.len().min(2);
    r.extend(poll_for(&mut g, more));
    assert_eq!(ns(&r), [a, b]);
}

#[test]
fn a_renderer_that_dies_with_kept_fences_ends_them() {
    let (dev, ren) = seqpacket_pair();
    let (die, dying) = std::sync::mpsc::channel::<()>();
    let t = thread::spawn(move || {
        let mut st = RendererState::new(FakeRegistrar::default(), RendererLimits::default());
        // Serve until the fenced stream's fence is created, then die when
        // told.
        let mut buf = vec![0u8; 4096];
        loop {
            let n = ren.recv(&mut buf).expect("recv");
            let (req, cmds) = Request::decode_with_data(&buf[..n]).expect("request");
            let (reply, _) = st.handle_with_data(&req, cmds);
            ren.send(&reply.encode()).expect("send");
            if req.op == Op::CreateFence {
                let _ = dying.recv();
                return;
            }
        }
    });
    let mut g = guest_over(dev);
    g.probe();
    g.command(&ctx_create(1, TEST_CAPSET_ID));
    g.command(&submit(1, None, &[TEST_CMD_HOLD, 0, 0, 0]));
    let (n, r) = g.command(&submit(1, Some((3, Some(0))), &[TEST_CMD_HOLD, 1, 0, 0]));
    assert!(r.is_empty());
    assert!(g.poll().is_empty());
    die.send(()).expect("tell");
    t.join().expect("renderer");
    let r = poll_for(&mut g, 1);
    assert_eq!(ns(&r), [n]);
    assert_eq!(
        (r[0].ty, r[0].flags & FLAG_FENCE, r[0].fence_id),
        (resp::ERR_UNSPEC, 1, 3)
    );
    assert_eq!(g.dev.fence_stats().ended, 1);
}

#[test]
fn the_renderer_refuses_fences_the_device_should_not_ask_for() {
    let mut st = RendererState::new(FakeRegistrar::default(), RendererLimits::default());
    let rq = |op: Op, seq: u64, f: &dyn Fn(&mut Request)| {
        let mut r = Request::new(op, seq);
        f(&mut r);
        r
    };
    let ctx = rq(Op::CreateContext, 1, &|r: &mut Request| {
        r.ctx_id = 1;
        r.capset = TEST_CAPSET_ID;
    });
    assert_eq!(st.handle(&ctx).errno, 0);
    let fence = |seq: u64, ctx: u32, capset: u32, ring: u32, id: u64| {
        rq(Op::CreateFence, seq, &|r: &mut Request| {
            r.ctx_id = ctx;
            r.capset = capset;
            r.resource_id = ring;
            r.arg = id;
            r.handle = 9;
        })
    };
    assert_eq!(st.handle(&fence(2, 1, TEST_CAPSET_ID, 0, 5)).errno, 0);
    for (why, req) in [
        ("the same id", fence(3, 1, TEST_CAPSET_ID, 0, 5)),
        ("a smaller id", fence(4, 1, TEST_CAPSET_ID, 0, 4)),
        ("ring 64", fence(5, 1, TEST_CAPSET_ID, 64, 6)),
        ("ring u32::MAX", fence(6, 1, TEST_CAPSET_ID, u32::MAX, 6)),
        ("no such context", fence(7, 2, TEST_CAPSET_ID, 0, 6)),
        ("another capset", fence(8, 1, 4, 0, 6)),
    ] {
        assert_eq!(st.handle(&req).errno, libc::EINVAL, "{why}");
    }
    // What it retired goes out once, with the generation asked in.
    assert_eq!(
        st.take_events(),
        [FenceRetired {
            ctx_id: 1,
            ring_idx: 0,
            fence_id: 5,
            generation: 9
        }]
    );
    assert!(st.take_events().is_empty());
    assert!(!st.fences_outstanding());
    // A destroyed context's fences go with it.
    let hold = {
        let mut v = Vec::new();
        for w in [TEST_CMD_HOLD, 1, 0, 0] {
            v.extend_from_slice(&u32::to_le_bytes(w));
        }
        v
    };
    let sub = rq(Op::Submit, 9, &|r: &mut Request| {
        r.ctx_id = 1;
        r.capset = TEST_CAPSET_ID;
        r.arg = 16;
    });
    assert_eq!(st.handle_with_data(&sub, &hold).0.errno, 0);
    assert_eq!(st.handle(&fence(10, 1, TEST_CAPSET_ID, 1, 7)).errno, 0);
    assert!(st.fences_outstanding());
    let destroy = rq(Op::DestroyContext, 11, &|r: &mut Request| r.ctx_id = 1);
    assert_eq!(st.handle(&destroy).errno, 0);
    assert!(!st.fences_outstanding());
    assert!(st.take_events().is_empty());
}

/// A renderer that answers HELLO, then runs `script` on its end.
fn scripted(script: fn(&UnixDatagram)) -> (SocketRenderer, thread::JoinHandle<()>) {
    let (dev, ren) = seqpacket_pair();
    let t = thread::spawn(move || {
        let mut buf = [0u8; REQUEST_LEN];
        let n = ren.recv(&mut buf).expect("hello");
        let req = Request::decode(&buf[..n]).expect("hello");
        let reply = Reply {
            version: VERSION,
            op: req.op,
            errno: 0,
            map_info: 0,
            handle: 0,
            seq: req.seq,
        };
        ren.send(&reply.encode()).expect("send");
        script(&ren);
    });
    (SocketRenderer::connect(dev).expect("hello"), t)
}

fn ev(i: u64) -> [u8; EVENT_LEN] {
    encode_event(&FenceRetired {
        ctx_id: 1,
        ring_idx: 0,
        fence_id: i,
        generation: 1,
    })
}

#[test]
fn events_are_read_a_bounded_number_at_a_time() {
    let (mut sr, t) = scripted(|ren| {
        for i in 0..3000 {
            if ren.send(&ev(i)).is_err() {
                return;
            }
        }
        // Stay connected until the device goes.
        let _ = ren.recv(&mut [0u8; 64]);
    });
    let mut total = 0;
    let t0 = Instant::now();
    while total < 3000 && t0.elapsed() < Duration::from_secs(5) {
        let n = sr.poll_events().len();
        assert!(n <= MAX_EVENTS_PER_POLL);
        total += n;
    }
    assert_eq!(total, 3000);
    assert!(!sr.is_lost());
    drop(sr);
    t.join().expect("renderer");
}

#[test]
fn a_flood_of_events_before_a_reply_breaks_the_connection() {
    let (mut sr, t) = scripted(|ren| {
        let mut buf = [0u8; 4096];
        if ren.recv(&mut buf).is_err() {
            return;
        }
        for i in 0..=(MAX_PENDING_EVENTS as u64) {
            if ren.send(&ev(i)).is_err() {
                return;
            }
        }
    });
    let r = sr.create_context(1, TEST_CAPSET_ID);
    assert!(r.is_err());
    assert!(sr.is_lost());
    drop(sr);
    t.join().expect("renderer");
}

#[test]
fn an_event_that_is_not_the_protocol_breaks_the_connection() {
    for script in [
        // Another version.
        (|ren: &UnixDatagram| {
            let mut b = ev(1);
            b[4] = 4;
            let _ = ren.send(&b);
        }) as fn(&UnixDatagram),
        // Another kind.
        |ren| {
            let mut b = ev(1);
            b[6] = 2;
            let _ = ren.send(&b);
        },
        // Too short, too long.
        |ren| {
            let _ = ren.send(&ev(1)[..EVENT_LEN - 1]);
        },
        |ren| {
            let mut b = ev(1).to_vec();
            b.push(0);
            let _ = ren.send(&b);
        },
        // A reply nobody asked for.
        |ren| {
            let _ = ren.send(&[0u8; REPLY_LEN]);
        },
        // The end of the connection.
        |_| {},
    ] {
        let (mut sr, t) = scripted(script);
        t.join().expect("renderer");
        let t0 = Instant::now();
        while !sr.is_lost() && t0.elapsed() < Duration::from_secs(1) {
            assert!(sr.poll_events().is_empty());
        }
        assert!(sr.is_lost());
    }
}

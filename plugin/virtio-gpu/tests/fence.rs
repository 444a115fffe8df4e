//! Context fences through the control queue (docs/virtio-gpu.md, "Context
//! fences"): a fenced command's response is kept until the renderer
//! retired its fence, unfenced ones and errors are not held behind it, a
//! later fence of a timeline never leaves before an earlier one, and what
//! a hostile guest or a lying renderer does is bounded or ignored. The
//! renderer is a fake whose reports the test writes.

use std::sync::{Arc, Mutex};

use gpu_hostmem_virtio_gpu::blob::{resp as bresp, TEST_CAPSET_ID};
use gpu_hostmem_virtio_gpu::device::GpuConfig;
use gpu_hostmem_virtio_gpu::engine::VirtioGpu;
use gpu_hostmem_virtio_gpu::fence::MAX_KEPT_PER_OWNER;
use gpu_hostmem_virtio_gpu::gpu2d::resp;
use gpu_hostmem_virtio_gpu::layout::common;
use gpu_hostmem_virtio_gpu::renderer::{
    BlobHandle, BlobRequest, FenceRetired, MapCache, Renderer, RendererError,
};

mod support;
use support::guest::*;

/// What the fake renderer was asked and will report.
#[derive(Debug, Default)]
struct FakeState {
    /// create_fence calls: (ctx, capset, ring, id, generation).
    fences: Vec<(u32, u32, u32, u64, u64)>,
    submits: u32,
    /// Reports for the next poll.
    events: Vec<FenceRetired>,
    lost: bool,
    /// Refuse create_fence.
    refuse_fences: bool,
}

#[derive(Debug, Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().expect("fake")
    }
    fn retire(&self, ctx: u32, ring: u32, id: u64, generation: u64) {
        self.st().events.push(FenceRetired {
            ctx_id: ctx,
            ring_idx: ring,
            fence_id: id,
            generation,
        });
    }
}

fn gone(op: &'static str) -> RendererError {
    RendererError::Io {
        op,
        source: std::io::Error::from_raw_os_error(32),
    }
}

impl Renderer for Fake {
    fn create_context(&mut self, _: u32, _: u32) -> Result<(), RendererError> {
        if self.st().lost {
            return Err(gone("create_context"));
        }
        Ok(())
    }
    fn destroy_context(&mut self, _: u32) -> Result<(), RendererError> {
        Ok(())
    }
    fn create_blob(&mut self, r: BlobRequest) -> Result<BlobHandle, RendererError> {
        Ok(BlobHandle(u64::from(r.resource_id)))
    }
    fn map_blob(&mut self, _: BlobHandle, _: u64) -> Result<MapCache, RendererError> {
        Ok(MapCache::Cached)
    }
    fn unmap_blob(&mut self, _: BlobHandle) -> Result<(), RendererError> {
        Ok(())
    }
    fn destroy_blob(&mut self, _: BlobHandle) -> Result<(), RendererError> {
        Ok(())
    }
    fn capset(&mut self, _: u32, _: u32, size: u32) -> Result<Vec<u8>, RendererError> {
        Ok(vec![0; size as usize])
    }
    fn submit(&mut self, _: u32, _: u32, _: &[u8]) -> Result<(), RendererError> {
        let mut s = self.st();
        if s.lost {
            return Err(gone("submit"));
        }
        s.submits += 1;
        Ok(())
    }
    fn create_fence(
        &mut self,
        ctx: u32,
        capset: u32,
        ring: u32,
        id: u64,
        generation: u64,
    ) -> Result<(), RendererError> {
        let mut s = self.st();
        if s.lost {
            return Err(gone("create_fence"));
        }
        if s.refuse_fences {
            return Err(RendererError::Refused {
                op: "create_fence",
                errno: 22,
            });
        }
        s.fences.push((ctx, capset, ring, id, generation));
        Ok(())
    }
    fn poll_events(&mut self) -> Vec<FenceRetired> {
        std::mem::take(&mut self.st().events)
    }
    fn is_lost(&self) -> bool {
        self.st().lost
    }
}

fn guest() -> (Guest, Fake) {
    let fake = Fake::default();
    let dev = VirtioGpu::with_renderer(
        256 << 20,
        1,
        GpuConfig::default().with_test_capset(),
        1 << 20,
        Box::new(fake.clone()),
    )
    .expect("device");
    let mut g = Guest::with(dev);
    assert!(g.probe().activated);
    (g, fake)
}

/// A guest with contexts 1 and 2 of the test capset.
fn two_contexts() -> (Guest, Fake) {
    let (mut g, fake) = guest();
    for c in [1, 2] {
        let (_, r) = g.command(&ctx_create(c, TEST_CAPSET_ID));
        assert_eq!(r[0].ty, resp::OK_NODATA);
    }
    (g, fake)
}

const STREAM: [u32; 4] = [1, 5, 0, 7];
const OK: u32 = resp::OK_NODATA;

#[test]
fn a_fenced_submit_is_answered_when_its_fence_retires_and_others_pass_it() {
    let (mut g, fake) = two_contexts();
    let gen = g.dev.fence_generation();
    let (s, r) = g.command(&submit(1, Some((5, Some(1))), &STREAM));
    assert!(r.is_empty(), "kept until the fence retires: {r:?}");
    assert_eq!(fake.st().submits, 1, "the stream went to the renderer");
    assert_eq!(
        fake.st().fences,
        [(1, TEST_CAPSET_ID, 1, 5, gen)],
        "a fence after it, on its ring"
    );
    // Unfenced commands and other contexts' fences are not held behind it:
    // the used ring is out of order.
    let (d, r) = g.command(&display_info(None));
    assert_eq!(ns(&r), [d]);
    assert_eq!(g.dev.fence_stats().waiting, 1);
    g.r(ISR, 1);
    assert!(!g.irq);
    assert!(g.poll().is_empty(), "nothing retired yet");
    fake.retire(1, 1, 5, gen);
    let r = g.poll();
    assert_eq!(ns(&r), [s]);
    assert_eq!(
        (r[0].ty, r[0].flags, r[0].fence_id, r[0].ring),
        (OK, FLAG_FENCE | FLAG_RING, 5, 1)
    );
    assert!(g.irq, "the driver is interrupted for it");
    assert_eq!(g.dev.fence_stats().kept, 0);
}

#[test]
fn a_retirement_finishes_every_kept_fence_of_its_ring_up_to_it() {
    let (mut g, fake) = two_contexts();
    let gen = g.dev.fence_generation();
    let n: Vec<u64> = (1..=4)
        .map(|id| g.post(&submit(1, Some((id, Some(0))), &STREAM)))
        .collect();
    // A fence of another ring of the same context.
    let other = g.post(&submit(1, Some((5, Some(3))), &STREAM));
    g.kick();
    assert!(g.used().is_empty());
    fake.retire(1, 0, 2, gen);
    assert_eq!(ns(&g.poll()), [n[0], n[1]]);
    fake.retire(1, 3, 5, gen);
    assert_eq!(ns(&g.poll()), [other], "rings are independent");
    fake.retire(1, 0, 4, gen);
    assert_eq!(ns(&g.poll()), [n[2], n[3]]);
}

#[test]
fn a_later_fence_of_a_timeline_never_leaves_before_an_earlier_one() {
    let (mut g, fake) = two_contexts();
    let gen = g.dev.fence_generation();
    // The global timeline (no INFO_RING_IDX) spans contexts: Linux signals
    // every earlier global fence with a later one.
    let a = g.post(&submit(1, Some((10, None)), &STREAM));
    let b = g.post(&submit(2, Some((11, None)), &STREAM));
    // A fenced command the device does itself, behind them.
    let c = g.post(&display_info(Some((12, None))));
    g.kick();
    assert!(g.used().is_empty());
    assert_eq!(
        fake.st()
            .fences
            .iter()
            .map(|f| (f.0, f.2))
            .collect::<Vec<_>>(),
        [(1, 0), (2, 0)],
        "a global fence goes on its context's ring 0"
    );
    fake.retire(2, 0, 11, gen);
    assert!(g.poll().is_empty(), "11 retired, 10 not: nothing leaves");
    fake.retire(1, 0, 10, gen);
    let r = g.poll();
    assert_eq!(ns(&r), [a, b, c], "in the timeline's order");
    assert_eq!(
        r.iter().map(|x| x.fence_id).collect::<Vec<_>>(),
        [10, 11, 12]
    );
    assert_eq!(r[2].ty, resp::OK_DISPLAY_INFO);
}

#[test]
fn errors_are_answered_at_once_unless_an_earlier_fence_of_their_timeline_waits() {
    let (mut g, fake) = two_contexts();
    let gen = g.dev.fence_generation();
    // A fence on a context that does not exist (its ring has nothing
    // kept): at once, with its fence.
    let (_, r) = g.command(&submit(9, Some((1, Some(0))), &STREAM));
    assert_eq!(
        (r[0].ty, r[0].flags, r[0].fence_id),
        (bresp::ERR_INVALID_CONTEXT_ID, FLAG_FENCE | FLAG_RING, 1)
    );
    // Unfenced errors: at once.
    let (_, r) = g.command(&submit(9, None, &STREAM));
    assert_eq!(r[0].ty, bresp::ERR_INVALID_CONTEXT_ID);
    // On the global timeline behind a waiting fence, an error waits its
    // turn (answered with its fence, Linux would signal the earlier one).
    let a = g.post(&submit(1, Some((5, None)), &STREAM));
    let b = g.post(&submit(9, Some((6, None)), &STREAM));
    g.kick();
    assert!(g.used().is_empty());
    fake.retire(1, 0, 5, gen);
    let r = g.poll();
    assert_eq!(ns(&r), [a, b]);
    assert_eq!(r[1].ty, bresp::ERR_INVALID_CONTEXT_ID);
    assert_eq!(fake.st().fences.len(), 1, "no fence for the refused one");
    // A renderer refusing the fence: the stream ran, the answer is an
    // error, at once.
    fake.st().refuse_fences = true;
    let (_, r) = g.command(&submit(1, Some((7, Some(2))), &STREAM));
    assert_eq!((r[0].ty, r[0].fence_id), (resp::ERR_UNSPEC, 7));
}

#[test]
fn hostile_fence_ids_and_rings_are_refused_before_anything_runs() {
    let (mut g, fake) = two_contexts();
    let gen = g.dev.fence_generation();
    let first = g.post(&submit(1, Some((10, Some(1))), &STREAM));
    // Decreasing and repeated ids on the same ring, behind the kept one.
    let dec = g.post(&submit(1, Some((9, Some(1))), &STREAM));
    let rep = g.post(&submit(1, Some((10, Some(1))), &STREAM));
    g.kick();
    assert!(g.used().is_empty());
    assert_eq!(fake.st().submits, 1, "neither ran");
    // Rings at and beyond 64 (the field is a byte): refused at once.
    for ring in [64u8, 200, 255] {
        let (_, r) = g.command(&submit(
            1,
            Some((100 + u64::from(ring), Some(ring))),
            &STREAM,
        ));
        assert_eq!(r[0].ty, resp::ERR_INVALID_PARAMETER, "ring {ring}");
    }
    assert_eq!(fake.st().submits, 1);
    fake.retire(1, 1, 10, gen);
    let r = g.poll();
    assert_eq!(ns(&r), [first, dec, rep]);
    assert_eq!(
        r.iter().map(|x| x.ty).collect::<Vec<_>>(),
        [OK, resp::ERR_INVALID_PARAMETER, resp::ERR_INVALID_PARAMETER]
    );
    // The global timeline too.
    let (_, r) = g.command(&display_info(Some((50, None))));
    assert_eq!(r[0].ty, resp::OK_DISPLAY_INFO);
    let (_, r) = g.command(&display_info(Some((49, None))));
    assert_eq!(r[0].ty, resp::ERR_INVALID_PARAMETER);
}

#[test]
fn the_bound_on_kept_responses_refuses_without_signalling_earlier_fences() {
    let (mut g, fake) = two_contexts();
    let gen = g.dev.fence_generation();
    // A hostile driver re-posts descriptors the device still holds, to
    // make it keep without limit.
    let mut kept = 0;
    let mut id = 0u64;
    while kept < MAX_KEPT_PER_OWNER {
        let batch = (MAX_KEPT_PER_OWNER - kept).min(100);
        for _ in 0..batch {
            id += 1;
            g.post_with(&submit(1, Some((id, Some(0))), &STREAM), true);
        }
        g.kick();
        kept += batch;
        assert!(g.used().is_empty());
    }
    assert_eq!(g.dev.fence_stats().kept, MAX_KEPT_PER_OWNER);
    let submits = fake.st().submits;
    // One more of that context: refused, not run, answered at once
    // without a fence (with one, Linux would signal the kept ones).
    id += 1;
    let n = g.post_with(&submit(1, Some((id, Some(0))), &STREAM), true);
    g.kick();
    let r = g.used();
    assert_eq!(ns(&r), [n]);
    assert_eq!(
        (r[0].ty, r[0].flags, r[0].fence_id),
        (resp::ERR_OUT_OF_MEMORY, 0, 0)
    );
    assert_eq!(fake.st().submits, submits, "not run");
    assert_eq!(g.dev.fence_stats().refused_full, 1);
    // Another context still works.
    let (_, r) = g.command(&submit(2, Some((1, Some(0))), &STREAM));
    assert!(r.is_empty());
    fake.retire(2, 0, 1, gen);
    assert_eq!(g.poll().len(), 1);
    // The kept ones all leave when retired (descriptors were re-used: the
    // driver gets what it deserves, the device stays consistent).
    fake.retire(1, 0, id - 1, gen);
    let a = g.dev.poll_renderer(&mut g.mem);
    g.apply(a);
    assert_eq!(g.dev.fence_stats().kept, 0);
    assert_eq!(
        g.dev.fence_stats().answered as usize,
        MAX_KEPT_PER_OWNER + 1
    );
}

#[test]
fn fenced_commands_of_unknown_contexts_count_against_one_shared_bound() {
    let (mut g, fake) = two_contexts();
    let gen = g.dev.fence_generation();
    // A global fence waits; fenced commands naming thousands of contexts
    // that do not exist queue behind it under one owner, not one each.
    g.command(&submit(1, Some((1, None)), &STREAM));
    let mut refused = 0;
    for i in 0..(2 * MAX_KEPT_PER_OWNER as u32) {
        let mut r = display_info(Some((2 + u64::from(i), None)));
        r[16..20].copy_from_slice(&(1000 + i).to_le_bytes());
        g.post_with(&r, true);
        if i % 100 == 99 {
            g.kick();
            refused += g.used().len();
        }
    }
    g.kick();
    refused += g.used().len();
    assert_eq!(g.dev.fence_stats().kept, 1 + MAX_KEPT_PER_OWNER);
    assert_eq!(refused, MAX_KEPT_PER_OWNER);
    fake.retire(1, 0, 1, gen);
    let a = g.dev.poll_renderer(&mut g.mem);
    g.apply(a);
    assert_eq!(g.dev.fence_stats().kept, 0);
}

#[test]
fn destroying_a_context_finishes_its_kept_fences() {
    let (mut g, fake) = two_contexts();
    let gen = g.dev.fence_generation();
    let a = g.post(&submit(1, Some((1, Some(1))), &STREAM));
    let b = g.post(&submit(1, Some((2, None)), &STREAM));
    let other = g.post(&submit(2, Some((3, Some(1))), &STREAM));
    g.kick();
    assert!(g.used().is_empty());
    // CTX_DESTROY (unfenced): the device answers the context's kept
    // responses itself (the renderer drops a destroyed context's fences).
    let d = g.post(&req(0x201, 0, 0, 1, 0, &[]));
    g.kick();
    let r = g.used();
    let mut got = ns(&r);
    got.sort_unstable();
    assert_eq!(got, [a, b, d]);
    assert!(g.used().is_empty());
    // A late report for the gone context is dropped; the other context's
    // fence is untouched.
    fake.retire(1, 1, 1, gen);
    assert!(g.poll().is_empty());
    assert_eq!(g.dev.fence_stats().waiting, 1);
    fake.retire(2, 1, 3, gen);
    assert_eq!(ns(&g.poll()), [other]);
    // A new context with the old id starts its rings afresh.
    g.command(&ctx_create(1, TEST_CAPSET_ID));
    let (_, r) = g.command(&submit(1, Some((4, Some(1))), &STREAM));
    assert!(r.is_empty());
    fake.retire(1, 1, 4, gen);
    assert_eq!(g.poll().len(), 1);
}

#[test]
fn a_reset_drops_kept_responses_and_reports_from_before_it_are_ignored() {
    let (mut g, fake) = two_contexts();
    let old = g.dev.fence_generation();
    g.command(&submit(1, Some((5, Some(0))), &STREAM));
    assert_eq!(g.dev.fence_stats().kept, 1);
    assert!(g.w(COMMON + common::STATUS, 1, 0).reset);
    assert_eq!(g.dev.fence_stats().kept, 0, "dropped, unanswered");
    // The driver starts again: same context id, fence ids from 1.
    g.probe();
    let new = g.dev.fence_generation();
    assert_ne!(new, old);
    g.command(&ctx_create(1, TEST_CAPSET_ID));
    let (_, r) = g.command(&submit(1, Some((1, Some(0))), &STREAM));
    assert!(r.is_empty());
    assert_eq!(fake.st().fences.last().map(|f| f.4), Some(new));
    // The old generation's retirement of 5 must not finish the new 1.
    fake.retire(1, 0, 5, old);
    fake.retire(1, 0, 1, old);
    assert!(g.poll().is_empty());
    assert_eq!(g.dev.fence_stats().ignored_events, 2);
    fake.retire(1, 0, 1, new);
    assert_eq!(g.poll().len(), 1);
}

#[test]
fn a_lost_renderer_ends_every_kept_fence_with_an_error() {
    let (mut g, fake) = two_contexts();
    let a = g.post(&submit(1, Some((1, Some(0))), &STREAM));
    let b = g.post(&submit(2, Some((2, None)), &STREAM));
    let c = g.post(&display_info(Some((3, None))));
    g.kick();
    assert!(g.used().is_empty());
    fake.st().lost = true;
    let r = g.poll();
    let mut got = ns(&r);
    got.sort_unstable();
    assert_eq!(got, [a, b, c]);
    for x in &r {
        assert_ne!(
            x.flags & FLAG_FENCE,
            0,
            "with its fence: the guest's wait ends"
        );
        if x.n == c {
            assert_eq!(x.ty, resp::OK_DISPLAY_INFO, "done by the device");
        } else {
            assert_eq!(x.ty, resp::ERR_UNSPEC, "never run by the renderer");
        }
    }
    assert_eq!(g.dev.fence_stats().ended, 2);
    // Later fenced commands are answered at once.
    let (_, r) = g.command(&submit(1, Some((4, Some(0))), &STREAM));
    assert_eq!(r[0].ty, resp::ERR_UNSPEC);
    assert_eq!(g.dev.fence_stats().kept, 0);
}

#[test]
fn a_lying_renderer_cannot_finish_fences_it_was_not_asked_for() {
    let (mut g, fake) = two_contexts();
    let gen = g.dev.fence_generation();
    let (k, _) = g.command(&submit(1, Some((5, Some(2))), &STREAM));
    for (ctx, ring, id, gn) in [
        (1, 2, 6, gen),        // beyond the newest asked
        (1, 2, u64::MAX, gen), // far beyond
        (1, 3, 5, gen),        // a ring never asked
        (3, 2, 5, gen),        // no such context
        (1, u32::MAX, 5, gen), // no such ring
        (1, 2, 5, gen + 1),    // another generation
        (1, 2, 5, gen.wrapping_sub(1)),
    ] {
        fake.retire(ctx, ring, id, gn);
    }
    assert!(g.poll().is_empty());
    assert_eq!(g.dev.fence_stats().ignored_events, 7);
    // A flood of them: dropped, nothing grows.
    for i in 0..100_000u64 {
        fake.retire(1 + (i % 7) as u32, (i % 300) as u32, 6 + i, gen);
    }
    assert!(g.poll().is_empty());
    assert_eq!(g.dev.fence_stats().kept, 1);
    fake.retire(1, 2, 5, gen);
    assert_eq!(ns(&g.poll()), [k]);
}

#[test]
fn the_device_does_not_offer_in_order_completion() {
    let (mut g, _) = guest();
    g.w(COMMON + common::DFSELECT, 4, 1);
    let hi = g.r(COMMON + common::DF, 4);
    assert_eq!(hi & (1 << (35 - 32)), 0, "VIRTIO_F_IN_ORDER");
}

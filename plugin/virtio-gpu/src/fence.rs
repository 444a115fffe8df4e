//! Context fences (docs/virtio-gpu.md, "Context fences"): the responses of
//! fenced commands the device keeps until the work before them is done.
//!
//! A command with `VIRTIO_GPU_FLAG_FENCE` belongs to a **timeline**: its
//! context's ring when it also has `VIRTIO_GPU_FLAG_INFO_RING_IDX`, else
//! the one global timeline (Linux keeps one dma-fence context for all
//! fences without a ring, across contexts and processes). Linux signals,
//! for a response with fence id N, that fence and every earlier one of the
//! same timeline (`virtio_gpu_fence_event_process`), so the device must
//! never answer a fence while an earlier one of its timeline is not done.
//! Here, each timeline is a queue in the guest's order; a response leaves
//! only from the front, once it is done:
//!
//! - a command the renderer must run first (a fenced SUBMIT_3D) waits for
//!   the renderer to retire its fence on (context, ring); a fence without
//!   a ring waits on its context's ring 0. A retirement of id N on a ring
//!   finishes every kept fence of that ring up to N;
//! - every other fenced command, and every refusal, is done when answered,
//!   and leaves as soon as nothing earlier of its timeline waits;
//! - a destroyed context's waiting fences are done (the renderer drops
//!   them); the renderer's loss ends every waiting fence (the caller
//!   answers those with an error: nothing will run them);
//! - a device reset drops everything kept, unanswered (the driver reset
//!   the queues), and starts a new generation: events of the old one are
//!   ignored.
//!
//! What a hostile guest or renderer can do is bounded: at most
//! [`MAX_KEPT_PER_OWNER`] kept responses per live context and as many for
//! everything else (owner 0), so at most 65 x 256; rings below
//! [`MAX_RINGS`] (Linux and virglrenderer's limit); fence ids growing on
//! each timeline; state per (context, ring) only for live contexts. An
//! event is taken only for a ring the device asked a fence on, in this
//! generation, and up to the newest fence it asked for there.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::renderer::FenceRetired;

/// Rings per context (`VIRTGPU_CONTEXT_PARAM_NUM_RINGS` is at most 64 in
/// Linux; virglrenderer's proxy refuses ring 64 and above).
pub const MAX_RINGS: u32 = 64;
/// Most responses kept per owner (a live context, or 0 for everything
/// else). The control queue has at most 256 entries, so a driver that
/// follows the rules (it reuses a descriptor only once the device returned
/// it) never reaches this; a hostile one that re-posts descriptors does.
pub const MAX_KEPT_PER_OWNER: usize = 256;

/// The timeline of a fenced command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timeline {
    /// Fences without `INFO_RING_IDX`.
    Global,
    /// A context's ring.
    Ring {
        /// The context.
        ctx: u32,
        /// The ring, below [`MAX_RINGS`].
        ring: u32,
    },
}

/// Why a fenced command is refused before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A ring at or above [`MAX_RINGS`].
    Ring,
    /// A fence id not above the last one of its timeline.
    NotIncreasing,
    /// The owner keeps [`MAX_KEPT_PER_OWNER`] responses already.
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waits for the renderer to retire (context, ring).
    Waiting(u32, u32),
    /// Done; leaves once nothing earlier waits.
    Done,
    /// The renderer is gone before it retired it.
    Ended,
}

#[derive(Debug)]
struct Kept<T> {
    fence_id: u64,
    owner: u32,
    state: State,
    item: T,
}

/// What the renderer was asked and retired on one ring of a live context.
#[derive(Clone, Copy, Debug, Default)]
struct RingState {
    asked: u64,
    retired: u64,
}

/// Counters for status and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FenceStats {
    /// Responses kept now.
    pub kept: usize,
    /// Of which waiting for the renderer.
    pub waiting: usize,
    /// Kept responses answered since the start.
    pub answered: u64,
    /// Retirements taken.
    pub retirements: u64,
    /// Events dropped: another generation, a ring never asked, a fence
    /// never asked for.
    pub ignored_events: u64,
    /// Fenced commands refused at the bound.
    pub refused_full: u64,
    /// Waiting fences ended by the renderer's loss.
    pub ended: u64,
}

/// One response leaving: the caller answers it (with an error if `ended`).
#[derive(Debug, PartialEq, Eq)]
pub struct Ready<T> {
    /// What the caller kept with it.
    pub item: T,
    /// Its fence id.
    pub fence_id: u64,
    /// The renderer went away before retiring it.
    pub ended: bool,
}

/// The kept responses of one device.
#[derive(Debug)]
pub struct Fences<T> {
    generation: u64,
    timelines: BTreeMap<Timeline, VecDeque<Kept<T>>>,
    /// The last fence id taken per timeline (global, and rings of live
    /// contexts only).
    last_id: HashMap<Timeline, u64>,
    rings: HashMap<(u32, u32), RingState>,
    per_owner: HashMap<u32, usize>,
    stats: FenceStats,
}

impl<T> Default for Fences<T> {
    fn default() -> Self {
        Fences {
            generation: 1,
            timelines: BTreeMap::new(),
            last_id: HashMap::new(),
            rings: HashMap::new(),
            per_owner: HashMap::new(),
            stats: FenceStats::default(),
        }
    }
}

impl<T> Fences<T> {
    /// Nothing kept, generation 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// The reset generation: fences are asked and events taken in it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Counters.
    pub fn stats(&self) -> FenceStats {
        let all = self.timelines.values().flatten();
        FenceStats {
            kept: self.timelines.values().map(VecDeque::len).sum(),
            waiting: all
                .filter(|k| matches!(k.state, State::Waiting(..)))
                .count(),
            ..self.stats
        }
    }

    /// Responses kept now.
    pub fn kept(&self) -> usize {
        self.timelines.values().map(VecDeque::len).sum()
    }

    /// Whether a fenced command of `owner` with `fence_id` on `timeline`
    /// may run. Checked before the command runs; a refused one does not
    /// run.
    pub fn check(&mut self, timeline: Timeline, owner: u32, fence_id: u64) -> Result<(), Refusal> {
        if let Timeline::Ring { ring, .. } = timeline {
            if ring >= MAX_RINGS {
                return Err(Refusal::Ring);
            }
        }
        if self.per_owner.get(&owner).copied().unwrap_or(0) >= MAX_KEPT_PER_OWNER {
            self.stats.refused_full += 1;
            return Err(Refusal::Full);
        }
        if self.last_id.get(&timeline).is_some_and(|&l| fence_id <= l) {
            return Err(Refusal::NotIncreasing);
        }
        Ok(())
    }

    /// The device is about to ask the renderer for `fence_id` on `(ctx,
    /// ring)` of a live context: from now on the renderer may report it.
    pub fn asking(&mut self, ctx: u32, ring: u32, fence_id: u64) {
        if ring < MAX_RINGS {
            let r = self.rings.entry((ctx, ring)).or_default();
            r.asked = r.asked.max(fence_id);
        }
    }

    /// Keeps `item`, the response of a fenced command of `owner` (a live
    /// context, or 0) on `timeline`. `waits`: the (context, ring) whose
    /// retirement of `fence_id` it waits for (a fence the renderer was
    /// asked for, [`Fences::asking`]); `None` if it is done. The id is the
    /// timeline's last from now on if the timeline is the global one or a
    /// live context's ring (`owner` is its context).
    pub fn keep(
        &mut self,
        timeline: Timeline,
        owner: u32,
        fence_id: u64,
        waits: Option<(u32, u32)>,
        item: T,
    ) {
        let state = match waits {
            Some((c, r))
                if self
                    .rings
                    .get(&(c, r))
                    .is_some_and(|s| s.retired < fence_id) =>
            {
                State::Waiting(c, r)
            }
            _ => State::Done,
        };
        let tracked = match timeline {
            Timeline::Global => true,
            Timeline::Ring { ctx, ring } => ctx == owner && owner != 0 && ring < MAX_RINGS,
        };
        if tracked {
            let l = self.last_id.entry(timeline).or_default();
            *l = (*l).max(fence_id);
        }
        *self.per_owner.entry(owner).or_default() += 1;
        self.timelines.entry(timeline).or_default().push_back(Kept {
            fence_id,
            owner,
            state,
            item,
        });
    }

    /// Takes the renderer's report; returns whether it was taken (an event
    /// of another generation, of a ring no fence was asked on, or beyond
    /// the newest fence asked there, is dropped and counted).
    pub fn retire(&mut self, e: &FenceRetired) -> bool {
        let ok = e.generation == self.generation
            && self
                .rings
                .get(&(e.ctx_id, e.ring_idx))
                .is_some_and(|r| e.fence_id <= r.asked);
        if !ok {
            self.stats.ignored_events += 1;
            return false;
        }
        self.stats.retirements += 1;
        let r = self.rings.entry((e.ctx_id, e.ring_idx)).or_default();
        if e.fence_id <= r.retired {
            // Nothing new: no walk over what is kept (a renderer repeating
            // itself costs the worker nothing more).
            return true;
        }
        r.retired = e.fence_id;
        let upto = r.retired;
        let key = (e.ctx_id, e.ring_idx);
        self.mark(
            |k| k.state == State::Waiting(key.0, key.1) && k.fence_id <= upto,
            State::Done,
        );
        true
    }

    /// Context `ctx` is gone: its waiting fences are done (the renderer
    /// drops a destroyed context's fences without retiring them) and its
    /// rings are forgotten.
    pub fn context_gone(&mut self, ctx: u32) {
        self.rings.retain(|&(c, _), _| c != ctx);
        self.last_id
            .retain(|t, _| !matches!(t, Timeline::Ring { ctx: c, .. } if *c == ctx));
        self.mark(
            |k| matches!(k.state, State::Waiting(c, _) if c == ctx),
            State::Done,
        );
    }

    /// The renderer is gone: every waiting fence ends.
    pub fn renderer_lost(&mut self) {
        let mut n = 0;
        for k in self.timelines.values_mut().flatten() {
            if matches!(k.state, State::Waiting(..)) {
                k.state = State::Ended;
                n += 1;
            }
        }
        self.stats.ended += n;
    }

    fn mark(&mut self, which: impl Fn(&Kept<T>) -> bool, to: State) {
        for k in self.timelines.values_mut().flatten() {
            if which(k) {
                k.state = to;
            }
        }
    }

    /// The responses that may leave now: from the front of each timeline,
    /// as long as they are done.
    pub fn take_ready(&mut self) -> Vec<Ready<T>> {
        let mut out = Vec::new();
        for q in self.timelines.values_mut() {
            while q
                .front()
                .is_some_and(|k| !matches!(k.state, State::Waiting(..)))
            {
                let Some(k) = q.pop_front() else { break };
                if let Some(n) = self.per_owner.get_mut(&k.owner) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_owner.remove(&k.owner);
                    }
                }
                out.push(Ready {
                    item: k.item,
                    fence_id: k.fence_id,
                    ended: k.state == State::Ended,
                });
            }
        }
        self.timelines.retain(|_, q| !q.is_empty());
        self.stats.answered += out.len() as u64;
        out
    }

    /// The device was reset: everything kept is dropped unanswered, and
    /// events of the old generation will be ignored.
    pub fn reset(&mut self) {
        self.timelines.clear();
        self.last_id.clear();
        self.rings.clear();
        self.per_owner.clear();
        self.generation = self.generation.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ctx: u32, ring: u32, id: u64, generation: u64) -> FenceRetired {
        FenceRetired {
            ctx_id: ctx,
            ring_idx: ring,
            fence_id: id,
            generation,
        }
    }

    fn ids(r: Vec<Ready<u64>>) -> Vec<u64> {
        r.into_iter().map(|x| x.item).collect()
    }

    #[test]
    fn a_later_fence_never_leaves_before_an_earlier_one_of_its_timeline() {
        let mut f = Fences::new();
        let g = Timeline::Global;
        for id in [1u64, 2, 3] {
            f.check(g, 1, id).expect("check");
            f.asking(1, 0, id);
            f.keep(g, 1, id, Some((1, 0)), id);
        }
        assert!(f.take_ready().is_empty());
        // Fence 2 of another context's ring 0 is not ours.
        assert!(!f.retire(&ev(2, 0, 2, 1)));
        assert!(f.retire(&ev(1, 0, 2, 1)));
        assert_eq!(ids(f.take_ready()), [1, 2]);
        assert!(f.retire(&ev(1, 0, 3, 1)));
        assert_eq!(ids(f.take_ready()), [3]);
        assert_eq!(f.kept(), 0);
    }

    #[test]
    fn a_done_response_waits_behind_an_earlier_waiting_one() {
        let mut f = Fences::new();
        let t = Timeline::Ring { ctx: 1, ring: 2 };
        f.asking(1, 2, 5);
        f.keep(t, 1, 5, Some((1, 2)), 5u64);
        f.keep(t, 1, 6, None, 6);
        assert!(f.take_ready().is_empty());
        f.retire(&ev(1, 2, 5, 1));
        assert_eq!(ids(f.take_ready()), [5, 6]);
    }

    #[test]
    fn stale_unknown_and_future_events_are_dropped() {
        let mut f = Fences::new();
        let t = Timeline::Ring { ctx: 1, ring: 0 };
        f.asking(1, 0, 4);
        f.keep(t, 1, 4, Some((1, 0)), 4u64);
        for e in [
            ev(1, 0, 4, 0),        // another generation
            ev(1, 0, 4, 2),        // a future one
            ev(1, 0, 5, 1),        // a fence never asked for
            ev(1, 1, 1, 1),        // a ring never asked on
            ev(9, 0, 1, 1),        // no such context
            ev(1, u32::MAX, 1, 1), // no such ring
        ] {
            assert!(!f.retire(&e), "{e:?}");
        }
        assert!(f.take_ready().is_empty());
        assert_eq!(f.stats().ignored_events, 6);
        f.reset();
        assert_eq!(f.kept(), 0);
        assert!(!f.retire(&ev(1, 0, 4, 1)), "the old generation after reset");
    }

    #[test]
    fn refusals_rings_ids_and_the_bound() {
        let mut f = Fences::new();
        let t = Timeline::Ring { ctx: 1, ring: 0 };
        assert_eq!(
            f.check(Timeline::Ring { ctx: 1, ring: 64 }, 1, 1),
            Err(Refusal::Ring)
        );
        f.asking(1, 0, 10);
        f.keep(t, 1, 10, Some((1, 0)), 0u64);
        assert_eq!(f.check(t, 1, 10), Err(Refusal::NotIncreasing));
        assert_eq!(f.check(t, 1, 9), Err(Refusal::NotIncreasing));
        assert_eq!(f.check(t, 1, 11), Ok(()));
        for id in 11..(10 + MAX_KEPT_PER_OWNER as u64) {
            f.keep(t, 1, id, None, id);
        }
        assert_eq!(f.check(t, 1, 1000), Err(Refusal::Full));
        // Another owner is not affected.
        assert_eq!(f.check(Timeline::Ring { ctx: 2, ring: 0 }, 2, 1), Ok(()));
        f.retire(&ev(1, 0, 10, 1));
        assert_eq!(f.take_ready().len(), MAX_KEPT_PER_OWNER);
        assert_eq!(f.check(t, 1, 1000), Ok(()));
    }

    #[test]
    fn a_gone_context_and_a_lost_renderer_finish_what_waits() {
        let mut f = Fences::new();
        f.asking(1, 0, 1);
        f.keep(Timeline::Ring { ctx: 1, ring: 0 }, 1, 1, Some((1, 0)), 1u64);
        f.asking(2, 0, 2);
        f.keep(Timeline::Global, 2, 2, Some((2, 0)), 2);
        f.context_gone(1);
        let r = f.take_ready();
        assert_eq!(r.len(), 1);
        assert!(!r[0].ended);
        assert!(!f.retire(&ev(1, 0, 1, 1)), "its rings are forgotten");
        f.renderer_lost();
        let r = f.take_ready();
        assert_eq!((r[0].item, r[0].ended), (2, true));
        assert_eq!(f.stats().ended, 1);
    }
}

//! Which input offsets may be committed: only those whose every output (enriched record or
//! dead letter) the broker has acknowledged, and all offsets before them too.
//!
//! Each partition has an epoch that a revocation bumps. An event read under an older epoch
//! still gets its output, but never moves the partition's offset again: after the partition
//! is assigned back, its late acknowledgement would store an offset below the one the other
//! owner committed meanwhile, and the commit would go backwards.
//!
//! Commits (at-least-once) are explicit and synchronous, one at a time: every second from
//! [`commit_periodically`], for revoked partitions in the rebalance callback, and once more
//! at shutdown in [`commit_final`], which reads the group's offsets back to check them.
//! librdkafka's auto-commit is off: its commits were sent in the background, several could
//! be in flight at once, and it never re-sent an offset it believed committed. Against
//! tansu, clean-clone CI runs ended with a partition's committed offset short of what had
//! been acknowledged while the consumer ran on ([50, 46, 50] after a restart), which means
//! duplicates on the next restart. Each tick now commits every owned partition's offset
//! again, whether or not it moved, so a commit the broker lost or reordered is repaired
//! within a second.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::{blocking, Ctx};
use crate::telemetry as t;

/// A topic-partition.
pub type Tp = (String, i32);

/// Tracks in-flight offsets per partition, in the order they were accepted.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    inner: Mutex<State>,
    /// Held for the whole of each commit and revocation, so that commits reach the broker
    /// one at a time, and a partition is never committed after it was revoked.
    commits: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<Tp, VecDeque<(i64, bool)>>,
    epochs: HashMap<Tp, u64>,
    /// The offset last handed out to commit, per partition still owned.
    stored: HashMap<Tp, i64>,
}

impl OffsetTracker {
    /// The current epoch of `tp`; an event keeps the epoch it was read under.
    pub fn epoch(&self, tp: &Tp) -> u64 {
        *self
            .inner
            .lock()
            .expect("offset lock")
            .epochs
            .get(tp)
            .unwrap_or(&0)
    }

    /// `tp` was revoked: forget its in-flight offsets and start a new epoch.
    pub fn revoke(&self, tp: &Tp) {
        let mut st = self.inner.lock().expect("offset lock");
        st.queues.remove(tp);
        st.stored.remove(tp);
        *st.epochs.entry(tp.clone()).or_default() += 1;
    }

    /// Records that `offset` of `tp`, read under `epoch`, is in flight. Offsets of a
    /// partition must be registered in increasing order; a stale epoch is ignored.
    pub fn register(&self, tp: &Tp, offset: i64, epoch: u64) {
        let mut st = self.inner.lock().expect("offset lock");
        if st.epochs.get(tp).copied().unwrap_or(0) != epoch {
            return;
        }
        st.queues
            .entry(tp.clone())
            .or_default()
            .push_back((offset, false));
    }

    /// Marks `offset` acknowledged. Returns the offset to commit (the next one to read)
    /// when the contiguous acknowledged prefix grew; never for a stale epoch.
    pub fn ack(&self, tp: &Tp, offset: i64, epoch: u64) -> Option<i64> {
        let mut st = self.inner.lock().expect("offset lock");
        if st.epochs.get(tp).copied().unwrap_or(0) != epoch {
            return None;
        }
        let q = st.queues.get_mut(tp)?;
        if let Some(e) = q.iter_mut().find(|e| e.0 == offset) {
            e.1 = true;
        }
        let mut commit = None;
        while let Some(&(o, true)) = q.front() {
            commit = Some(o + 1);
            q.pop_front();
        }
        if let Some(c) = commit {
            st.stored.insert(tp.clone(), c);
        }
        commit
    }

    /// The offsets to commit (the next one to read) of every partition still owned that has
    /// had an acknowledgement: what the group's committed offsets must reach at shutdown.
    pub fn stored(&self) -> Vec<(Tp, i64)> {
        let st = self.inner.lock().expect("offset lock");
        let mut v: Vec<(Tp, i64)> = st.stored.iter().map(|(k, o)| (k.clone(), *o)).collect();
        v.sort();
        v
    }

    /// Commits, synchronously, the stored offset of every partition still owned (moved or
    /// not: a repeat is cheap and repairs a commit the broker lost). Returns how many
    /// partitions were committed; none when nothing was acknowledged yet.
    pub fn commit<X: ConsumerContext, C: Consumer<X>>(&self, consumer: &C) -> KafkaResult<usize> {
        let _one_at_a_time = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        self.commit_owned(consumer, None)
    }

    /// `tps` are being revoked: commits what was acknowledged of them, so that their next
    /// owner starts right after it, then forgets them (see [`OffsetTracker::revoke`]). They
    /// are forgotten even when the commit fails: the next owner then re-reads (duplicates,
    /// never a loss).
    pub fn revoke_committing<X: ConsumerContext, C: Consumer<X>>(
        &self,
        consumer: &C,
        tps: &[Tp],
    ) -> KafkaResult<usize> {
        let _one_at_a_time = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.commit_owned(consumer, Some(tps));
        for tp in tps {
            self.revoke(tp);
        }
        r
    }

    /// `tps` were lost (the group moved them on without this member): forgets them without
    /// a commit. Under the commit lock, so that no periodic commit still names them once this
    /// returns (it waits for one in flight).
    pub fn forget(&self, tps: &[Tp]) {
        let _one_at_a_time = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        for tp in tps {
            self.revoke(tp);
        }
    }

    /// The commit itself; the caller holds `commits`.
    fn commit_owned<X: ConsumerContext, C: Consumer<X>>(
        &self,
        consumer: &C,
        only: Option<&[Tp]>,
    ) -> KafkaResult<usize> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), o) in self.stored() {
            if only.is_none_or(|tps| tps.iter().any(|tp| tp.0 == topic && tp.1 == p)) {
                tpl.add_partition_offset(&topic, p, Offset::Offset(o))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(0);
        }
        consumer.commit(&tpl, CommitMode::Sync)?;
        Ok(tpl.count())
    }

    /// Offsets in flight, all partitions.
    pub fn in_flight(&self) -> usize {
        self.inner
            .lock()
            .expect("offset lock")
            .queues
            .values()
            .map(|q| q.len())
            .sum()
    }
}

/// Commits the acknowledged offsets every `every` until the task is aborted. A failed
/// commit is retried at the next tick; the offsets only grow, so nothing is lost meanwhile.
pub(super) async fn commit_periodically(
    pipeline: String,
    consumer: Arc<StreamConsumer<Ctx>>,
    tracker: Arc<OffsetTracker>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (c, tr) = (consumer.clone(), tracker.clone());
        match blocking(move || tr.commit(&*c)).await {
            Ok(0) => {}
            Ok(_) => committed(&pipeline, true),
            Err(e) => {
                committed(&pipeline, false);
                tracing::warn!(pipeline = %pipeline, error = %e, "offset commit failed; retrying at the next tick");
            }
        }
    }
}

/// Counts one offset commit by outcome.
pub(super) fn committed(pipeline: &str, ok: bool) {
    metrics::counter!(t::OFFSET_COMMITS_TOTAL, "pipeline" => pipeline.to_string(), "outcome" => if ok { "ok" } else { "failed" })
        .increment(1);
}

/// The final commit at shutdown, retried (right after a broker outage the group coordinator
/// may still be moving), then checked by [`verify_commits`]. The periodic task must be
/// stopped first; one of its commits still running holds the commit lock until it is done.
/// False when the group's committed offsets could not be brought up to what `tracker` stored.
pub(super) async fn commit_final(
    pipeline: &str,
    consumer: Arc<StreamConsumer<Ctx>>,
    tracker: Arc<OffsetTracker>,
) -> bool {
    for attempt in 0..10 {
        let (c, tr) = (consumer.clone(), tracker.clone());
        match blocking(move || tr.commit(&*c)).await {
            Ok(_) => {
                committed(pipeline, true);
                return verify_commits(consumer, tracker).await;
            }
            Err(e) => {
                committed(pipeline, false);
                tracing::warn!(error = %e, attempt, "final commit failed, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    false
}

/// How long a clean read-back must stay clean before shutdown counts as done.
const COMMIT_SETTLE: Duration = Duration::from_millis(1500);

/// Reads the group's committed offsets back and commits again when any stayed below what
/// was stored. The offsets must read back clean twice, [`COMMIT_SETTLE`] apart:
/// the short commits seen against tansu (module docs) were never pinned to one cause, and
/// a second look costs 1.5 s at shutdown.
async fn verify_commits(consumer: Arc<StreamConsumer<Ctx>>, tracker: Arc<OffsetTracker>) -> bool {
    let mut clean = false;
    for attempt in 0..10 {
        let (c, t) = (consumer.clone(), tracker.clone());
        let behind = blocking(move || {
            let want = t.stored();
            if want.is_empty() {
                return Ok(0);
            }
            let mut tpl = TopicPartitionList::new();
            for ((t, p), _) in &want {
                tpl.add_partition(t, *p);
            }
            let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
            let behind = want
                .iter()
                .filter(|((topic, p), o)| {
                    got.find_partition(topic, *p)
                        .and_then(|e| e.offset().to_raw())
                        .unwrap_or(-1)
                        < *o
                })
                .count();
            if behind > 0 {
                tracing::warn!(partitions = behind, "committed offsets behind the stored ones after the final commit; committing them again");
                // Under the commit lock, for the partitions still owned: one revoked
                // meanwhile (a rebalance during shutdown) is its new owner's to commit.
                t.commit(&*c)?;
            }
            Ok(behind)
        })
        .await;
        match behind {
            Ok(0) if clean => return true,
            Ok(0) => {
                clean = true;
                tokio::time::sleep(COMMIT_SETTLE).await;
                continue;
            }
            Ok(_) => clean = false,
            Err(e) => {
                clean = false;
                tracing::warn!(error = %e, attempt, "reading back the committed offsets failed, retrying")
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_acknowledged_prefix() {
        let t = OffsetTracker::default();
        let tp = ("in".to_string(), 0);
        for o in 10..14 {
            t.register(&tp, o, 0);
        }
        assert_eq!(t.ack(&tp, 12, 0), None, "10 and 11 are still in flight");
        assert_eq!(t.ack(&tp, 10, 0), Some(11));
        assert_eq!(t.ack(&tp, 11, 0), Some(13), "12 was already acknowledged");
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.ack(&tp, 13, 0), Some(14));
        assert_eq!(t.ack(&("other".to_string(), 1), 5, 0), None);
        assert_eq!(
            t.stored(),
            vec![(tp.clone(), 14)],
            "what shutdown must see committed"
        );
        t.revoke(&tp);
        assert!(
            t.stored().is_empty(),
            "a revoked partition is its new owner's to commit"
        );
    }

    #[test]
    fn a_revoked_epoch_never_moves_the_offset_again() {
        let t = OffsetTracker::default();
        let tp = ("in".to_string(), 1);
        let old = t.epoch(&tp);
        t.register(&tp, 12, old);
        t.revoke(&tp);
        let new = t.epoch(&tp);
        assert_ne!(old, new);
        assert_eq!(t.in_flight(), 0);
        // Late work of the old assignment: neither registered nor committed.
        t.register(&tp, 13, old);
        assert_eq!(t.ack(&tp, 12, old), None);
        assert_eq!(t.ack(&tp, 13, old), None);
        assert_eq!(t.in_flight(), 0);
        // The new assignment commits as usual.
        t.register(&tp, 20, new);
        assert_eq!(t.ack(&tp, 20, new), Some(21));
    }
}

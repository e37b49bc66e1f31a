//! Which input offsets may be committed: only those whose every output (enriched record or
//! dead letter) the broker has acknowledged, and all offsets before them too.
//!
//! Each partition has an epoch that a revocation bumps. An event read under an older epoch
//! still gets its output, but never moves the partition's offset again: after the partition
//! is assigned back, its late acknowledgement would store an offset below the one the other
//! owner committed meanwhile, and the commit would go backwards.
//!
//! `commit_final` is the at-least-once shutdown commit, checked by reading the group's
//! offsets back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::{blocking, Ctx};

/// A topic-partition.
pub type Tp = (String, i32);

/// Tracks in-flight offsets per partition, in the order they were accepted.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    inner: Mutex<State>,
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

/// The final commit at shutdown, retried (right after a broker outage the group coordinator
/// may still be moving), then checked by [`verify_commits`]. False when the group's committed
/// offsets could not be brought up to what `tracker` stored.
pub(super) async fn commit_final(
    consumer: Arc<StreamConsumer<Ctx>>,
    tracker: Arc<OffsetTracker>,
) -> bool {
    let mut committed = false;
    for attempt in 0..10 {
        let c = consumer.clone();
        match blocking(move || c.commit_consumer_state(CommitMode::Sync)).await {
            Ok(()) => committed = true,
            // Nothing stored since the last commit.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {
                committed = true
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "final commit failed, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if committed {
            break;
        }
    }
    committed && verify_commits(consumer, tracker).await
}

/// How long a clean read-back must stay clean: longer than the auto-commit interval (1 s),
/// so that an auto-commit still in flight at the first read-back has landed by the second.
const COMMIT_SETTLE: Duration = Duration::from_millis(1500);

/// Reads the group's committed offsets back and commits again, explicitly, any that stayed
/// below what was stored. Auto-commits are sent in the background: one sent before the final
/// commit can be applied after it by a broker that handles requests concurrently, and move a
/// committed offset back (seen against tansu), which would re-deliver events on restart.
/// Such a late commit can also land after a first clean read-back (a clean-clone CI run saw a
/// partition at 53 of 60 after a broker outage), so the offsets must read back clean twice,
/// [`COMMIT_SETTLE`] apart.
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
            let mut fix = TopicPartitionList::new();
            for ((t, p), o) in &want {
                let committed = got
                    .find_partition(t, *p)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(-1);
                if committed < *o {
                    fix.add_partition_offset(t, *p, Offset::Offset(*o))?;
                }
            }
            if fix.count() > 0 {
                tracing::warn!(partitions = fix.count(), "committed offsets behind the stored ones after the final commit; committing them again");
                c.commit(&fix, CommitMode::Sync)?;
            }
            Ok(fix.count())
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

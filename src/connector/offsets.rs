//! Which input offsets may be committed: only those whose every output (enriched record or
//! dead letter) the broker has acknowledged, and all offsets before them too.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// A topic-partition.
pub type Tp = (String, i32);

/// Tracks in-flight offsets per partition, in the order they were accepted.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    inner: Mutex<HashMap<Tp, VecDeque<(i64, bool)>>>,
}

impl OffsetTracker {
    /// Records that `offset` of `tp` is in flight. Offsets of a partition must be
    /// registered in increasing order.
    pub fn register(&self, tp: &Tp, offset: i64) {
        let mut m = self.inner.lock().expect("offset lock");
        m.entry(tp.clone()).or_default().push_back((offset, false));
    }

    /// Marks `offset` acknowledged. Returns the offset to commit (the next one to read)
    /// when the contiguous acknowledged prefix grew.
    pub fn ack(&self, tp: &Tp, offset: i64) -> Option<i64> {
        let mut m = self.inner.lock().expect("offset lock");
        let q = m.get_mut(tp)?;
        if let Some(e) = q.iter_mut().find(|e| e.0 == offset) {
            e.1 = true;
        }
        let mut commit = None;
        while let Some(&(o, true)) = q.front() {
            commit = Some(o + 1);
            q.pop_front();
        }
        commit
    }

    /// Offsets in flight, all partitions.
    pub fn in_flight(&self) -> usize {
        self.inner
            .lock()
            .expect("offset lock")
            .values()
            .map(|q| q.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_acknowledged_prefix() {
        let t = OffsetTracker::default();
        let tp = ("in".to_string(), 0);
        for o in 10..14 {
            t.register(&tp, o);
        }
        assert_eq!(t.ack(&tp, 12), None, "10 and 11 are still in flight");
        assert_eq!(t.ack(&tp, 10), Some(11));
        assert_eq!(t.ack(&tp, 11), Some(13), "12 was already acknowledged");
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.ack(&tp, 13), Some(14));
        assert_eq!(t.ack(&("other".to_string(), 1), 5), None);
    }
}

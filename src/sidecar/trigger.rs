//! When the service retrains: enough new feedback, new feedback and a long enough wait, or
//! an explicit request.

use std::time::Duration;

/// Trigger settings (`[trigger]`).
#[derive(Debug, Clone, Copy)]
pub struct Trigger {
    /// Retrain once this many events arrived since the last run.
    pub min_new_feedback: usize,
    /// Retrain when any new event waited this long since the last run.
    pub max_interval: Duration,
}

/// Why a run starts (the `reason` label of `uwe_trainer_runs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// `min_new_feedback` reached.
    Feedback,
    /// `max_interval` passed with new feedback waiting.
    Interval,
    /// A request on the control topic.
    Requested,
    /// A run a previous process left unfinished.
    Resumed,
}

impl Why {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Feedback => "feedback",
            Why::Interval => "interval",
            Why::Requested => "requested",
            Why::Resumed => "resumed",
        }
    }
}

impl Trigger {
    /// Whether to run now, with `new` events since the last run, `since` the last run
    /// ended (or the service started), and whether a request is pending. A request runs even
    /// without new feedback (an operator may want a retrain on the replay data alone).
    pub fn fire(&self, new: usize, since: Duration, requested: bool) -> Option<Why> {
        if requested {
            Some(Why::Requested)
        } else if new >= self.min_new_feedback.max(1) {
            Some(Why::Feedback)
        } else if new > 0 && since >= self.max_interval {
            Some(Why::Interval)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_on_count_interval_or_request_only() {
        let t = Trigger {
            min_new_feedback: 100,
            max_interval: Duration::from_secs(3600),
        };
        let min = Duration::from_secs(60);
        let day = Duration::from_secs(86_400);
        assert_eq!(t.fire(99, min, false), None);
        assert_eq!(t.fire(100, min, false), Some(Why::Feedback));
        assert_eq!(t.fire(1, day, false), Some(Why::Interval));
        assert_eq!(t.fire(0, day, false), None, "nothing new, nothing to learn");
        assert_eq!(t.fire(0, min, true), Some(Why::Requested));
    }
}

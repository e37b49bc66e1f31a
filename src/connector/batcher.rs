//! Token-budget batching across events and partitions.
//!
//! A batch closes when its estimated tokens reach the budget or when its oldest item has
//! waited `max_wait`, so the encoder sees full batches under load and a lone event is not
//! held long. Items leave in arrival order, which keeps per-partition order.

use std::time::{Duration, Instant};

/// Accumulates items until the budget or the deadline.
#[derive(Debug)]
pub struct Batcher<T> {
    items: Vec<T>,
    tokens: usize,
    max_tokens: usize,
    max_wait: Duration,
    opened: Option<Instant>,
}

impl<T> Batcher<T> {
    /// A batcher closing at `max_tokens` or after `max_wait`.
    pub fn new(max_tokens: usize, max_wait: Duration) -> Self {
        Batcher {
            items: Vec::new(),
            tokens: 0,
            max_tokens,
            max_wait,
            opened: None,
        }
    }

    /// Adds an item of `tokens` estimated tokens; returns the batch if it is now full.
    pub fn push(&mut self, item: T, tokens: usize, now: Instant) -> Option<Vec<T>> {
        if self.items.is_empty() {
            self.opened = Some(now);
        }
        self.items.push(item);
        self.tokens += tokens;
        (self.tokens >= self.max_tokens).then(|| self.take())
    }

    /// When the open batch must close, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.max_wait)
    }

    /// Returns the open batch if its deadline has passed.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<T>> {
        match self.deadline() {
            Some(d) if now >= d => Some(self.take()),
            _ => None,
        }
    }

    /// Closes the open batch (possibly empty).
    pub fn take(&mut self) -> Vec<T> {
        self.tokens = 0;
        self.opened = None;
        std::mem::take(&mut self.items)
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_on_budget_and_keeps_order() {
        let mut b = Batcher::new(100, Duration::from_millis(50));
        let t = Instant::now();
        assert!(b.push(1, 40, t).is_none());
        assert!(b.push(2, 40, t).is_none());
        assert_eq!(b.push(3, 40, t), Some(vec![1, 2, 3]));
        assert!(b.is_empty() && b.deadline().is_none());
    }

    #[test]
    fn closes_on_deadline_of_the_oldest_item() {
        let mut b = Batcher::new(1000, Duration::from_millis(50));
        let t = Instant::now();
        b.push("a", 1, t);
        b.push("b", 1, t + Duration::from_millis(40));
        assert_eq!(b.deadline(), Some(t + Duration::from_millis(50)));
        assert!(b.poll(t + Duration::from_millis(49)).is_none());
        assert_eq!(b.poll(t + Duration::from_millis(50)), Some(vec!["a", "b"]));
    }

    #[test]
    fn a_single_huge_item_is_its_own_batch() {
        let mut b = Batcher::new(10, Duration::from_secs(1));
        assert_eq!(b.push(7, 5000, Instant::now()), Some(vec![7]));
    }
}

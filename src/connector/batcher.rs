//! Token-budget batching across events and partitions.
//!
//! A batch closes when its estimated tokens reach the budget or when its oldest item has
//! waited `max_wait`, so the encoder sees full batches under load and a lone event is not
//! held long. Items leave in arrival order, which keeps per-partition order.
//!
//! [`Batcher`] is the queue; the batch stage (`stage`) feeds it from the source and starts
//! each closed batch's encoding on the encoder thread while the ranker still works on the
//! previous one.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::source::{Item, Verdict};
use crate::encoder::service::{Encoded, EncoderService};
use crate::error::ModelError;
use crate::telemetry as t;

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

/// A batch and the task encoding its texts, in dispatch order.
pub(super) type Dispatched = (
    Vec<Item>,
    tokio::task::JoinHandle<Result<Encoded, ModelError>>,
);

/// The batch stage: batches `rx` under `max_tokens`/`max_wait` and sends each batch, its
/// encoding started, to `tx`. Returns when `rx` closes (after the last partial batch) or the
/// next stage is gone.
pub(super) async fn stage(
    encoder: EncoderService,
    max_tokens: usize,
    max_wait: Duration,
    mut rx: mpsc::Receiver<Item>,
    tx: mpsc::Sender<Dispatched>,
) {
    let mut batcher = Batcher::new(max_tokens, max_wait);
    loop {
        let deadline = batcher.deadline();
        let ready = tokio::select! {
            item = rx.recv() => match item {
                Some(it) => {
                    let tokens = it.tokens();
                    batcher.push(it, tokens, Instant::now())
                }
                None => {
                    let rest = batcher.take();
                    if !rest.is_empty() {
                        dispatch(&encoder, rest, &tx).await;
                    }
                    return;
                }
            },
            _ = async { tokio::time::sleep_until(deadline.expect("guarded").into()).await }, if deadline.is_some() => {
                batcher.poll(Instant::now())
            }
        };
        if let Some(batch) = ready {
            if !dispatch(&encoder, batch, &tx).await {
                return;
            }
        }
    }
}

/// Starts encoding `batch` and hands it on; false when the next stage is gone.
async fn dispatch(
    encoder: &EncoderService,
    batch: Vec<Item>,
    tx: &mpsc::Sender<Dispatched>,
) -> bool {
    let texts: Vec<String> = batch
        .iter()
        .flat_map(|i| match &i.verdict {
            Verdict::Good(_, p) => p.texts.clone(),
            Verdict::Dead(_) => vec![],
        })
        .collect();
    metrics::histogram!(t::BATCH_EVENTS).record(batch.len() as f64);
    metrics::histogram!(t::BATCH_TOKENS)
        .record(batch.iter().map(Item::tokens).sum::<usize>() as f64);
    let enc = encoder.clone();
    // Encoding starts now, while the ranker and sink still work on the previous batch.
    let handle = tokio::spawn(async move { enc.encode(texts).await });
    tx.send((batch, handle)).await.is_ok()
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

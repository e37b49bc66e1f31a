//! The source stage: consumes the input topics, decodes and classifies each event (good, or
//! bad data for the dead-letter topic), and holds the in-flight permits that pause the
//! partitions when downstream work piles up.
//!
//! Rebalance callbacks, which bump a partition's epoch in the offset tracker, are the
//! consumer's context in `kafka.rs`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::codec::{Codec, DecodeError};
use super::config::TargetSection;
use super::enrich::{self, Plan};
use super::event::Event;
use super::kafka::{copy_headers, Ctx};
use super::offsets::{OffsetTracker, Tp};
use crate::error::ErrorClass;
use crate::telemetry as t;

/// What decoding made of an event.
pub(super) enum Verdict {
    /// A well-formed event and the texts each target will encode.
    Good(Box<Event>, Plan),
    /// Bad data: it becomes a dead letter.
    Dead(DecodeError),
}

/// One accepted input event on its way through the stages.
pub(super) struct Item {
    /// Input topic and partition.
    pub tp: Tp,
    /// Input offset.
    pub offset: i64,
    /// The partition's epoch when the event was read (see `offsets`).
    pub epoch: u64,
    /// The input key, kept for the output record.
    pub key: Option<Vec<u8>>,
    /// The raw payload, kept for a dead letter.
    pub payload: Option<Vec<u8>>,
    /// The input headers, copied to the output record.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The broker timestamp, for the end-to-end latency.
    pub timestamp_ms: Option<i64>,
    /// What decoding made of it.
    pub verdict: Verdict,
    /// Released once the event's output is delivered.
    pub permit: OwnedSemaphorePermit,
}

impl Item {
    /// The tokens this item will cost the encoder (zero for a dead letter).
    pub fn tokens(&self) -> usize {
        match &self.verdict {
            Verdict::Good(_, p) => p.estimated_tokens(),
            Verdict::Dead(_) => 0,
        }
    }
}

/// Everything the source needs: its consumer, decoder and targets, and the permits.
pub(super) struct Source {
    /// Pipeline name, for metrics.
    pub pipeline: String,
    /// The subscribed consumer.
    pub consumer: Arc<StreamConsumer<Ctx>>,
    /// Partition epochs.
    pub tracker: Arc<OffsetTracker>,
    /// The event decoder.
    pub codec: Arc<Codec>,
    /// The targets, which decide each event's texts.
    pub targets: Vec<TargetSection>,
    /// One per event in flight; when none is left the partitions pause.
    pub permits: Arc<Semaphore>,
}

impl Source {
    /// Reads events into `items` until `shutdown` or `fatal` changes or the next stage is
    /// gone; returns how many events it read.
    pub async fn run(
        self,
        items: mpsc::Sender<Item>,
        mut shutdown: watch::Receiver<bool>,
        mut fatal: watch::Receiver<Option<String>>,
    ) -> Result<u64, KafkaError> {
        let mut events_in = 0u64;
        loop {
            let msg = tokio::select! {
                _ = shutdown.changed() => break,
                _ = fatal.changed() => break,
                m = self.consumer.recv() => m,
            };
            let m = match msg {
                Ok(m) => m,
                Err(e) => {
                    // librdkafka reconnects by itself; errors here are reported, not fatal.
                    tracing::warn!(error = %e, "consumer error, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let tp: Tp = (m.topic().to_string(), m.partition());
            let epoch = self.tracker.epoch(&tp);
            let offset = m.offset();
            let key = m.key().map(|k| k.to_vec());
            let payload = m.payload().map(|p| p.to_vec());
            let headers = copy_headers(m.headers());
            let timestamp_ms = m.timestamp().to_millis();
            drop(m);
            let Some(permit) = self.permit(&mut shutdown).await? else {
                break;
            };
            metrics::counter!(t::RECORDS_IN_TOTAL, "pipeline" => self.pipeline.clone())
                .increment(1);
            events_in += 1;
            let Some(verdict) = decode_with_retry(
                &self.codec,
                payload.as_deref(),
                &self.targets,
                &mut shutdown,
            )
            .await
            else {
                break;
            };
            let item = Item {
                tp,
                offset,
                epoch,
                key,
                payload,
                headers,
                timestamp_ms,
                verdict,
                permit,
            };
            if items.send(item).await.is_err() {
                break;
            }
        }
        Ok(events_in)
    }

    /// An in-flight permit; when none is free the partitions pause until one is (`None`
    /// when shutdown came first).
    async fn permit(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<OwnedSemaphorePermit>, KafkaError> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        // Backpressure: stop fetching until in-flight work drains.
        let assignment = self.consumer.assignment()?;
        let _ = self.consumer.pause(&assignment);
        let p = tokio::select! {
            p = self.permits.clone().acquire_owned() => Some(p.expect("semaphore open")),
            _ = shutdown.changed() => None,
        };
        let _ = self.consumer.resume(&assignment);
        Ok(p)
    }
}

/// Decodes; transient failures (schema registry down) are retried with backoff, never
/// dead-lettered. `None` when shutdown interrupted the retries.
async fn decode_with_retry(
    codec: &Arc<Codec>,
    payload: Option<&[u8]>,
    targets: &[TargetSection],
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Verdict> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let c = codec.clone();
        let p = payload.map(|p| p.to_vec());
        // Decoding may call the registry over HTTP: off the async threads.
        let r = tokio::task::spawn_blocking(move || c.decode(p.as_deref()))
            .await
            .unwrap_or_else(|e| {
                Err(DecodeError {
                    class: ErrorClass::BadData,
                    reason: "decoder_panic",
                    msg: e.to_string(),
                })
            });
        match r {
            Ok(ev) => {
                let plan = enrich::plan(&ev, targets);
                return Some(Verdict::Good(Box::new(ev), plan));
            }
            Err(e) if e.class == ErrorClass::Transient => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "transient decode failure, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = shutdown.changed() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Some(Verdict::Dead(e)),
        }
    }
}

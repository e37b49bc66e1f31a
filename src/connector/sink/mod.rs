//! The sink: enriched records and dead letters to the broker, and offsets released only
//! once what they produced is delivered.
//!
//! [`Sink`] is the one operation the pipeline needs of it; [`AtLeastOnce`] (acknowledge
//! each record, then store its offset for commit) and [`Transactional`] (a batch's records
//! and offsets in one Kafka transaction) implement it. [`dead_letter`] builds the record a
//! bad event becomes.

mod at_least_once;
mod dead_letter;
mod transactional;

use std::future::Future;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::OwnedSemaphorePermit;

use super::kafka::OutRecord;
use super::offsets::Tp;
use crate::telemetry as t;

pub(super) use at_least_once::AtLeastOnce;
pub(crate) use dead_letter::{dead_letter, DeadLetterSource};
pub(super) use transactional::Transactional;

/// What the sink needs of an input event whose output it delivers.
pub(super) struct Pending {
    /// Input topic and partition.
    pub tp: Tp,
    /// Input offset.
    pub offset: i64,
    /// The partition's epoch when the event was read (see `offsets`).
    pub epoch: u64,
    /// The event's broker timestamp, for the end-to-end latency.
    pub timestamp_ms: Option<i64>,
    /// The event's in-flight permit, released once its output is delivered.
    pub permit: OwnedSemaphorePermit,
}

/// Delivers one batch's outputs (one per pending event, in order). An error is fatal:
/// transient failures are retried inside.
pub(super) trait Sink: Send + Sync + 'static {
    /// Sends `outs`, the outputs of `batch`, and releases their offsets once delivered.
    fn send(
        &self,
        batch: Vec<Pending>,
        outs: Vec<OutRecord>,
    ) -> impl Future<Output = Result<(), KafkaError>> + Send;
}

/// Enqueues one record, waiting while librdkafka's queue is full.
async fn enqueue(
    producer: &FutureProducer,
    r: &OutRecord,
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    loop {
        let mut fr = FutureRecord::to(&r.topic)
            .payload(&r.payload)
            .headers(r.owned_headers());
        if let Some(k) = &r.key {
            fr = fr.key(k);
        }
        match producer.send_result(fr) {
            Ok(f) => return Ok(f),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                _,
            )) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Counts a delivered record and its end-to-end latency.
fn record_delivered(pipeline: &str, r: &OutRecord, timestamp_ms: Option<i64>) {
    match r.dead {
        Some(reason) => metrics::counter!(t::RECORDS_DEAD_LETTERED_TOTAL, "pipeline" => pipeline.to_string(), "reason" => reason).increment(1),
        None => metrics::counter!(t::RECORDS_OUT_TOTAL, "pipeline" => pipeline.to_string()).increment(1),
    }
    if let Some(ts) = timestamp_ms {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        metrics::histogram!(t::END_TO_END_LATENCY_SECONDS, "pipeline" => pipeline.to_string())
            .record((now - ts).max(0) as f64 / 1000.0);
    }
}

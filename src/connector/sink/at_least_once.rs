//! At-least-once delivery: records are enqueued in order, each acknowledgement is awaited on
//! its own task (retried with backoff), and an input offset is marked for commit (in the
//! [`OffsetTracker`], which commits it) only once it and every offset before it are
//! acknowledged.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use super::super::kafka::OutRecord;
use super::super::offsets::OffsetTracker;
use super::{enqueue, record_delivered, Pending, Sink};
use crate::telemetry as t;

/// The at-least-once sink.
#[derive(Clone)]
pub(in crate::connector) struct AtLeastOnce {
    /// Pipeline name, for metrics.
    pub pipeline: String,
    /// Producer of the output and dead-letter records.
    pub producer: FutureProducer,
    /// Which offsets may be committed.
    pub tracker: Arc<OffsetTracker>,
}

impl AtLeastOnce {
    fn in_flight(&self) {
        metrics::gauge!(t::IN_FLIGHT_EVENTS, "pipeline" => self.pipeline.clone())
            .set(self.tracker.in_flight() as f64);
    }

    /// Awaits one record's acknowledgement, re-enqueueing it with backoff until the broker
    /// takes it, then marks its offset for commit when every earlier one is acknowledged too.
    async fn deliver(self, item: Pending, out: OutRecord, fut: rdkafka::producer::DeliveryFuture) {
        let mut fut = fut;
        let mut backoff = Duration::from_millis(200);
        loop {
            match fut.await {
                Ok(Ok(_)) => break,
                Ok(Err((e, _))) => {
                    tracing::warn!(error = %e, topic = %out.topic, "delivery failed, retrying")
                }
                Err(_) => tracing::warn!(topic = %out.topic, "delivery canceled, retrying"),
            }
            metrics::counter!(t::DELIVERY_RETRIES_TOTAL, "pipeline" => self.pipeline.clone())
                .increment(1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            fut = loop {
                match enqueue(&self.producer, &out).await {
                    Ok(f) => break f,
                    Err(e) => {
                        tracing::warn!(error = %e, "enqueue failed, retrying");
                        tokio::time::sleep(backoff).await;
                    }
                }
            };
        }
        record_delivered(&self.pipeline, &out, item.timestamp_ms);
        // A no-op when the partition was revoked meanwhile: its new owner re-reads.
        self.tracker.ack(&item.tp, item.offset, item.epoch);
        self.in_flight();
        drop(item.permit);
    }
}

impl Sink for AtLeastOnce {
    async fn send(&self, batch: Vec<Pending>, outs: Vec<OutRecord>) -> Result<(), KafkaError> {
        for (item, out) in batch.into_iter().zip(outs) {
            self.tracker.register(&item.tp, item.offset, item.epoch);
            self.in_flight();
            // Enqueued in order here; acknowledgements are awaited concurrently.
            let fut = enqueue(&self.producer, &out).await?;
            tokio::spawn(self.clone().deliver(item, out, fut));
        }
        Ok(())
    }
}

//! Exactly-once delivery: each batch's records and its input offsets commit in one Kafka
//! transaction; a failed transaction is aborted and the whole batch retried with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::TopicPartitionList;

use super::super::kafka::{blocking, Ctx, OutRecord};
use super::super::offsets::Tp;
use super::{enqueue, record_delivered, Pending, Sink};
use crate::telemetry as t;

/// The transactional sink (its producer has `transactional.id` set and is initialised).
pub(in crate::connector) struct Transactional {
    /// Pipeline name, for metrics.
    pub pipeline: String,
    /// The transactional producer.
    pub producer: FutureProducer,
    /// The consumer whose group the offsets are committed for.
    pub consumer: Arc<StreamConsumer<Ctx>>,
}

impl Transactional {
    /// One attempt: begin, produce every record and await it, add the offsets, commit.
    async fn attempt(
        &self,
        outs: &[OutRecord],
        offsets: &BTreeMap<Tp, i64>,
    ) -> Result<(), KafkaError> {
        let p = self.producer.clone();
        blocking(move || p.begin_transaction()).await?;
        let mut futs = Vec::with_capacity(outs.len());
        for o in outs {
            futs.push(enqueue(&self.producer, o).await?);
        }
        for f in futs {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, part), off) in offsets {
            tpl.add_partition_offset(topic, *part, rdkafka::Offset::Offset(*off))?;
        }
        let cgm = self.consumer.group_metadata().ok_or_else(|| {
            KafkaError::Subscription("the consumer has not joined its group yet".into())
        })?;
        let p = self.producer.clone();
        blocking(move || {
            p.send_offsets_to_transaction(&tpl, &cgm, Duration::from_secs(30))?;
            p.commit_transaction(Duration::from_secs(30))
        })
        .await
    }
}

impl Sink for Transactional {
    async fn send(&self, batch: Vec<Pending>, outs: Vec<OutRecord>) -> Result<(), KafkaError> {
        let mut backoff = Duration::from_millis(200);
        let mut offsets = BTreeMap::<Tp, i64>::new();
        for i in &batch {
            offsets.insert(i.tp.clone(), i.offset + 1);
        }
        loop {
            match self.attempt(&outs, &offsets).await {
                Ok(()) => break,
                Err(e) => {
                    if let KafkaError::Transaction(te) = &e {
                        if te.is_fatal() {
                            return Err(e);
                        }
                    }
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "transaction failed, aborting and retrying the batch");
                    metrics::counter!(t::DELIVERY_RETRIES_TOTAL, "pipeline" => self.pipeline.clone()).increment(1);
                    let p = self.producer.clone();
                    let _ = blocking(move || p.abort_transaction(Duration::from_secs(30))).await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        for (item, out) in batch.into_iter().zip(&outs) {
            record_delivered(&self.pipeline, out, item.timestamp_ms);
        }
        Ok(())
    }
}

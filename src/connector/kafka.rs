//! Kafka clients: consumer context (lag from statistics), client configuration, output
//! records and their headers.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::{ClientContext, Statistics};

use super::config::{Delivery, PipelineConfig};

/// Consumer context: publishes the summed consumer lag from librdkafka statistics.
pub struct Ctx {
    /// Pipeline name (metric label).
    pub pipeline: String,
    /// In-flight offsets: revoked partitions start a new epoch before they move.
    pub tracker: std::sync::Arc<super::offsets::OffsetTracker>,
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        let lag: i64 = s
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        metrics::gauge!(crate::telemetry::CONSUMER_LAG_MESSAGES, "pipeline" => self.pipeline.clone()).set(lag as f64);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        match rebalance {
            rdkafka::consumer::Rebalance::Revoke(tpl) => {
                tracing::info!(pipeline = %self.pipeline, partitions = %partition_list(tpl), "partitions revoked");
                let tps: Vec<_> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                if consumer.assignment_lost() {
                    // The session expired (the coordinator was out of reach, or this member
                    // stalled): the partitions may already be another member's, a commit
                    // would be refused, and waiting for it would hold the polling thread.
                    tracing::warn!(pipeline = %self.pipeline, partitions = %partition_list(tpl), "assignment lost; the next owner re-reads these partitions from their last commit");
                    self.tracker.forget(&tps);
                    return;
                }
                // Commit what was acknowledged before the partitions move (at-least-once;
                // in exactly-once mode nothing is stored here, the transactions commit).
                match self.tracker.revoke_committing(consumer, &tps) {
                    Ok(0) => {}
                    Ok(_) => super::offsets::committed(&self.pipeline, true),
                    Err(e) => {
                        super::offsets::committed(&self.pipeline, false);
                        tracing::warn!(pipeline = %self.pipeline, error = %e, "commit of revoked partitions failed; their next owner re-reads from the last commit");
                    }
                }
            }
            rdkafka::consumer::Rebalance::Error(e) => {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "rebalance failed; the group will retry");
            }
            rdkafka::consumer::Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        // A restarted instance otherwise says nothing while it waits for the group.
        if let rdkafka::consumer::Rebalance::Assign(tpl) = rebalance {
            tracing::info!(pipeline = %self.pipeline, partitions = %partition_list(tpl), "partitions assigned");
        }
    }
}

/// `topic[0,1,2] other[3]`: a partition list for the logs.
fn partition_list(tpl: &rdkafka::TopicPartitionList) -> String {
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for e in tpl.elements() {
        by_topic
            .entry(e.topic().to_string())
            .or_default()
            .push(e.partition());
    }
    if by_topic.is_empty() {
        return "none".into();
    }
    by_topic
        .into_iter()
        .map(|(t, mut ps)| {
            ps.sort_unstable();
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{t}[{}]", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn base(cfg: &PipelineConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    for (k, v) in &cfg.kafka.options {
        c.set(k, v);
    }
    c
}

/// Consumer settings: offsets are stored by the pipeline only after delivery.
pub fn consumer_config(cfg: &PipelineConfig) -> ClientConfig {
    let mut c = base(cfg);
    if let Some(id) = &cfg.kafka.group_instance_id {
        // Static membership: a restarted instance with the same id gets its partitions
        // back without a rebalance (brokers that support KIP-345).
        c.set("group.instance.id", id);
    }
    c.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set("enable.partition.eof", "false");
    match cfg.kafka.delivery {
        // The pipeline commits acknowledged offsets itself (offsets.rs): every second, on
        // revocation and at shutdown.
        Delivery::AtLeastOnce => c.set("enable.auto.commit", "false"),
        Delivery::ExactlyOnce => c
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed"),
    };
    for (k, v) in &cfg.kafka.consumer_options {
        c.set(k, v);
    }
    c
}

/// Producer settings: idempotent (no duplicates or reordering on retries), acks from all
/// replicas; transactional in exactly-once mode.
pub fn producer_config(cfg: &PipelineConfig) -> ClientConfig {
    let mut c = base(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", "16777216");
    if cfg.kafka.delivery == Delivery::ExactlyOnce {
        let id = cfg.kafka.transactional_id.clone().unwrap_or_else(|| {
            format!(
                "uwe-{}-{}-{}",
                cfg.pipeline.name,
                hostname(),
                std::process::id()
            )
        });
        c.set("transactional.id", id);
    }
    for (k, v) in &cfg.kafka.producer_options {
        c.set(k, v);
    }
    c
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// An output record, owned so that it can be sent again after a failure.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Output or dead-letter topic.
    pub topic: String,
    /// The source key.
    pub key: Option<Vec<u8>>,
    /// Body.
    pub payload: Vec<u8>,
    /// Source headers plus any added ones.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// True for a dead letter.
    pub dead: Option<&'static str>,
}

impl OutRecord {
    /// Headers in rdkafka's form.
    pub fn owned_headers(&self) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            h = h.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        h
    }
}

/// Copies a message's headers.
pub fn copy_headers<H: Headers>(h: Option<&H>) -> Vec<(String, Option<Vec<u8>>)> {
    h.map(|h| {
        h.iter()
            .map(|x| (x.key.to_string(), x.value.map(|v| v.to_vec())))
            .collect()
    })
    .unwrap_or_default()
}

/// Runs a blocking librdkafka call (transactions, commits) off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "blocking Kafka call panicked");
            Err(KafkaError::Canceled)
        }
    }
}

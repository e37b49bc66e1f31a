//! Wires the stages of one pipeline and runs them until shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::{mpsc, watch, Semaphore};

use super::batcher::{self, Dispatched};
use super::codec::{Codec, CodecSetupError};
use super::config::{Delivery, PipelineConfig};
use super::http::Health;
use super::kafka::{self, blocking, Ctx};
use super::offsets::{self, OffsetTracker};
use super::ranker::Ranker;
use super::sink;
use super::source::{Item, Source};
use super::swap::{self, Servings};
use super::watcher;
use crate::encoder::service::EncoderService;
use crate::error::ModelError;
use crate::telemetry as t;

/// Why the connector stopped with an error. All of these are fatal.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The model or a target space could not be loaded.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// The codec could not be set up.
    #[error("codec: {0}")]
    Codec(#[from] CodecSetupError),
    /// A Kafka client could not be created or failed fatally.
    #[error("kafka: {0}. Check kafka.brokers and kafka.options in the pipeline file")]
    Kafka(#[from] KafkaError),
    /// The HTTP listener could not bind.
    #[error("http listen {0}: {1}. Change http.listen or free the port")]
    Http(String, std::io::Error),
    /// A stage stopped unexpectedly.
    #[error("{0}")]
    Stage(String),
}

/// Counts of a finished run.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    /// Events read.
    pub events_in: u64,
}

/// Loads the model and spaces, connects to Kafka and runs the pipeline until `shutdown`
/// turns true; then drains in-flight work, commits and returns.
pub async fn run(
    cfg: PipelineConfig,
    shutdown: watch::Receiver<bool>,
    health: Arc<Health>,
) -> Result<RunSummary, ConnectorError> {
    let name = cfg.pipeline.name.clone();
    let codec = Arc::new(Codec::new(&cfg.codec, cfg.pipeline.event_type)?);

    // Model and target spaces, off the async threads.
    let cfg2 = cfg.clone();
    let dir = swap::initial_model_dir(&cfg);
    let (encoder, serving) =
        tokio::task::spawn_blocking(move || swap::load_serving(&dir, &cfg2, true))
            .await
            .map_err(|e| ConnectorError::Stage(format!("model loader panicked: {e}")))??;
    let model_version = encoder.manifest().version.clone();
    tracing::info!(pipeline = %name, model = %model_version, device = ?encoder.device(), "model loaded");
    metrics::gauge!(t::MODEL_INFO, "pipeline" => name.clone(), "version" => model_version.clone())
        .set(1.0);
    let servings = Arc::new(Servings::default());
    servings.insert(model_version.clone(), serving, &model_version);
    let encoder = EncoderService::spawn(encoder);

    let producer: FutureProducer = kafka::producer_config(&cfg).create()?;
    if cfg.kafka.delivery == Delivery::ExactlyOnce {
        let p = producer.clone();
        blocking(move || p.init_transactions(Duration::from_secs(30))).await?;
    }
    let tracker = Arc::new(OffsetTracker::default());
    let consumer: StreamConsumer<Ctx> = kafka::consumer_config(&cfg).create_with_context(Ctx {
        pipeline: name.clone(),
        tracker: tracker.clone(),
    })?;
    let topics: Vec<&str> = cfg.kafka.input_topics.iter().map(|s| s.as_str()).collect();
    consumer.subscribe(&topics)?;

    let consumer = Arc::new(consumer);
    let shadow = Arc::new(swap::ShadowSamples::new(cfg.model.shadow_share, 200));
    let watcher = match (&cfg.model.registry, &cfg.model.pin) {
        (Some(registry), None) => Some(tokio::spawn(watcher::watch_registry(
            watcher::Watcher {
                cfg: cfg.clone(),
                servings: servings.clone(),
                encoder: encoder.clone(),
                shadow: shadow.clone(),
            },
            registry.clone(),
            model_version.clone(),
            shutdown.clone(),
        ))),
        _ => None,
    };
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(pipeline = %name, topics = ?cfg.kafka.input_topics, delivery = ?cfg.kafka.delivery, "consuming");

    let (item_tx, item_rx) = mpsc::channel::<Item>(256);
    let (batch_tx, batch_rx) = mpsc::channel::<Dispatched>(2);
    let (fatal_tx, fatal_rx) = watch::channel::<Option<String>>(None);

    let batcher = tokio::spawn(batcher::stage(
        encoder.clone(),
        cfg.batching.max_batch_tokens,
        Duration::from_millis(cfg.batching.max_wait_ms),
        item_rx,
        batch_tx,
    ));
    let ranker = Ranker {
        pipeline: name.clone(),
        event_type: cfg.pipeline.event_type,
        output_topic: cfg.kafka.output_topic.clone(),
        dead_letter_topic: cfg.kafka.dead_letter_topic.clone(),
        servings: servings.clone(),
        shadow: shadow.clone(),
    };
    let committer = (cfg.kafka.delivery == Delivery::AtLeastOnce).then(|| {
        tokio::spawn(offsets::commit_periodically(
            name.clone(),
            consumer.clone(),
            tracker.clone(),
            Duration::from_secs(1),
        ))
    });
    let sink = match cfg.kafka.delivery {
        Delivery::AtLeastOnce => {
            let s = sink::AtLeastOnce {
                pipeline: name.clone(),
                producer: producer.clone(),
                tracker: tracker.clone(),
            };
            tokio::spawn(ranker.run(s, batch_rx, fatal_tx.clone()))
        }
        Delivery::ExactlyOnce => {
            let s = sink::Transactional {
                pipeline: name.clone(),
                producer: producer.clone(),
                consumer: consumer.clone(),
            };
            tokio::spawn(ranker.run(s, batch_rx, fatal_tx.clone()))
        }
    };

    // The source runs here until shutdown, a fatal error downstream, or a Kafka error.
    let source = Source {
        pipeline: name.clone(),
        consumer: consumer.clone(),
        tracker: tracker.clone(),
        codec,
        targets: cfg.targets.clone(),
        permits: Arc::new(Semaphore::new(cfg.batching.max_in_flight)),
    };
    let source_result = source.run(item_tx, shutdown, fatal_rx).await;
    let summary = RunSummary {
        events_in: *source_result.as_ref().unwrap_or(&0),
    };

    // Drain: the source is closed; let the batcher and sink finish, wait for acknowledgements.
    tracing::info!(pipeline = %name, in_flight = tracker.in_flight(), "draining");
    if let Some(w) = watcher {
        w.abort();
    }
    let _ = batcher.await;
    let sink_result = sink.await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tracker.in_flight() > 0 && Instant::now() < deadline && fatal_tx.borrow().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = tracker.in_flight();
    if let Some(c) = committer {
        c.abort();
        // Wait for the task to be dropped, so that the consumer below is its last handle.
        let _ = c.await;
    }
    if cfg.kafka.delivery == Delivery::AtLeastOnce
        && !offsets::commit_final(&name, consumer.clone(), tracker.clone()).await
        && fatal_tx.borrow().is_none()
    {
        let _ = fatal_tx.send(Some(
            "the final offset commit failed; uncommitted events will be re-delivered on restart"
                .into(),
        ));
    }
    health.ready.store(false, Ordering::Relaxed);
    // Everything acknowledged is committed (or the failure is recorded above): closing the
    // clients can only cost time now. librdkafka's consumer close waits, without a limit,
    // for the group to confirm the leave, and one CI run saw it never end after a rejected
    // revoke commit; bound it so that a broker that never answers cannot hold the exit.
    if !drop_within((consumer, producer), CLIENT_CLOSE_LIMIT).await {
        tracing::warn!(pipeline = %name, limit_s = CLIENT_CLOSE_LIMIT.as_secs(), "the Kafka clients did not close in time; exiting without them (offsets are already committed)");
    }
    if let Some(f) = fatal_tx.borrow().clone() {
        health.failed.store(true, Ordering::Relaxed);
        return Err(ConnectorError::Stage(f));
    }
    if let Err(e) = sink_result {
        return Err(ConnectorError::Stage(format!("sink stage panicked: {e}")));
    }
    source_result?;
    if left > 0 {
        return Err(ConnectorError::Stage(format!(
            "{left} events were not acknowledged within 60 s of shutdown; they were not committed and will be re-delivered"
        )));
    }
    tracing::info!(pipeline = %name, events_in = summary.events_in, "stopped cleanly");
    Ok(summary)
}

/// How long the Kafka clients may take to close (leave the group, flush) after the final
/// commit.
const CLIENT_CLOSE_LIMIT: Duration = Duration::from_secs(20);

/// Drops `value` on a thread of its own and waits at most `limit` for it; false if the
/// drop took longer (it then goes on in the background and ends with the process).
async fn drop_within<T: Send + 'static>(value: T, limit: Duration) -> bool {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(value);
        let _ = tx.send(());
    });
    tokio::time::timeout(limit, rx).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sleeps for its duration when dropped, like a client whose close waits on a broker.
    struct SlowDrop(Duration);

    impl Drop for SlowDrop {
        fn drop(&mut self) {
            std::thread::sleep(self.0);
        }
    }

    #[tokio::test]
    async fn drop_within_bounds_a_slow_close() {
        let start = Instant::now();
        assert!(!drop_within(SlowDrop(Duration::from_secs(5)), Duration::from_millis(100)).await);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(drop_within(SlowDrop(Duration::from_millis(10)), Duration::from_secs(5)).await);
    }
}

//! Wires the stages of one pipeline and runs them until shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::batcher::Batcher;
use super::codec::{Codec, CodecSetupError, DecodeError};
use super::config::{Delivery, PipelineConfig};
use super::enrich::{self, EnrichedRecord, Plan, SourceRef};
use super::event::Event;
use super::http::Health;
use super::kafka::{self, blocking, copy_headers, Ctx, OutRecord};
use super::offsets::{OffsetTracker, Tp};
use super::sink::{self, dead_letter, DeadLetterSource, Pending, Sink};
use super::swap::{self, Servings};
use super::watcher;
use crate::encoder::service::{Encoded, EncoderService};
use crate::error::{ErrorClass, ModelError};
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

enum Verdict {
    Good(Box<Event>, Plan),
    Dead(DecodeError),
}

/// A batch and the task encoding its texts, in dispatch order.
type Dispatched = (
    Vec<Item>,
    tokio::task::JoinHandle<Result<Encoded, ModelError>>,
);

struct Item {
    tp: Tp,
    offset: i64,
    /// The partition's epoch when the event was read (see `offsets`).
    epoch: u64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp_ms: Option<i64>,
    verdict: Verdict,
    permit: OwnedSemaphorePermit,
}

struct Shared {
    cfg: PipelineConfig,
    servings: Arc<Servings>,
    consumer: Arc<StreamConsumer<Ctx>>,
    producer: FutureProducer,
    tracker: Arc<OffsetTracker>,
    encoder: EncoderService,
    shadow: Arc<swap::ShadowSamples>,
}

/// Loads the model and spaces, connects to Kafka and runs the pipeline until `shutdown`
/// turns true; then drains in-flight work, commits and returns.
pub async fn run(
    cfg: PipelineConfig,
    mut shutdown: watch::Receiver<bool>,
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
    let servings = Servings::default();
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

    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        servings: Arc::new(servings),
        consumer: Arc::new(consumer),
        producer,
        tracker,
        encoder,
        shadow: Arc::new(swap::ShadowSamples::new(cfg.model.shadow_share, 200)),
    });
    let watcher = match (&cfg.model.registry, &cfg.model.pin) {
        (Some(registry), None) => Some(tokio::spawn(watcher::watch_registry(
            watcher::Watcher {
                cfg: cfg.clone(),
                servings: shared.servings.clone(),
                encoder: shared.encoder.clone(),
                shadow: shared.shadow.clone(),
            },
            registry.clone(),
            model_version.clone(),
            shutdown.clone(),
        ))),
        _ => None,
    };
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(pipeline = %name, topics = ?cfg.kafka.input_topics, delivery = ?cfg.kafka.delivery, "consuming");

    let permits = Arc::new(Semaphore::new(cfg.batching.max_in_flight));
    let (item_tx, item_rx) = mpsc::channel::<Item>(256);
    let (batch_tx, batch_rx) = mpsc::channel::<Dispatched>(2);
    let (fatal_tx, mut fatal_rx) = watch::channel::<Option<String>>(None);

    let batcher = tokio::spawn(batch_stage(shared.clone(), item_rx, batch_tx));
    let sink = match cfg.kafka.delivery {
        Delivery::AtLeastOnce => {
            let s = sink::AtLeastOnce {
                pipeline: name.clone(),
                producer: shared.producer.clone(),
                consumer: shared.consumer.clone(),
                tracker: shared.tracker.clone(),
            };
            tokio::spawn(sink_stage(shared.clone(), s, batch_rx, fatal_tx.clone()))
        }
        Delivery::ExactlyOnce => {
            let s = sink::Transactional {
                pipeline: name.clone(),
                producer: shared.producer.clone(),
                consumer: shared.consumer.clone(),
            };
            tokio::spawn(sink_stage(shared.clone(), s, batch_rx, fatal_tx.clone()))
        }
    };

    // Source: the consumer loop runs here until shutdown or a fatal error.
    let mut summary = RunSummary::default();
    loop {
        let msg = tokio::select! {
            _ = shutdown.changed() => break,
            _ = fatal_rx.changed() => break,
            m = shared.consumer.recv() => m,
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
        let epoch = shared.tracker.epoch(&tp);
        let offset = m.offset();
        let key = m.key().map(|k| k.to_vec());
        let payload = m.payload().map(|p| p.to_vec());
        let headers = copy_headers(m.headers());
        let timestamp_ms = m.timestamp().to_millis();
        drop(m);
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Backpressure: stop fetching until in-flight work drains.
                let assignment = shared.consumer.assignment()?;
                let _ = shared.consumer.pause(&assignment);
                let p = tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("semaphore open"),
                    _ = shutdown.changed() => { let _ = shared.consumer.resume(&assignment); drop(assignment); break },
                };
                let _ = shared.consumer.resume(&assignment);
                drop(assignment);
                p
            }
        };
        metrics::counter!(t::RECORDS_IN_TOTAL, "pipeline" => name.clone()).increment(1);
        summary.events_in += 1;
        let verdict = decode_with_retry(
            &codec,
            payload.as_deref(),
            &shared.cfg.targets,
            &mut shutdown,
        )
        .await;
        let Some(verdict) = verdict else { break };
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
        if item_tx.send(item).await.is_err() {
            break;
        }
    }

    // Drain: close the source, let the batcher and sink finish, wait for acknowledgements.
    tracing::info!(pipeline = %name, in_flight = shared.tracker.in_flight(), "draining");
    drop(item_tx);
    if let Some(w) = watcher {
        w.abort();
    }
    let _ = batcher.await;
    let sink_result = sink.await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.tracker.in_flight() > 0 && Instant::now() < deadline && fatal_tx.borrow().is_none()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.tracker.in_flight();
    if cfg.kafka.delivery == Delivery::AtLeastOnce {
        // The final commit is retried: right after a broker outage the group coordinator
        // may still be moving.
        let mut committed = false;
        for attempt in 0..10 {
            let s = shared.clone();
            match blocking(move || s.consumer.commit_consumer_state(CommitMode::Sync)).await {
                Ok(()) => committed = true,
                // Nothing stored since the last commit.
                Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {
                    committed = true
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "final commit failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            if committed {
                break;
            }
        }
        if committed {
            committed = verify_commits(&shared).await;
        }
        if !committed && fatal_tx.borrow().is_none() {
            let _ = fatal_tx.send(Some(
                "the final offset commit failed; uncommitted events will be re-delivered on restart".into(),
            ));
        }
    }
    health.ready.store(false, Ordering::Relaxed);
    if let Some(f) = fatal_tx.borrow().clone() {
        health.failed.store(true, Ordering::Relaxed);
        return Err(ConnectorError::Stage(f));
    }
    if let Err(e) = sink_result {
        return Err(ConnectorError::Stage(format!("sink stage panicked: {e}")));
    }
    if left > 0 {
        return Err(ConnectorError::Stage(format!(
            "{left} events were not acknowledged within 60 s of shutdown; they were not committed and will be re-delivered"
        )));
    }
    tracing::info!(pipeline = %name, events_in = summary.events_in, "stopped cleanly");
    Ok(summary)
}

/// Reads the group's committed offsets back and commits again, explicitly, any that stayed
/// below what was stored. Auto-commits are sent in the background: one sent before the final
/// commit can be applied after it by a broker that handles requests concurrently, and move a
/// committed offset back (seen against tansu), which would re-deliver events on restart.
async fn verify_commits(shared: &Arc<Shared>) -> bool {
    for attempt in 0..10 {
        let s = shared.clone();
        let behind = blocking(move || {
            let want = s.tracker.stored();
            if want.is_empty() {
                return Ok(0);
            }
            let mut tpl = TopicPartitionList::new();
            for ((t, p), _) in &want {
                tpl.add_partition(t, *p);
            }
            let got = s.consumer.committed_offsets(tpl, Duration::from_secs(10))?;
            let mut fix = TopicPartitionList::new();
            for ((t, p), o) in &want {
                let c = got
                    .find_partition(t, *p)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(-1);
                if c < *o {
                    fix.add_partition_offset(t, *p, Offset::Offset(*o))?;
                }
            }
            if fix.count() > 0 {
                tracing::warn!(partitions = fix.count(), "committed offsets behind the stored ones after the final commit; committing them again");
                s.consumer.commit(&fix, CommitMode::Sync)?;
            }
            Ok(fix.count())
        })
        .await;
        match behind {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, attempt, "reading back the committed offsets failed, retrying")
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Decodes; transient failures (schema registry down) are retried with backoff, never
/// dead-lettered. `None` when shutdown interrupted the retries.
async fn decode_with_retry(
    codec: &Arc<Codec>,
    payload: Option<&[u8]>,
    targets: &[super::config::TargetSection],
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

fn item_tokens(i: &Item) -> usize {
    match &i.verdict {
        Verdict::Good(_, p) => p.estimated_tokens(),
        Verdict::Dead(_) => 0,
    }
}

async fn batch_stage(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Item>,
    tx: mpsc::Sender<Dispatched>,
) {
    let b = &shared.cfg.batching;
    let mut batcher = Batcher::new(b.max_batch_tokens, Duration::from_millis(b.max_wait_ms));
    loop {
        let deadline = batcher.deadline();
        let ready = tokio::select! {
            item = rx.recv() => match item {
                Some(it) => {
                    let tokens = item_tokens(&it);
                    batcher.push(it, tokens, Instant::now())
                }
                None => {
                    let rest = batcher.take();
                    if !rest.is_empty() {
                        dispatch(&shared, rest, &tx).await;
                    }
                    return;
                }
            },
            _ = async { tokio::time::sleep_until(deadline.expect("guarded").into()).await }, if deadline.is_some() => {
                batcher.poll(Instant::now())
            }
        };
        if let Some(batch) = ready {
            if !dispatch(&shared, batch, &tx).await {
                return;
            }
        }
    }
}

async fn dispatch(shared: &Arc<Shared>, batch: Vec<Item>, tx: &mpsc::Sender<Dispatched>) -> bool {
    let texts: Vec<String> = batch
        .iter()
        .flat_map(|i| match &i.verdict {
            Verdict::Good(_, p) => p.texts.clone(),
            Verdict::Dead(_) => vec![],
        })
        .collect();
    metrics::histogram!(t::BATCH_EVENTS).record(batch.len() as f64);
    metrics::histogram!(t::BATCH_TOKENS)
        .record(batch.iter().map(item_tokens).sum::<usize>() as f64);
    let enc = shared.encoder.clone();
    // Encoding starts now, while the sink still works on the previous batch.
    let handle = tokio::spawn(async move { enc.encode(texts).await });
    tx.send((batch, handle)).await.is_ok()
}

/// Builds the output record of each item of a batch, in order.
fn build_outputs(shared: &Shared, batch: &[Item], enc: &Encoded) -> Vec<OutRecord> {
    let mut next = 0usize;
    let now = crate::model::now_rfc3339();
    // The spaces of the model that encoded this batch, even if another serves by now.
    let serving = shared
        .servings
        .get(&enc.model.version)
        .expect("a model's spaces stay registered while its batches are in flight");
    let taxonomy_versions: std::collections::BTreeMap<String, String> = serving
        .targets
        .iter()
        .map(|t| (t.cfg.name.clone(), t.space.space.taxonomy_version.clone()))
        .collect();
    batch
        .iter()
        .map(|item| match &item.verdict {
            Verdict::Good(ev, plan) => {
                let range = next..next + plan.texts.len();
                next = range.end;
                let labels = enrich::labels(
                    plan,
                    &enc.embeddings[range],
                    &serving.targets,
                    serving.scorer,
                    serving.mentions.as_deref(),
                );
                shared.shadow.offer(plan, &labels);
                let rec = EnrichedRecord {
                    source: SourceRef {
                        id: ev.id().to_string(),
                        topic: item.tp.0.clone(),
                        partition: item.tp.1,
                        offset: item.offset,
                        timestamp_ms: item.timestamp_ms,
                    },
                    event_type: shared.cfg.pipeline.event_type.as_str().into(),
                    labels,
                    model_version: enc.model.version.clone(),
                    taxonomy_versions: taxonomy_versions.clone(),
                    processed_at: now.clone(),
                };
                OutRecord {
                    topic: shared.cfg.kafka.output_topic.clone(),
                    key: item.key.clone(),
                    payload: serde_json::to_vec(&rec).expect("record serialises"),
                    headers: item.headers.clone(),
                    dead: None,
                }
            }
            Verdict::Dead(e) => dead_letter(
                &shared.cfg.kafka.dead_letter_topic,
                &shared.cfg.pipeline.name,
                DeadLetterSource {
                    tp: &item.tp,
                    offset: item.offset,
                    key: &item.key,
                    payload: &item.payload,
                    headers: &item.headers,
                },
                e.class,
                e.reason,
                &e.msg,
            ),
        })
        .collect()
}

/// Awaits each batch's encoding, ranks it into outputs, and hands them to the sink.
async fn sink_stage<S: Sink>(
    shared: Arc<Shared>,
    sink: S,
    mut rx: mpsc::Receiver<Dispatched>,
    fatal: watch::Sender<Option<String>>,
) {
    let name = shared.cfg.pipeline.name.clone();
    while let Some((batch, handle)) = rx.recv().await {
        let encoded = match handle.await {
            Ok(Ok(enc)) => enc,
            // The encoder thread is gone or the model broke: nothing later would work, and
            // these events stay uncommitted, to be re-delivered after a restart.
            Ok(Err(e)) => {
                let _ = fatal.send(Some(format!("encoder failed: {e}")));
                return;
            }
            Err(e) => {
                let _ = fatal.send(Some(format!("encode task failed: {e}")));
                return;
            }
        };
        let started = Instant::now();
        let s2 = shared.clone();
        let (batch, outs) = tokio::task::spawn_blocking(move || {
            let outs = build_outputs(&s2, &batch, &encoded);
            (batch, outs)
        })
        .await
        .expect("ranking does not panic");
        metrics::histogram!(t::RANK_SECONDS).record(started.elapsed().as_secs_f64());
        let pending = batch
            .into_iter()
            .map(|i| Pending {
                tp: i.tp,
                offset: i.offset,
                epoch: i.epoch,
                timestamp_ms: i.timestamp_ms,
                permit: i.permit,
            })
            .collect();
        if let Err(e) = sink.send(pending, outs).await {
            let _ = fatal.send(Some(format!("pipeline {name}: {e}")));
            return;
        }
    }
}

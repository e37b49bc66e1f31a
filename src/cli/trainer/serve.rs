//! `uwe-trainer serve`: the long-running sidecar. One loop reads feedback, stores it
//! (fsynced) before committing its offsets, dead-letters what is bad, and starts a
//! retraining run on its own thread when the trigger fires; the run gates and publishes
//! exactly as `uwe-trainer train` does. `uwe-trainer check` validates the same file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::publish::{self, Gated};
use super::train::{stage_candidate, Stage};
use crate::connector::codec::ValueDecoder;
use crate::connector::http::{self, Health};
use crate::connector::sink::{dead_letter, DeadLetterSource};
use crate::error::ErrorClass;
use crate::model::{ModelDir, ScorerSpec};
use crate::sidecar::config::ServiceConfig;
use crate::sidecar::feedback::{self, Feedback, Spaces};
use crate::sidecar::run::{self, LastRun, RunState};
use crate::sidecar::store::{store_path, FeedbackStore, Origin};
use crate::sidecar::trigger::{Trigger, Why};
use crate::telemetry as t;
use crate::train::{self, data, head::Objective, TrainSpec, Trained};

/// Arguments of `uwe-trainer serve` and `uwe-trainer check`.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// The service's TOML file.
    #[arg(long, default_value = "deploy/trainer.toml")]
    config: PathBuf,
}

/// Feedback events read per loop turn at most.
const MAX_BATCH: usize = 500;
/// How long a loop turn waits for feedback.
const POLL: Duration = Duration::from_millis(500);

/// The model a run starts from and is gated against: the registry's `current`, else the
/// configured initial model.
fn current_model(cfg: &ServiceConfig) -> PathBuf {
    let c = cfg.service.registry.join("current");
    if c.exists() {
        c
    } else {
        cfg.service.initial_model.clone()
    }
}

fn client(cfg: &ServiceConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    for (k, v) in &cfg.kafka.options {
        c.set(k, v);
    }
    c
}

/// Runs `uwe-trainer check`: the file, the models, the data and the feedback log.
pub(crate) fn check(a: ServeArgs) -> anyhow::Result<()> {
    let cfg = ServiceConfig::load(&a.config)?;
    let s = &cfg.service;
    ModelDir::open(&s.base).with_context(|| format!("`service.base` = {}", s.base.display()))?;
    for f in ["model.safetensors", "config.json"] {
        let p = s.base_files.join(f);
        anyhow::ensure!(
            p.is_file(),
            "`service.base_files`: {} is missing; run scripts/setup",
            p.display()
        );
    }
    let cur = current_model(&cfg);
    ModelDir::open(&cur).with_context(|| format!("the serving model {}", cur.display()))?;
    let mut spaces = Spaces::new(cfg.feedback.targets.clone(), &s.data_dir);
    for target in &cfg.feedback.targets {
        let n = spaces
            .labels(target)
            .with_context(|| format!("`feedback.targets`: {target}"))?
            .len();
        eprintln!("target {target}: {n} concepts");
    }
    for task in train::default_dev_tasks(&s.data_dir) {
        if cfg.gate.tasks.is_empty() || cfg.gate.tasks.contains(&task.name) {
            anyhow::ensure!(
                task.tasks.is_file(),
                "dev task {}: {} is missing (`service.data_dir`)",
                task.name,
                task.tasks.display()
            );
        }
    }
    let store = store_path(&s.registry);
    if store.exists() {
        let n = FeedbackStore::open(&store)?.len();
        eprintln!("feedback log {}: {n} events", store.display());
    }
    println!(
        "{}: ok (serving model {}, feedback topic {})",
        a.config.display(),
        cur.display(),
        cfg.kafka.feedback_topic
    );
    Ok(())
}

/// Counts failed deliveries of the producer (dead letters).
#[derive(Default)]
struct Deliveries {
    failed: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            self.failed.fetch_add(1, Ordering::SeqCst);
            *self.last_error.lock().expect("lock") = Some(e.to_string());
        }
    }
}

/// A retraining run on its own thread.
struct Job {
    state: RunState,
    why: Why,
    started: Instant,
    handle: std::thread::JoinHandle<anyhow::Result<Gated>>,
}

/// Everything the loop owns.
struct Service {
    cfg: Arc<ServiceConfig>,
    store: FeedbackStore,
    spaces: Spaces,
    decoder: ValueDecoder,
    consumer: BaseConsumer,
    control: BaseConsumer,
    producer: BaseProducer<Deliveries>,
    shutdown: Arc<AtomicBool>,
}

/// Runs `uwe-trainer serve` until SIGTERM or Ctrl-C.
pub(crate) fn run(a: ServeArgs) -> anyhow::Result<()> {
    let cfg = Arc::new(ServiceConfig::load(&a.config)?);
    let registry = cfg.service.registry.clone();
    std::fs::create_dir_all(&registry)
        .with_context(|| format!("`service.registry` = {}", registry.display()))?;
    for p in run::clean_partials(&registry) {
        tracing::warn!(path = %p.display(), "removed what an interrupted run left behind");
    }
    let handle = http::install_recorder();
    t::describe_trainer();
    let health = Arc::new(Health::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let shutdown = Arc::new(AtomicBool::new(false));
    if !cfg.http.listen.is_empty() {
        rt.block_on(http::serve(&cfg.http.listen, handle, health.clone()))
            .with_context(|| format!("`http.listen` = {}: cannot listen", cfg.http.listen))?;
        tracing::info!(listen = %cfg.http.listen, "serving /metrics, /health, /ready");
    }
    {
        let s = shutdown.clone();
        rt.spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            tracing::info!("shutting down: stored feedback is committed; an unfinished run resumes from its checkpoint at the next start");
            s.store(true, Ordering::SeqCst);
        });
    }

    let store = FeedbackStore::open(&store_path(&registry))?;
    let decoder = ValueDecoder::new(&cfg.codec, Path::new("schemas/avro/feedback.avsc"))
        .context("`codec`")?;
    let consumer: BaseConsumer = client(&cfg)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the feedback consumer")?;
    consumer.subscribe(&[&cfg.kafka.feedback_topic])?;
    // Requests are only meaningful while the service runs: read the newest, commit nothing.
    let control: BaseConsumer = client(&cfg)
        .set(
            "group.id",
            format!("{}-control-{}", cfg.kafka.group_id, std::process::id()),
        )
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the control consumer")?;
    control.subscribe(&[&cfg.kafka.control_topic])?;
    let producer: BaseProducer<Deliveries> = client(&cfg)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create_with_context(Deliveries::default())
        .context("creating the dead-letter producer")?;
    let mut svc = Service {
        spaces: Spaces::new(cfg.feedback.targets.clone(), &cfg.service.data_dir),
        cfg: cfg.clone(),
        store,
        decoder,
        consumer,
        control,
        producer,
        shutdown: shutdown.clone(),
    };
    health.ready.store(true, Ordering::SeqCst);
    tracing::info!(topic = %cfg.kafka.feedback_topic, stored = svc.store.len(), registry = %registry.display(), "trainer service started");
    let r = svc.run_loop();
    if let Err(e) = &r {
        health.failed.store(true, Ordering::SeqCst);
        tracing::error!(error = %format!("{e:#}"), "trainer service failed");
    }
    svc.producer.flush(Duration::from_secs(10)).ok();
    r
}

impl Service {
    fn run_loop(&mut self) -> anyhow::Result<()> {
        let cfg = self.cfg.clone();
        let registry = cfg.service.registry.clone();
        let trigger = Trigger {
            min_new_feedback: cfg.trigger.min_new_feedback,
            max_interval: Duration::from_secs(cfg.trigger.max_interval_s),
        };
        let mut last = run::last(&registry)?;
        let mut since = Instant::now();
        let mut requested = false;
        let mut failures = 0u32;
        let mut retry_at = Instant::now();
        let mut job: Option<Job> = None;
        model_info(&current_model(&cfg));
        if let Some(state) = run::unfinished(&registry)? {
            job = self.resume(state, &mut last)?;
        }
        while !self.shutdown.load(Ordering::SeqCst) {
            self.ingest()?;
            while let Some(Ok(m)) = self.control.poll(Duration::ZERO) {
                if is_retrain_request(m.payload()) {
                    tracing::info!("retraining requested on the control topic");
                    requested = true;
                }
            }
            if job.as_ref().is_some_and(|j| j.handle.is_finished()) {
                let j = job.take().expect("a finished job");
                match finish(j, &registry, &mut last)? {
                    true => failures = 0,
                    false => {
                        failures += 1;
                        let wait =
                            Duration::from_secs(60 << failures.min(6)).min(trigger.max_interval);
                        tracing::warn!(
                            retry_in_s = wait.as_secs(),
                            "the run failed; the next one waits"
                        );
                        retry_at = Instant::now() + wait;
                    }
                }
                since = Instant::now();
            }
            let pending = self.store.len().saturating_sub(last.feedback_through);
            metrics::gauge!(t::TRAINER_FEEDBACK_PENDING).set(pending as f64);
            if job.is_none() && Instant::now() >= retry_at {
                if let Some(why) = trigger.fire(pending, since.elapsed(), requested) {
                    requested = false;
                    let state = RunState {
                        version: new_version(&registry),
                        feedback_through: self.store.len(),
                        reason: why.as_str().into(),
                        started_at: crate::model::now_rfc3339(),
                    };
                    run::begin(&registry, &state)?;
                    tracing::info!(version = %state.version, reason = why.as_str(), feedback = state.feedback_through, new = pending, "retraining");
                    job = Some(self.spawn(state, why, false)?);
                }
            }
        }
        if let Some(j) = job {
            tracing::info!(version = %j.state.version, "leaving the run to resume from its checkpoint at the next start");
        }
        Ok(())
    }

    /// A run an earlier process left: finished in all but its bookkeeping, or resumed.
    fn resume(&self, state: RunState, last: &mut LastRun) -> anyhow::Result<Option<Job>> {
        let registry = &self.cfg.service.registry;
        let published = registry
            .join(&state.version)
            .join(crate::model::MANIFEST_FILE);
        let refused = registry.join("rejected").join(&state.version);
        if published.is_file() || refused.is_dir() {
            // Killed after the gate: its outcome is on disk.
            if published.is_file() {
                crate::connector::swap::set_current(registry, &state.version)?;
            }
            *last = LastRun {
                feedback_through: state.feedback_through,
                version: Some(state.version.clone()),
                published: published.is_file(),
                ended_at: Some(time::OffsetDateTime::now_utc().unix_timestamp()),
            };
            run::finish(registry, last)?;
            tracing::info!(version = %state.version, published = published.is_file(), "an interrupted run had finished its gate; recorded");
            return Ok(None);
        }
        tracing::info!(version = %state.version, reason = %state.reason, "resuming an interrupted run from its last checkpoint");
        Ok(Some(self.spawn(state, Why::Resumed, true)?))
    }

    fn spawn(&self, state: RunState, why: Why, resume: bool) -> anyhow::Result<Job> {
        let items: Vec<Feedback> = self
            .store
            .read_all()?
            .into_iter()
            .take(state.feedback_through)
            .map(|s| s.feedback)
            .collect();
        let cfg = self.cfg.clone();
        let st = state.clone();
        metrics::gauge!(t::TRAINER_RUN_IN_PROGRESS).set(1.0);
        let handle = std::thread::Builder::new()
            .name("uwe-retrain".into())
            .spawn(move || retrain(&cfg, &st, resume, &items))?;
        Ok(Job {
            state,
            why,
            started: Instant::now(),
            handle,
        })
    }

    /// Reads up to a batch of feedback, stores the good events (fsynced), dead-letters the
    /// bad ones (delivered), then commits their offsets.
    fn ingest(&mut self) -> anyhow::Result<()> {
        let mut msgs: Vec<OwnedMessage> = Vec::new();
        let until = Instant::now() + POLL;
        while msgs.len() < MAX_BATCH {
            let left = until.saturating_duration_since(Instant::now());
            match self.consumer.poll(if msgs.is_empty() {
                left
            } else {
                Duration::ZERO
            }) {
                Some(Ok(m)) => msgs.push(m.detach()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "feedback consumer error; retrying");
                    break;
                }
                None => break,
            }
            if left.is_zero() {
                break;
            }
        }
        if msgs.is_empty() {
            return Ok(());
        }
        metrics::counter!(t::TRAINER_FEEDBACK_RECEIVED_TOTAL).increment(msgs.len() as u64);
        let mut good: Vec<(Feedback, Origin)> = Vec::new();
        let mut dead = Vec::new();
        let mut done: Vec<&OwnedMessage> = Vec::new();
        let mut stalled: HashMap<(String, i32), i64> = HashMap::new();
        for m in &msgs {
            let tp = (m.topic().to_string(), m.partition());
            if stalled.contains_key(&tp) {
                continue;
            }
            let origin: Origin = (tp.0.clone(), tp.1, m.offset());
            if self.store.contains(&origin) {
                done.push(m);
                continue;
            }
            let decoded = self
                .decoder
                .decode(m.payload())
                .and_then(|v| Feedback::from_value(v, &mut self.spaces));
            match decoded {
                Ok(fb) => good.push((fb, origin)),
                Err(e) if e.class == ErrorClass::Transient => {
                    // A schema registry that does not answer: read this event again later.
                    tracing::warn!(error = %e, topic = %tp.0, partition = tp.1, offset = m.offset(), "cannot decode feedback yet; retrying");
                    stalled.insert(tp, m.offset());
                    continue;
                }
                Err(e) => {
                    let key = m.key().map(<[u8]>::to_vec);
                    let payload = m.payload().map(<[u8]>::to_vec);
                    let headers = crate::connector::kafka::copy_headers(m.headers());
                    dead.push(dead_letter(
                        &self.cfg.kafka.dead_letter_topic,
                        "trainer",
                        DeadLetterSource {
                            tp: &tp,
                            offset: m.offset(),
                            key: &key,
                            payload: &payload,
                            headers: &headers,
                        },
                        e.class,
                        e.reason,
                        &e.msg,
                    ));
                }
            }
            done.push(m);
        }
        let mut by_verdict: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (fb, _) in &good {
            *by_verdict.entry(fb.verdict.as_str()).or_default() += 1;
        }
        let n = good.len();
        let stored = self.store.append(good)?;
        if stored < n {
            tracing::info!(
                skipped = n - stored,
                "feedback already stored (read again after a restart)"
            );
        }
        for (v, c) in by_verdict {
            metrics::counter!(t::TRAINER_FEEDBACK_STORED_TOTAL, "verdict" => v).increment(c);
        }
        if !self.send_dead_letters(&dead) {
            return Ok(()); // shutting down: nothing committed, the batch is read again
        }
        for d in &dead {
            let reason = d.dead.unwrap_or("unknown");
            tracing::warn!(reason, topic = %d.topic, "feedback dead-lettered");
            metrics::counter!(t::TRAINER_FEEDBACK_DEAD_LETTERED_TOTAL, "reason" => reason)
                .increment(1);
        }
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in done {
            let e = next
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), off) in &next {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*off))?;
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
                // Stored events are recognised when read again: only work is repeated.
                tracing::warn!(error = %e, "committing feedback offsets failed; they are committed with the next batch");
            }
        }
        for ((topic, p), off) in stalled {
            std::thread::sleep(Duration::from_secs(1));
            self.consumer
                .seek(&topic, p, Offset::Offset(off), Duration::from_secs(10))
                .ok();
        }
        Ok(())
    }

    /// Sends dead letters until the broker acknowledges them all (retrying with backoff);
    /// false when shutdown came first.
    fn send_dead_letters(&self, dead: &[crate::connector::kafka::OutRecord]) -> bool {
        let mut backoff = Duration::from_millis(200);
        loop {
            if dead.is_empty() {
                return true;
            }
            let before = self.producer.context().failed.load(Ordering::SeqCst);
            let mut queued = true;
            for d in dead {
                let mut rec = BaseRecord::to(&d.topic)
                    .payload(&d.payload)
                    .headers(d.owned_headers());
                if let Some(k) = &d.key {
                    rec = rec.key(k);
                }
                if let Err((e, _)) = self.producer.send(rec) {
                    tracing::warn!(error = %e, "cannot queue a dead letter");
                    queued = false;
                    break;
                }
            }
            let flushed = self.producer.flush(Duration::from_secs(30)).is_ok();
            if queued && flushed && self.producer.context().failed.load(Ordering::SeqCst) == before
            {
                return true;
            }
            let err = self
                .producer
                .context()
                .last_error
                .lock()
                .expect("lock")
                .clone();
            tracing::warn!(error = ?err, retry_in_ms = backoff.as_millis() as u64, "dead letters not delivered; retrying");
            if self.shutdown.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

/// `{"request": "retrain"}` on the control topic.
fn is_retrain_request(payload: Option<&[u8]>) -> bool {
    payload
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        .is_some_and(|v| v["request"] == "retrain")
}

/// `uwe-<unix seconds>`, unique in the registry.
fn new_version(registry: &Path) -> String {
    let base = format!("uwe-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let taken = |v: &str| registry.join(v).exists() || registry.join("rejected").join(v).exists();
    let mut v = base.clone();
    let mut i = 2;
    while taken(&v) {
        v = format!("{base}-{i}");
        i += 1;
    }
    v
}

fn model_info(current: &Path) {
    if let Ok(d) = ModelDir::open(current) {
        metrics::gauge!(t::TRAINER_MODEL_INFO, "version" => d.manifest.version.clone()).set(1.0);
    }
}

/// Records a finished run; true unless it failed.
fn finish(j: Job, registry: &Path, last: &mut LastRun) -> anyhow::Result<bool> {
    let secs = j.started.elapsed().as_secs_f64();
    metrics::gauge!(t::TRAINER_RUN_IN_PROGRESS).set(0.0);
    metrics::histogram!(t::TRAINER_RUN_SECONDS).record(secs);
    let result = j
        .handle
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the training thread panicked")));
    let reason = j.why.as_str();
    match result {
        Ok(g) => {
            let outcome = if g.published { "published" } else { "refused" };
            metrics::counter!(t::TRAINER_RUNS_TOTAL, "reason" => reason, "outcome" => outcome)
                .increment(1);
            metrics::gauge!(t::TRAINER_LAST_GATE_PUBLISHED).set(if g.published {
                1.0
            } else {
                0.0
            });
            for (task, map) in &g.candidate_map {
                metrics::gauge!(t::TRAINER_CANDIDATE_DEV_MAP, "task" => task.clone()).set(*map);
            }
            for (task, map) in &g.current_map {
                metrics::gauge!(t::TRAINER_SERVING_DEV_MAP, "task" => task.clone()).set(*map);
            }
            if g.published {
                if let Some(prev) = &last.version {
                    metrics::gauge!(t::TRAINER_MODEL_INFO, "version" => prev.clone()).set(0.0);
                }
                model_info(&registry.join(&g.version));
            }
            *last = LastRun {
                feedback_through: j.state.feedback_through,
                version: Some(g.version.clone()),
                published: g.published,
                ended_at: Some(time::OffsetDateTime::now_utc().unix_timestamp()),
            };
            run::finish(registry, last)?;
            tracing::info!(version = %g.version, outcome, seconds = secs, "run finished");
            Ok(true)
        }
        Err(e) => {
            metrics::counter!(t::TRAINER_RUNS_TOTAL, "reason" => reason, "outcome" => "failed")
                .increment(1);
            tracing::error!(version = %j.state.version, error = %format!("{e:#}"), "run failed; nothing was published");
            // The feedback stays pending: the next run trains on it.
            run::finish(registry, last)?;
            for p in run::clean_partials(registry) {
                tracing::info!(path = %p.display(), "removed");
            }
            Ok(false)
        }
    }
}

/// One retraining run: feedback pairs and hard negatives, a replay of the base data,
/// training from the serving model's trained layers (or the checkpoint of an interrupted
/// run), then the gate and publishing.
fn retrain(
    cfg: &ServiceConfig,
    state: &RunState,
    resume: bool,
    items: &[Feedback],
) -> anyhow::Result<Gated> {
    let svc = &cfg.service;
    let tr = &cfg.training;
    let mut spaces = Spaces::new(cfg.feedback.targets.clone(), &svc.data_dir);
    let (positives, negatives) = feedback::training_pairs(items, &mut spaces)?;
    // The replay: an even sample of the shipped recipe's sources.
    let replay = if tr.replay_pairs == 0 {
        vec![]
    } else {
        let dspec = data::DataSpec::without(&svc.data_dir, &data::SHIPPED_SKIP);
        data::sample_evenly(data::build_pairs(&svc.data_dir, &dspec)?, tr.replay_pairs)
    };
    let (mut train_pairs, dev_pairs) = data::split_dev(replay, 20);
    let replayed = train_pairs.len();
    for _ in 0..tr.feedback_repeat {
        train_pairs.extend(positives.iter().cloned());
    }
    let ecfg = super::reference_encoder(svc.threads);
    let base_dir = ModelDir::open(&svc.base)
        .with_context(|| format!("`service.base` = {}", svc.base.display()))?;
    let scratch = tempfile::tempdir()?;
    let (mut enc, trainable) = train::prepare(
        &base_dir,
        &svc.base_files,
        Trained::TopLayers(tr.layers),
        &ecfg,
        scratch.path(),
    )?;
    let current = current_model(cfg);
    let serving = current.join(train::TRAINED_FILE);
    let mut start = "the base model".to_string();
    if serving.is_file() {
        match train::read_trained(&serving)
            .map_err(anyhow::Error::from)
            .and_then(|w| trainable.restore(&w).map_err(|e| anyhow::anyhow!("{e}")))
        {
            Ok(()) => start = format!("the serving model ({})", current.display()),
            Err(e) => {
                tracing::warn!(error = %e, "the serving model's trained weights do not fit `training.layers`; starting from the base model")
            }
        }
    } else {
        tracing::warn!(model = %current.display(), "the serving model carries no trained weights ({}); starting from the base model", train::TRAINED_FILE);
    }
    // Train what the serving model is served with (its scorers), as its recipe did.
    let objective = match ModelDir::open(&current) {
        Ok(d) => Objective::served(&d.manifest, tr.late_temperature, tr.nce_temperature),
        Err(e) => {
            tracing::warn!(model = %current.display(), error = %e, "the serving model's manifest is unreadable; training the pooled and late terms");
            Objective::late_and_pooled(tr.late_temperature, tr.nce_temperature)
        }
    };
    let ck = run::checkpoint_dir(&svc.registry);
    let resume = resume && ck.join("state.json").is_file();
    let spec = TrainSpec {
        batch: tr.batch,
        steps: tr.steps,
        lr: tr.lr,
        warmup: tr.warmup,
        objective,
        seed: 42,
        checkpoint_dir: Some(ck),
        checkpoint_every: tr.checkpoint_every,
        resume,
        progress: false,
        max_text_tokens: tr.max_text_tokens,
        anchor_teacher: None,
        // Checked when the settings were loaded.
        anchor: train::Anchor::from_settings(tr.anchor_texts, tr.anchor_weight, false)
            .ok()
            .flatten(),
    };
    tracing::info!(version = %state.version, positives = positives.len(), rejected = negatives.len(), replayed, resume, start = %start, "training");
    let report = train::train(
        &mut enc,
        trainable.as_ref(),
        &train_pairs,
        &dev_pairs,
        &negatives,
        &spec,
    )?;
    drop(enc);
    tracing::info!(version = %state.version, steps = report.steps, loss_end = report.loss_end, "trained; gating");
    let late = ScorerSpec::Late {
        temperature: tr.late_temperature,
        rerank_top: 100,
    };
    let training_data = vec![
        format!(
            "feedback: {} events; {} positive pairs (x{} per epoch), {} rejected labels as hard negatives",
            items.len(),
            positives.len(),
            tr.feedback_repeat,
            negatives.len()
        ),
        format!("replay: {replayed} pairs of the shipped recipe's sources (held out: {})", dev_pairs.len()),
        format!(
            "started from {start}; top {} layers, {} steps x {} pairs, AdamW lr {}, warm-up {}; loss terms: pooled{}{}",
            tr.layers, tr.steps, tr.batch, tr.lr, tr.warmup,
            if objective.late { ", late" } else { "" },
            match objective.attend {
                Some(a) if a.skills_only => ", attend (skill batches)",
                Some(_) => ", attend",
                None => "",
            }
        ),
    ];
    let (cand, staging) = stage_candidate(&Stage {
        base: &base_dir,
        base_files: &svc.base_files,
        registry: &svc.registry,
        current: &current,
        version: &state.version,
        weights: trainable.export().map_err(|e| anyhow::anyhow!("{e}"))?,
        late,
        training_data,
    })?;
    publish::gate_and_publish(publish::Candidate {
        dir: cand,
        version: state.version.clone(),
        staging,
        late,
        train: serde_json::to_value(&report)?,
        current: Some(current),
        registry: svc.registry.clone(),
        data_dir: svc.data_dir.clone(),
        ecfg,
        margin: cfg.gate.margin,
        brokers: Some(cfg.kafka.brokers.clone()),
        control_topic: cfg.kafka.control_topic.clone(),
        tasks: cfg.gate.tasks.clone(),
        client_options: cfg
            .kafka
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

//! `bench pipeline`: real postings through the broker and the connector, per precision and
//! skills mode in one run, beside a bare encoder on the same texts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{precisions_of, rss_mib};
use crate::encoder::{Encoder, EncoderConfig, PrecisionChoice};
use crate::model::ModelDir;

/// Options of the pipeline benchmark.
#[derive(Debug, Clone)]
pub struct PipelineBench {
    /// Broker address.
    pub brokers: String,
    /// Events to feed (real postings, repeated with new ids when more than 140).
    pub events: usize,
    /// Encoder settings shared by the connector and the bare run.
    pub encoder: EncoderConfig,
    /// Model directory.
    pub model: std::path::PathBuf,
    /// Data directory (`esco/`, `events/`).
    pub data_dir: std::path::PathBuf,
    /// `batching.max_batch_tokens` of the connector.
    pub max_batch_tokens: usize,
    /// Modes of the skills target, measured one after the other in this run (each on its
    /// own topics), so their ratio is not skewed by a noisy machine.
    pub skill_modes: Vec<crate::connector::config::Mode>,
    /// Precisions to measure, each with every skills mode (empty: f32, and int8 when the
    /// model has it).
    pub precisions: Vec<PrecisionChoice>,
}

/// What one connector run measured.
struct ConnectorRun {
    rps: f64,
    tps: f64,
    n_texts: usize,
    latencies: Vec<f64>,
    /// Largest resident set size seen while the connector ran, MiB.
    peak_rss: f64,
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Feeds real vacancy events through the broker and the connector (once per skills mode),
/// then encodes the same texts with a bare encoder, and prints the throughputs.
pub async fn run_pipeline_bench(o: PipelineBench) -> anyhow::Result<()> {
    use crate::connector::config::Mode;
    let posts = std::fs::read_to_string(o.data_dir.join("events/skillspan_postings_train.jsonl"))?;
    let posts: Vec<serde_json::Value> = posts
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let events: Vec<serde_json::Value> = (0..o.events)
        .map(|i| {
            let text = posts[i % posts.len()]["text"].as_str().unwrap_or_default();
            serde_json::json!({"id": format!("b-{i}"), "title": text.lines().next().unwrap_or("job"), "description": text})
        })
        .collect();
    let modes = if o.skill_modes.is_empty() {
        vec![Mode::Sentences]
    } else {
        o.skill_modes.clone()
    };
    let precisions = precisions_of(&ModelDir::open(&o.model)?, &o.precisions);
    let mut runs = Vec::new();
    for &precision in &precisions {
        for &mode in &modes {
            let r = run_connector(&o, &events, mode, precision).await?;
            let mut lat = r.latencies.clone();
            lat.sort_by(f64::total_cmp);
            println!(
                "connector ({precision:?}, skills mode {mode:?}): {} events, {} texts: {:.1} records/s, {:.0} texts/s (after the first batch) | end-to-end latency p50 {:.2} s, p95 {:.2} s, p99 {:.2} s (events were all queued before start) | peak RSS {:.0} MiB",
                o.events,
                r.n_texts,
                r.rps,
                r.tps,
                percentile(&lat, 0.5),
                percentile(&lat, 0.95),
                percentile(&lat, 0.99),
                r.peak_rss
            );
            runs.push((precision, mode, r));
        }
    }
    let rps = |p: PrecisionChoice, m: Mode| {
        runs.iter()
            .find(|(rp, rm, _)| *rp == p && *rm == m)
            .map(|(_, _, r)| r.rps)
    };
    for &p in &precisions {
        if let [m0, m1, ..] = modes[..] {
            if let (Some(a), Some(b)) = (rps(p, m0), rps(p, m1)) {
                println!(
                    "records/s {p:?}: {m1:?} / {m0:?}: {:.3} (same run, same events)",
                    b / a
                );
            }
        }
    }
    if let [p0, p1, ..] = precisions[..] {
        for &m in &modes {
            if let (Some(a), Some(b)) = (rps(p0, m), rps(p1, m)) {
                println!(
                    "records/s {m:?}: {p1:?} / {p0:?}: {:.3} (same run, same events)",
                    b / a
                );
            }
        }
    }

    // The same texts as the first run through a bare encoder (no broker, no ranking).
    let (first_precision, first_mode, first) = &runs[0];
    let cfg = bench_config(&o, "bare", *first_mode, *first_precision)?;
    let plans = plans_of(&cfg, &events)?;
    let dir = ModelDir::open(&o.model)?;
    let mut ecfg = cfg.encoder.clone();
    ecfg.cache_bytes = 0;
    let mut enc = Encoder::load(&dir, &ecfg)?;
    let texts: Vec<&str> = plans
        .iter()
        .flat_map(|p| p.texts.iter().map(|s| s.as_str()))
        .collect();
    enc.encode(&texts[..texts.len().min(64)])?;
    let t0 = Instant::now();
    for chunk in texts.chunks(512) {
        enc.encode(chunk)?;
    }
    let bare_tps = texts.len() as f64 / t0.elapsed().as_secs_f64();
    println!(
        "bare encoder ({first_precision:?}), same texts: {bare_tps:.0} texts/s | connector ({first_precision:?}, {first_mode:?}) / bare encoder: {:.3}",
        first.tps / bare_tps
    );
    Ok(())
}

/// The benchmark's pipeline: the shipped vacancy targets, skills in `mode`.
fn bench_config(
    o: &PipelineBench,
    tag: &str,
    mode: crate::connector::config::Mode,
    precision: PrecisionChoice,
) -> anyhow::Result<crate::connector::config::PipelineConfig> {
    let mode = serde_json::to_value(mode)?;
    let toml = format!(
        r#"
[pipeline]
name = "bench"
event_type = "vacancy"
[kafka]
brokers = "{b}"
group_id = "bench-{tag}"
input_topics = ["bench-in-{tag}"]
output_topic = "bench-out-{tag}"
dead_letter_topic = "bench-dlq-{tag}"
[kafka.consumer_options]
"session.timeout.ms" = "6000"
[[targets]]
name = "occupations"
space = "esco-occupations"
fields = ["title"]
mode = "whole"
k = 5
[[targets]]
name = "skills"
space = "esco-skills"
fields = ["description"]
mode = {mode}
k = 20
min_score = 0.45
[batching]
max_batch_tokens = {bt}
[http]
listen = ""
"#,
        b = o.brokers,
        bt = o.max_batch_tokens
    );
    let mut cfg = crate::connector::config::PipelineConfig::parse(&toml, &[])
        .map_err(|e| anyhow::anyhow!(e))?;
    cfg.encoder = o.encoder.clone();
    cfg.encoder.cache_bytes = 0;
    cfg.encoder.precision = precision;
    cfg.model.dir = o.model.clone();
    cfg.model.data_dir = o.data_dir.clone();
    Ok(cfg)
}

fn plans_of(
    cfg: &crate::connector::config::PipelineConfig,
    events: &[serde_json::Value],
) -> anyhow::Result<Vec<crate::connector::enrich::Plan>> {
    use crate::connector::{enrich, event::Event};
    events
        .iter()
        .map(|e| {
            Ok(enrich::plan(
                &Event::from_json(cfg.pipeline.event_type, e.clone())?,
                &cfg.targets,
            ))
        })
        .collect()
}

/// Runs the connector over `events` on fresh topics; measures records/s and latency.
async fn run_connector(
    o: &PipelineBench,
    events: &[serde_json::Value],
    mode: crate::connector::config::Mode,
    precision: PrecisionChoice,
) -> anyhow::Result<ConnectorRun> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;

    let tag = format!(
        "{}-{}-{}",
        std::process::id(),
        serde_json::to_value(mode)?.as_str().unwrap_or("mode"),
        serde_json::to_value(precision)?
            .as_str()
            .unwrap_or("precision")
    );
    let cfg = bench_config(o, &tag, mode, precision)?;
    let (input, output, dlq) = (
        cfg.kafka.input_topics[0].clone(),
        cfg.kafka.output_topic.clone(),
        cfg.kafka.dead_letter_topic.clone(),
    );
    let plans = plans_of(&cfg, events)?;
    let n_texts: usize = plans.iter().map(|p| p.texts.len()).sum();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &o.brokers)
            .create()?;
    let new: Vec<rdkafka::admin::NewTopic> = [&input, &output, &dlq]
        .iter()
        .map(|t| rdkafka::admin::NewTopic::new(t, 4, rdkafka::admin::TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &rdkafka::admin::AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .create()?;
    for (i, e) in events.iter().enumerate() {
        let body = serde_json::to_vec(e)?;
        let key = format!("b-{i}");
        producer
            .send(
                FutureRecord::to(&input)
                    .key(&key)
                    .payload(&body)
                    .partition((i % 4) as i32),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let reader: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .set("group.id", format!("bench-reader-{tag}"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    reader.subscribe(&[&output])?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let health = Arc::new(crate::connector::http::Health::default());
    let conn = tokio::spawn(crate::connector::run(cfg, stop_rx, health));
    let mut arrivals = Vec::with_capacity(o.events);
    let mut latencies = Vec::with_capacity(o.events);
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut peak_rss = rss_mib();
    while arrivals.len() < o.events && Instant::now() < deadline {
        peak_rss = peak_rss.max(rss_mib());
        let m = tokio::time::timeout(Duration::from_secs(120), reader.recv()).await??;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        arrivals.push(Instant::now());
        if let Some(ts) = v["source"]["timestamp_ms"].as_i64() {
            latencies.push((now_ms - ts) as f64 / 1000.0);
        }
    }
    let _ = stop_tx.send(true);
    conn.await??;
    anyhow::ensure!(
        arrivals.len() == o.events,
        "only {} of {} records arrived",
        arrivals.len(),
        o.events
    );
    // Records of the first batch arrive together; their encoding happened before the first
    // arrival, so they are left out of the rate (counting them would flatter big batches).
    let first_burst = arrivals
        .iter()
        .filter(|a| a.duration_since(arrivals[0]) < Duration::from_millis(50))
        .count();
    let span = arrivals
        .last()
        .unwrap()
        .duration_since(arrivals[0])
        .as_secs_f64();
    let rps = (o.events - first_burst) as f64 / span;
    let tps = rps * n_texts as f64 / o.events as f64;
    Ok(ConnectorRun {
        rps,
        tps,
        n_texts,
        latencies,
        peak_rss,
    })
}

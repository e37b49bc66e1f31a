//! `uwe-connect bench`: the encoder's speed beside a bare ONNX Runtime session on the same
//! texts in the same run, and the cost of ranking one sentence against ESCO skills.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connector::config::DEFAULT_ALIAS_WEIGHT;
use crate::encoder::{runtime, Encoder, EncoderConfig, PrecisionChoice};
use crate::error::{ModelError, Result};
use crate::model::{graph, ModelDir, ScorerSpec};
use crate::rank::rank;
use crate::space::{cache, TargetSpace};

/// Feeds padded batches of pre-tokenised ids to a bare session; returns texts/s and tokens/s.
fn bare(
    session: &mut ort::session::Session,
    ids: &[Vec<u32>],
    batch: usize,
    cls: u32,
    sep: u32,
) -> Result<(f64, f64)> {
    let rt = |e: ort::Error| ModelError::Runtime(e.to_string());
    let t0 = Instant::now();
    let mut tokens = 0usize;
    for chunk in ids.chunks(batch) {
        let seq = chunk.iter().map(|c| c.len() + 2).max().unwrap_or(2);
        let mut input = vec![0i64; chunk.len() * seq];
        let mut mask = vec![0i64; chunk.len() * seq];
        for (r, c) in chunk.iter().enumerate() {
            input[r * seq] = cls as i64;
            for (k, &t) in c.iter().enumerate() {
                input[r * seq + k + 1] = t as i64;
            }
            input[r * seq + c.len() + 1] = sep as i64;
            mask[r * seq..r * seq + c.len() + 2].fill(1);
            tokens += c.len() + 2;
        }
        let shape = vec![chunk.len() as i64, seq as i64];
        let a = ort::value::Tensor::from_array((shape.clone(), input)).map_err(rt)?;
        let m = ort::value::Tensor::from_array((shape, mask)).map_err(rt)?;
        let out = session
            .run(ort::inputs!["input_ids" => a, "attention_mask" => m])
            .map_err(rt)?;
        let _ = out[graph::OUTPUT_POOLED]
            .try_extract_tensor::<f32>()
            .map_err(rt)?;
    }
    let s = t0.elapsed().as_secs_f64();
    Ok((ids.len() as f64 / s, tokens as f64 / s))
}

/// Resident set size of this process in MiB (Linux; 0 elsewhere).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The precisions a benchmark compares: those asked for, or f32 and (when the model has
/// one) int8.
pub fn precisions_of(dir: &ModelDir, asked: &[PrecisionChoice]) -> Vec<PrecisionChoice> {
    if !asked.is_empty() {
        return asked.to_vec();
    }
    let mut v = vec![PrecisionChoice::F32];
    if dir.manifest.int8.is_some() {
        v.push(PrecisionChoice::Int8);
    }
    v
}

/// Runs the benchmark and prints its figures: encoding in each of `precisions` (bare session
/// and encoder, same texts, same run), then ranking with the encoder `cfg` serves.
pub fn run_encoder_bench(
    cfg: &EncoderConfig,
    model: &Path,
    data_dir: &Path,
    cache_dir: &Path,
    n: usize,
    precisions: &[PrecisionChoice],
) -> Result<()> {
    let dir = ModelDir::open(model)?;
    let mut cfg = cfg.clone();
    cfg.cache_bytes = 0;
    cfg.max_batch_size = 32;
    cfg.max_batch_tokens = 32 * 130;
    let mut tok = tokenizers::Tokenizer::from_file(dir.tokenizer_path())
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    tok.with_padding(None);
    let _ = tok.with_truncation(None);
    let cls = tok.token_to_id("[CLS]").unwrap_or(101);
    let sep = tok.token_to_id("[SEP]").unwrap_or(102);
    let skills = Arc::new(TargetSpace::resolve("esco-skills", data_dir)?);
    let occupations = TargetSpace::resolve("esco-occupations", data_dir)?;
    // Short texts: occupation alternative labels (job-title-like, about 5 to 12 tokens).
    let short: Vec<String> = occupations
        .concepts
        .iter()
        .flat_map(|c| c.aliases.iter().take(1).cloned())
        .take(n)
        .collect();
    // 128-token texts: skill descriptions joined and cut at 126 word pieces.
    let mut long = Vec::new();
    let mut buf = String::new();
    for c in &skills.concepts {
        if long.len() >= n / 4 {
            break;
        }
        buf.push_str(c.description.as_deref().unwrap_or(&c.label));
        buf.push(' ');
        let e = tok
            .encode(buf.as_str(), false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        if e.len() >= 126 {
            let end = e.get_offsets()[125].1;
            long.push(buf[..end].to_string());
            buf.clear();
        }
    }
    let ids = |texts: &[String]| -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| {
                Ok(tok
                    .encode(t.as_str(), false)
                    .map_err(|e| ModelError::Tokenizer(e.to_string()))?
                    .get_ids()
                    .to_vec())
            })
            .collect()
    };
    let short_ids = ids(&short)?;
    let long_ids = ids(&long)?;
    println!(
        "threads: {}, model: {} {}",
        if cfg.intra_threads == 0 {
            "all".to_string()
        } else {
            cfg.intra_threads.to_string()
        },
        dir.manifest.name,
        dir.manifest.version
    );
    // Single sentences, one call each: the latency an event with one short text sees.
    let singles: Vec<String> = long
        .iter()
        .take(50)
        .map(|t| t.split(". ").next().unwrap_or(t).to_string())
        .collect();
    let mut rows = Vec::new();
    for &p in &precisions_of(&dir, precisions) {
        let pcfg = EncoderConfig {
            precision: p,
            ..cfg.clone()
        };
        let rss0 = rss_mib();
        let mut enc = Encoder::load(&dir, &pcfg)?;
        let (mut session, device, precision) = runtime::build_session(&dir, &pcfg)?;
        // Warm-up both.
        bare(
            &mut session,
            &short_ids[..32.min(short_ids.len())],
            32,
            cls,
            sep,
        )?;
        enc.encode(&short[..32.min(short.len())])?;
        let mut row = vec![];
        for (name, texts, tids) in [
            ("short", &short, &short_ids),
            ("128-token", &long, &long_ids),
        ] {
            let avg =
                tids.iter().map(|t| t.len() + 2).sum::<usize>() as f64 / tids.len().max(1) as f64;
            let (bt, btok) = bare(&mut session, tids, 32, cls, sep)?;
            let t0 = Instant::now();
            enc.encode(texts)?;
            let s = t0.elapsed().as_secs_f64();
            let et = texts.len() as f64 / s;
            println!(
                "{precision} {device:?} {name:>9} texts (n={}, {avg:.1} tokens avg), batch 32: bare session {bt:.0} texts/s {btok:.0} tokens/s | encoder (tokenisation included) {et:.0} texts/s {:.0} tokens/s | encoder/bare {:.3}",
                texts.len(),
                et * avg,
                et / bt
            );
            row.push(et);
        }
        let mut lat: Vec<f64> = Vec::with_capacity(singles.len());
        for s in &singles {
            let t0 = Instant::now();
            enc.encode(&[s.as_str()])?;
            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(f64::total_cmp);
        let rss = rss_mib();
        println!(
            "{precision} {device:?} one sentence per call (n={}): p50 {:.2} ms, p95 {:.2} ms | RSS {rss:.0} MiB ({:+.0} MiB for encoder and bare session)",
            singles.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.95),
            rss - rss0
        );
        rows.push((precision, row));
    }
    if let [(p0, a), (p1, b), ..] = &rows[..] {
        println!(
            "encoder texts/s {p1} / {p0}: short {:.3}, 128-token {:.3} (same run, same texts)",
            b[0] / a[0],
            b[1] / a[1]
        );
    }
    let mut enc = Encoder::load(&dir, &cfg)?;

    // Ranking one sentence against all skills, beside encoding it.
    let space = cache::load_or_encode(skills, &mut enc, cache_dir, true)?;
    let sentences: Vec<String> = long
        .iter()
        .take(50)
        .map(|t| t.split(". ").next().unwrap_or(t).to_string())
        .collect();
    let t0 = Instant::now();
    let mut embs = Vec::new();
    for s in &sentences {
        embs.push(enc.encode(&[s.as_str()])?.remove(0));
    }
    let enc_ms = t0.elapsed().as_secs_f64() * 1000.0 / sentences.len() as f64;
    let tau = match dir.manifest.scorer {
        ScorerSpec::Late { temperature, .. } => temperature,
        ScorerSpec::Pooled => 0.05,
    };
    let timing = |scorer: ScorerSpec| {
        let t0 = Instant::now();
        let r: Vec<_> = embs.iter().map(|e| rank(&space, e, 10, scorer)).collect();
        (t0.elapsed().as_secs_f64() * 1000.0 / embs.len() as f64, r)
    };
    let (p_ms, _) = timing(ScorerSpec::Pooled);
    let (l_ms, reranked) = timing(ScorerSpec::Late {
        temperature: tau,
        rerank_top: 100,
    });
    let (x_ms, exhaustive) = timing(ScorerSpec::Late {
        temperature: tau,
        rerank_top: 0,
    });
    let agree: f64 = reranked
        .iter()
        .zip(&exhaustive)
        .map(|(a, b)| {
            a.iter()
                .filter(|h| b.iter().any(|g| g.index == h.index))
                .count() as f64
                / b.len().max(1) as f64
        })
        .sum::<f64>()
        / reranked.len().max(1) as f64;
    println!(
        "one sentence vs {} skills: encode {enc_ms:.2} ms | rank pooled {p_ms:.2} ms | late rerank top 100 {l_ms:.2} ms | late exhaustive {x_ms:.1} ms | top-10 overlap rerank vs exhaustive {:.1}%",
        space.len(),
        agree * 100.0
    );

    // One job title against the occupations, preferred labels only and with aliases.
    let occ = cache::load_or_encode(Arc::new(occupations), &mut enc, cache_dir, true)?;
    let titles: Vec<&String> = short.iter().take(50).collect();
    let title_embs = enc.encode(&titles)?;
    let plain_ms = {
        let t0 = Instant::now();
        title_embs.iter().for_each(|e| {
            std::hint::black_box(rank(&occ, e, 5, ScorerSpec::Pooled));
        });
        t0.elapsed().as_secs_f64() * 1000.0 / titles.len() as f64
    };
    let occ = cache::with_aliases(occ, DEFAULT_ALIAS_WEIGHT, &mut enc, cache_dir, true)?;
    let alias_ms = {
        let t0 = Instant::now();
        title_embs.iter().for_each(|e| {
            std::hint::black_box(rank(&occ, e, 5, ScorerSpec::Pooled));
        });
        t0.elapsed().as_secs_f64() * 1000.0 / titles.len() as f64
    };
    println!(
        "one title vs {} occupations, pooled: labels only {plain_ms:.2} ms | with {} aliases {alias_ms:.2} ms",
        occ.len(),
        occ.rows() - occ.len()
    );
    Ok(())
}

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
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

/// Times what a hot swap does between seeing a new model and serving it
/// ([`crate::connector::swap::load_serving`]: open and verify, load the session, embed or
/// load every target space of the pipeline, warm up), once with an empty space cache (a
/// model the connector has never seen) and once with the cache that run filled (a model the
/// trainer's gate already embedded the spaces for, when they share the cache folder).
pub fn run_swap_bench(
    pipeline: &Path,
    model: &Path,
    encoder: &EncoderConfig,
    data_dir: &Path,
) -> anyhow::Result<()> {
    use crate::connector::{config::PipelineConfig, swap};

    let mut cfg = PipelineConfig::load(pipeline)?;
    let scratch = tempfile::tempdir()?;
    cfg.model.cache_dir = Some(scratch.path().to_path_buf());
    cfg.model.data_dir = data_dir.to_path_buf();
    cfg.encoder = encoder.clone();
    let spaces: Vec<&str> = cfg.targets.iter().map(|t| t.space.as_str()).collect();
    for (label, cold) in [("cold cache", true), ("warm cache", false)] {
        let t0 = Instant::now();
        // The progress bar shows while the cold run embeds the spaces.
        let (_enc, serving) = swap::load_serving(model, &cfg, cold)?;
        let concepts: usize = serving.targets.iter().map(|t| t.space.len()).sum();
        println!(
            "swap load ({label}): {:.1} s for {} with spaces {spaces:?} ({concepts} concepts)",
            t0.elapsed().as_secs_f64(),
            model.display(),
        );
    }
    Ok(())
}

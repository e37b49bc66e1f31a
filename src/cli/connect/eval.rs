//! `uwe-connect eval`: task files (MAP, RP@k, MRR), f32 against int8, and whole postings.

use super::args::*;
use std::path::PathBuf;

use anyhow::bail;

use crate::connector::config::Mode;
use crate::connector::PipelineConfig;
use crate::encoder::{Device, PrecisionChoice};
use crate::eval;

/// Arguments of `uwe-connect eval`.
#[derive(clap::Args)]
pub(crate) struct EvalArgs {
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
}

/// Runs `uwe-connect eval` with these arguments.
pub(crate) fn run(a: EvalArgs) -> anyhow::Result<()> {
    if a.postings.is_some() {
        postings(a)
    } else if a.compare_precision {
        compare_precision(a)
    } else {
        tasks(a)
    }
}

/// A pipeline's skill target over whole annotated postings.
fn postings(a: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs {
        postings,
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
    } = a;
    let config = config.expect("clap requires --config with --postings");
    let cfg = PipelineConfig::load(&config)?;
    let mode = match mode.as_deref() {
        None => None,
        Some("sentences") => Some(Mode::Sentences),
        Some("mentions") => Some(Mode::Mentions),
        Some(m) => bail!("--mode {m}: expected `sentences` or `mentions`"),
    };
    let dir = crate::connector::swap::initial_model_dir(&cfg);
    let (mut enc, mut serving) = crate::connector::swap::load_serving(&dir, &cfg, true)?;
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
    let postings = postings.expect("run() dispatches here only with --postings");
    let mut ps = eval::postings::read_postings(&postings)?;
    if tagger_holdout {
        ps.retain(|p| crate::mentions::train::is_holdout_posting(&p.source, p.idx));
        eprintln!("{} postings held out by the tagger's training", ps.len());
    }
    let r = eval::postings::evaluate(&mut enc, &serving, t, mode, &ps, explain, reencode_spans)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// `--space` and `--tasks` (clap requires both without `--postings`), the scorer and the runtime.
fn task_args(a: EvalArgs) -> (String, PathBuf, ScorerArgs, RuntimeArgs) {
    (
        a.space.expect("clap requires --space"),
        a.tasks.expect("clap requires --tasks"),
        a.scorer,
        a.rt,
    )
}

/// The f32 and int8 graphs on the same queries.
fn compare_precision(a: EvalArgs) -> anyhow::Result<()> {
    let (space, tasks, scorer, rt) = task_args(a);
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
    Ok(())
}

/// One task file against one space.
fn tasks(a: EvalArgs) -> anyhow::Result<()> {
    let (space, tasks, scorer, rt) = task_args(a);
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
    Ok(())
}

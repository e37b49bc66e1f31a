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
    /// Task file: {"query": "...", "relevant": ["id", ...]} per line. Several, comma-separated,
    /// are pooled into one set (e.g. every skill dev set, for comparisons to trust).
    #[arg(long, required_unless_present = "postings", value_delimiter = ',')]
    tasks: Vec<PathBuf>,
    /// Annotated postings (JSONL {text, skill_spans, knowledge_spans, esco_labels?}).
    #[arg(long, requires = "config", conflicts_with_all = ["space", "tasks"])]
    postings: Option<PathBuf>,
    /// Pipeline file whose model and skill target the postings run through (`--model`,
    /// `--precision`, `--device` and `--threads` override its model and encoder where given).
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
    /// Override the tagger's inside threshold. A comma-separated list (here or in the three
    /// options below) sweeps the grid of all combinations, encoding each posting once, and
    /// prints one line per point.
    #[arg(long, requires = "postings", value_delimiter = ',')]
    mention_threshold: Vec<f32>,
    /// Override the tagger's inside threshold of knowledge mentions (default: the inside
    /// threshold when that is given).
    #[arg(long, requires = "postings", value_delimiter = ',')]
    knowledge_threshold: Vec<f32>,
    /// Override the tagger's sentence-gate threshold (0 = off).
    #[arg(long, requires = "postings", value_delimiter = ',')]
    sentence_gate: Vec<f32>,
    /// Override the tagger's label threshold.
    #[arg(long, requires = "postings", value_delimiter = ',')]
    label_threshold: Vec<f32>,
    /// Print every label to stderr, marked `span` or `NOISE`, with its evidence.
    #[arg(long, requires = "postings")]
    explain: bool,
    /// Rank each mention by its words encoded on their own instead of its contextual
    /// token embeddings (the comparison the README reports).
    #[arg(long, requires = "postings")]
    reencode_spans: bool,
    /// Score the model's f32 and int8 graphs on the same queries and print both, with
    /// the MAP and RP@5 changes and their paired 95% bootstrap intervals.
    #[arg(long, conflicts_with = "postings")]
    compare_precision: bool,
    /// Score this other model directory on the same queries too and print both, with the
    /// MAP and RP@5 changes from it to `--model` and their paired 95% bootstrap intervals.
    #[arg(long, conflicts_with_all = ["postings", "compare_precision"])]
    against: Option<PathBuf>,
    /// Score the same queries with this scorer too and print both, with the MAP and RP@5
    /// changes from it to the scorer in use and their paired 95% bootstrap intervals.
    #[arg(long, value_enum, conflicts_with_all = ["postings", "compare_precision", "against"])]
    against_scorer: Option<ScorerKind>,
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
        let f32 = RuntimeArgs {
            precision: PrecisionChoice::F32,
            device: Device::Cpu,
            ..a.rt.clone()
        };
        let int8 = RuntimeArgs {
            precision: PrecisionChoice::Int8,
            ..f32.clone()
        };
        compare(a, [f32, int8], |enc| enc.precision().to_string())
    } else if let Some(other) = a.against.clone() {
        let base = RuntimeArgs {
            model: Some(other),
            ..a.rt.clone()
        };
        let rt = a.rt.clone();
        compare(a, [base, rt], |enc| enc.manifest().version.clone())
    } else if let Some(other) = a.against_scorer {
        compare_scorers(a, other)
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
        rt,
        ..
    } = a;
    let config = config.expect("clap requires --config with --postings");
    let mut cfg = PipelineConfig::load(&config)?;
    // The runtime flags given override the pipeline file, as its `UWE__…` variables do;
    // ignored, `--model` silently evaluated the file's model instead.
    if let Some(model) = rt.model {
        cfg.model.dir = model;
        cfg.model.registry = None;
        cfg.model.pin = None;
    }
    if rt.precision != PrecisionChoice::Auto {
        cfg.encoder.precision = rt.precision;
    }
    if rt.device != Device::Auto {
        cfg.encoder.device = rt.device;
    }
    if rt.threads != 0 {
        cfg.encoder.intra_threads = rt.threads;
    }
    let mode = match mode.as_deref() {
        None => None,
        Some("sentences") => Some(Mode::Sentences),
        Some("mentions") => Some(Mode::Mentions),
        Some(m) => bail!("--mode {m}: expected `sentences` or `mentions`"),
    };
    let dir = crate::connector::swap::initial_model_dir(&cfg);
    let (mut enc, mut serving) = crate::connector::swap::load_serving(&dir, &cfg, true)?;
    let t = eval::postings::pick_target(&serving, target.as_deref())?;
    let postings = postings.expect("run() dispatches here only with --postings");
    let mut ps = eval::postings::read_postings(&postings)?;
    if tagger_holdout {
        let fold = enc
            .manifest()
            .mentions
            .as_ref()
            .map_or(0, crate::mentions::train::holdout_fold_of);
        ps.retain(|p| crate::mentions::train::holdout_fold(&p.source, p.idx) == fold);
        eprintln!(
            "{} postings held out by the tagger's training (fold {fold})",
            ps.len()
        );
    }
    let sweeping = [
        &mention_threshold,
        &knowledge_threshold,
        &sentence_gate,
        &label_threshold,
    ]
    .iter()
    .any(|v| v.len() > 1);
    let Some(head) = serving.mentions.as_deref() else {
        anyhow::ensure!(
            !sweeping
                && mention_threshold.is_empty()
                && knowledge_threshold.is_empty()
                && sentence_gate.is_empty()
                && label_threshold.is_empty(),
            "the model has no mention tagger: the threshold options do not apply"
        );
        let r =
            eval::postings::evaluate(&mut enc, &serving, t, mode, &ps, explain, reencode_spans)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    };
    if sentence_gate.iter().any(|&g| g > 0.0) {
        anyhow::ensure!(
            head.gate.is_some(),
            "--sentence-gate: this model's tagger has no sentence gate; retrain it with `uwe-trainer mentions`"
        );
    }
    let points = grid(
        eval::postings::OperatingPoint::of(head),
        &mention_threshold,
        &knowledge_threshold,
        &sentence_gate,
        &label_threshold,
    );
    if sweeping {
        anyhow::ensure!(
            !explain && !reencode_spans && mode != Some(Mode::Sentences),
            "a threshold sweep runs mentions mode only, without --explain or --reencode-spans"
        );
        for (p, r) in eval::postings::sweep(&mut enc, &serving, t, &ps, &points)? {
            let mut v = serde_json::to_value(&r)?;
            v["point"] = serde_json::to_value(p)?;
            println!("{v}");
        }
        return Ok(());
    }
    let at = points[0].apply(head);
    serving.mentions = Some(std::sync::Arc::new(at));
    let r = eval::postings::evaluate(&mut enc, &serving, t, mode, &ps, explain, reencode_spans)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// Every combination of the thresholds given; a threshold not given stays where `here` is,
/// and the knowledge threshold follows the inside threshold when only that is given.
fn grid(
    here: eval::postings::OperatingPoint,
    mention: &[f32],
    knowledge: &[f32],
    gate: &[f32],
    label: &[f32],
) -> Vec<eval::postings::OperatingPoint> {
    let or_here = |v: &[f32], x: f32| if v.is_empty() { vec![x] } else { v.to_vec() };
    let mut points = Vec::new();
    for &threshold in &or_here(mention, here.threshold) {
        let knowledge = match (knowledge.is_empty(), mention.is_empty()) {
            (false, _) => knowledge.to_vec(),
            (true, false) => vec![threshold],
            (true, true) => vec![here.knowledge_threshold],
        };
        for &knowledge_threshold in &knowledge {
            for &sentence_gate in &or_here(gate, here.sentence_gate) {
                for &label_threshold in &or_here(label, here.label_threshold) {
                    points.push(eval::postings::OperatingPoint {
                        threshold,
                        knowledge_threshold,
                        sentence_gate,
                        label_threshold,
                    });
                }
            }
        }
    }
    points
}

/// `--space` and `--tasks` (clap requires both without `--postings`), the scorer and the runtime.
fn task_args(a: EvalArgs) -> (String, Vec<PathBuf>, ScorerArgs, RuntimeArgs) {
    (
        a.space.expect("clap requires --space"),
        a.tasks,
        a.scorer,
        a.rt,
    )
}

/// The task files, pooled into one list of queries.
fn read_pooled(files: &[PathBuf]) -> anyhow::Result<Vec<eval::Task>> {
    let mut all = Vec::new();
    for f in files {
        all.extend(eval::read_tasks(f)?);
    }
    Ok(all)
}

/// Two runtimes (two precisions, or two models) on the same queries: each one's scores under
/// `key`, then the changes from the first to the second with paired bootstrap intervals.
fn compare(
    a: EvalArgs,
    runtimes: [RuntimeArgs; 2],
    key: impl Fn(&crate::encoder::Encoder) -> String,
) -> anyhow::Result<()> {
    let (space, tasks, scorer, _) = task_args(a);
    let t = read_pooled(&tasks)?;
    let mut out = serde_json::Map::new();
    let mut scores = Vec::new();
    let mut names = Vec::new();
    for rt in runtimes {
        let mut enc = rt.load_encoder()?;
        let s = scorer.resolve(enc.manifest(), &space);
        let sp = rt.load_space(&space, &mut enc)?;
        let (r, q) = scored_side(&mut enc, &sp, &t, s)?;
        let k = key(&enc);
        anyhow::ensure!(
            !out.contains_key(&k),
            "both sides are {k}: compare two different models or precisions"
        );
        out.insert(k.clone(), r);
        names.push(k);
        scores.push(q);
    }
    print_changes(out, &space, &names, &scores)
}

/// One model, two scorers on the same queries: `other` first, then the scorer in use.
fn compare_scorers(a: EvalArgs, other: ScorerKind) -> anyhow::Result<()> {
    let (space, tasks, scorer, rt) = task_args(a);
    let mut enc = rt.load_encoder()?;
    let to = scorer.resolve(enc.manifest(), &space);
    let from = ScorerArgs {
        scorer: Some(other),
        ..scorer
    }
    .resolve(enc.manifest(), &space);
    anyhow::ensure!(
        from != to,
        "--against-scorer names the scorer already in use ({to:?}); pick another, or --scorer"
    );
    let sp = rt.load_space(&space, &mut enc)?;
    let t = read_pooled(&tasks)?;
    let mut out = serde_json::Map::new();
    let (mut names, mut scores) = (Vec::new(), Vec::new());
    for s in [from, to] {
        let (r, q) = scored_side(&mut enc, &sp, &t, s)?;
        let k = r["scorer"]["kind"].as_str().unwrap_or("scorer").to_string();
        out.insert(k.clone(), r);
        names.push(k);
        scores.push(q);
    }
    print_changes(out, &space, &names, &scores)
}

/// One side of a comparison: the queries scored under `s`, and their report naming the
/// model and the scorer.
fn scored_side(
    enc: &mut crate::encoder::Encoder,
    sp: &crate::space::cache::EncodedSpace,
    t: &[eval::Task],
    s: crate::model::ScorerSpec,
) -> anyhow::Result<(serde_json::Value, eval::QueryScores)> {
    let q = eval::score_queries(enc, sp, t, s, true)?;
    let mut r = serde_json::to_value(q.report())?;
    r["model"] = enc.manifest().version.clone().into();
    r["scorer"] = serde_json::to_value(s)?;
    Ok((r, q))
}

/// Prints both sides' reports with the MAP and RP@5 changes from the first to the second
/// and their paired bootstrap intervals, as one JSON line.
fn print_changes(
    mut out: serde_json::Map<String, serde_json::Value>,
    space: &str,
    names: &[String],
    scores: &[eval::QueryScores],
) -> anyhow::Result<()> {
    out.insert("space".into(), space.into());
    out.insert("from".into(), names[0].clone().into());
    out.insert("to".into(), names[1].clone().into());
    if let serde_json::Value::Object(d) =
        serde_json::to_value(eval::PairedDelta::between(&scores[0], &scores[1]))?
    {
        out.extend(d);
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// One task file against one space.
fn tasks(a: EvalArgs) -> anyhow::Result<()> {
    let (space, tasks, scorer, rt) = task_args(a);
    let mut enc = rt.load_encoder()?;
    let s = scorer.resolve(enc.manifest(), &space);
    let sp = rt.load_space(&space, &mut enc)?;
    let t = read_pooled(&tasks)?;
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

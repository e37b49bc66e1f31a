//! `uwe-trainer mentions`: train the skill-mention tagger and attach it to model directories.

use std::path::PathBuf;

use crate::mentions::train as mtrain;

/// Arguments of `uwe-trainer mentions`.
#[derive(clap::Args)]
pub(crate) struct MentionsArgs {
    /// Model directory whose token embeddings the tagger reads; it gets the tagger.
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// Also attach the tagger to these directories (their manifest must name the same graph).
    #[arg(long)]
    also: Vec<PathBuf>,
    /// Tagged training sentences (SkillSpan JSONL).
    #[arg(long, default_value = "data/skillspan/sentences_train.jsonl")]
    train: PathBuf,
    /// Tagged dev sentences: measured only, never trained or tuned on.
    #[arg(long, default_value = "data/skillspan/sentences_dev.jsonl")]
    dev: PathBuf,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 512)]
    batch: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also give every token its sentence's pooled embedding (measured: no better on
    /// whole postings than the token window alone; see the model card).
    #[arg(long)]
    sentence_context: bool,
    /// Neighbouring tokens either side of a token that its features include.
    #[arg(long, default_value_t = crate::mentions::CONTEXT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4))]
    context: usize,
    /// Earlier encoder layers (1-based, comma-separated) whose hidden states join each
    /// token's final embedding in the tagger's features; `none` for the final layer alone.
    #[arg(long, default_value_t = Layers(mtrain::LAYERS.to_vec()), value_parser = parse_layers)]
    layers: Layers,
    /// Lowest score of a mention's top label that is kept (see `uwe-connect eval --postings`).
    #[arg(long, default_value_t = 0.5)]
    label_threshold: f32,
    /// Which fold of the training postings (of 10, by a stable hash of each posting) to hold
    /// out for the inside threshold and, later, calibration: folds 1-9 give the taggers of a
    /// cross-validated calibration (`scripts/calibrate-mentions`).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..10))]
    holdout_fold: u64,
    #[arg(long, env = "UWE_THREADS", default_value_t = 0)]
    threads: usize,
}

/// Runs `uwe-trainer mentions` with these arguments.
pub(crate) fn run(a: MentionsArgs) -> anyhow::Result<()> {
    let MentionsArgs {
        model,
        also,
        train,
        dev,
        hidden,
        epochs,
        lr,
        batch,
        seed,
        sentence_context,
        context,
        label_threshold,
        holdout_fold,
        layers,
        threads,
    } = a;
    let ecfg = super::reference_encoder(threads);
    let opts = mtrain::TrainOptions {
        hidden,
        epochs,
        lr,
        batch,
        seed,
        sentence_context,
        context,
        holdout_fold,
        layers: layers.0,
    };
    let report = mtrain::train_and_attach(
        &model,
        &also,
        &train,
        &dev,
        &opts,
        mtrain::Thresholds::Fresh { label_threshold },
        &ecfg,
    )?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// A list of layer numbers (`--layers`).
#[derive(Debug, Clone)]
struct Layers(Vec<usize>);

impl std::fmt::Display for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let v: Vec<String> = self.0.iter().map(|l| l.to_string()).collect();
        f.write_str(&v.join(","))
    }
}

fn parse_layers(s: &str) -> Result<Layers, String> {
    if s.trim() == "none" {
        return Ok(Layers(vec![]));
    }
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .ok()
                .filter(|&l| l > 0)
                .ok_or_else(|| {
                    format!("{x:?} is not a layer number (1, 2, ...); use e.g. 4,5 or none")
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Layers)
}

//! `uwe-trainer pseudo-label`: real job-ad sentences labelled with ESCO skills through their
//! annotated spans, as training pairs; the rule's precision measured on annotated dev spans.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::encoder::Encoder;
use crate::mentions::read_sentences;
use crate::model::ModelDir;
use crate::space::cache;
use crate::train::pseudo;

/// Arguments of `uwe-trainer pseudo-label`.
#[derive(clap::Args)]
pub(crate) struct PseudoArgs {
    /// Model that ranks the spans.
    #[arg(long, default_value = "models/default")]
    model: PathBuf,
    /// SkillSpan sentences whose skill and knowledge spans are labelled.
    #[arg(long, default_value = "data/skillspan/sentences_train.jsonl")]
    sentences: PathBuf,
    /// Output JSONL {"text", "label_id", "span", "score", "margin"} (`train --pseudo-labels`).
    #[arg(long)]
    out: PathBuf,
    /// Lowest score of a span's top skill.
    #[arg(long, default_value_t = 0.7)]
    min_score: f32,
    /// Lowest lead of the top skill over the second.
    #[arg(long, default_value_t = 0.05)]
    min_margin: f32,
    /// Annotated spans with their ESCO skill (skill-extraction CSVs) on which the rule's
    /// precision is measured and printed; never used for training.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "data/eval/raw/skill_extraction/tech_validation_annotations.csv,data/eval/raw/skill_extraction/house_validation_annotations.csv"
    )]
    check: Vec<PathBuf>,
    #[arg(long, env = "UWE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    #[arg(long, env = "UWE_THREADS", default_value_t = 0)]
    threads: usize,
}

/// Runs `uwe-trainer pseudo-label` with these arguments.
pub(crate) fn run(a: PseudoArgs) -> anyhow::Result<()> {
    let dir = ModelDir::open(&a.model).with_context(|| format!("model {}", a.model.display()))?;
    let ecfg = super::reference_encoder(a.threads);
    let mut enc = Encoder::load(&dir, &ecfg)?;
    // Pooled cosines: a span is ranked as the connector ranks a mention.
    let scorer = crate::model::ScorerSpec::Pooled;
    let space = cache::load_named(
        "esco-skills",
        &a.data_dir,
        &mut enc,
        &cache::default_cache_dir(),
        false,
        None,
    )?;
    let rule = pseudo::Rule {
        min_score: a.min_score,
        min_margin: a.min_margin,
    };
    let csvs: Vec<&Path> = a.check.iter().map(PathBuf::as_path).collect();
    let check = pseudo::check_rule(&mut enc, &space, &csvs, rule, scorer)?;
    let sentences = read_sentences(&a.sentences)?;
    let (pairs, spans) = pseudo::pseudo_pairs(&mut enc, &space, &sentences, rule, scorer)?;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?,
    );
    for p in &pairs {
        writeln!(f, "{}", serde_json::to_string(p)?)?;
    }
    f.flush()?;
    let report = serde_json::json!({
        "model": dir.manifest.version,
        "rule": rule,
        "check": check,
        "sentences": sentences.len(),
        "spans": spans,
        "pairs": pairs.len(),
        "out": a.out,
    });
    println!("{report}");
    Ok(())
}

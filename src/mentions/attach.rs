//! Training a tagger for a model directory and attaching it: `uwe-trainer mentions`, and the
//! trainer's retraining of the tagger on every candidate.

use std::path::Path;

use super::train::{evaluate, read_sentences, train, TrainOptions};
use super::{to_safetensors, MentionSpec, MENTION_FILE};
use crate::encoder::Encoder;
use crate::error::{ModelError, Result};

/// Which thresholds a newly trained tagger ships with.
#[derive(Debug, Clone, Copy)]
pub enum Thresholds<'a> {
    /// The inside threshold chosen on the held-out postings, and this label threshold.
    Fresh {
        /// See [`MentionSpec::label_threshold`].
        label_threshold: f32,
    },
    /// Those of a calibrated tagger it replaces (with its calibration record).
    Keep(&'a MentionSpec),
}

/// Trains a tagger on `model_dir`'s token embeddings, measures it on `dev`, and attaches it
/// to `model_dir` and to each of `also` (directories whose manifest names the same graph).
/// Returns the manifest's `report` value.
pub fn train_and_attach(
    model_dir: &Path,
    also: &[std::path::PathBuf],
    train_path: &Path,
    dev_path: &Path,
    opts: &TrainOptions,
    thresholds: Thresholds<'_>,
    cfg: &crate::encoder::EncoderConfig,
) -> Result<serde_json::Value> {
    let (label_threshold, keep_thresholds) = match thresholds {
        Thresholds::Fresh { label_threshold } => (label_threshold, None),
        Thresholds::Keep(spec) => (spec.label_threshold, Some(spec)),
    };
    let dir = crate::model::ModelDir::open(model_dir)?;
    for a in also {
        let m = a.join(crate::model::MANIFEST_FILE);
        let text = std::fs::read_to_string(&m).map_err(ModelError::io(&m))?;
        let other: crate::model::Manifest =
            serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
                path: m.clone(),
                msg: e.to_string(),
            })?;
        let graph = crate::model::ONNX_FILE;
        if other.files.get(graph) != dir.manifest.files.get(graph) {
            return Err(ModelError::Manifest {
                path: m,
                msg: format!(
                    "names another {graph} than {}: a tagger only fits the graph it was trained on",
                    model_dir.display()
                ),
            });
        }
    }
    let mut enc = Encoder::load(&dir, cfg)?;
    let train_set = read_sentences(train_path)?;
    let dev_set = read_sentences(dev_path)?;
    let (mut head, report) = train(&mut enc, &train_set, opts)?;
    head.label_threshold = label_threshold;
    // A retrained tagger keeps the operating point the current one was calibrated at.
    if let Some(k) = keep_thresholds {
        head.threshold = k.threshold;
        head.knowledge_threshold = k.knowledge_threshold.unwrap_or(k.threshold);
        head.label_threshold = k.label_threshold;
        head.gate_threshold = k.sentence_gate.unwrap_or(0.0);
    }
    let dev_texts: Vec<String> = dev_set.iter().map(|s| s.text().0).collect();
    let dev_embs = enc.encode(&dev_texts)?;
    let dev_scores = evaluate(&head, &dev_set, &dev_embs);
    let mut value = serde_json::json!({
        "train": train_path.display().to_string(),
        "dev": dev_path.display().to_string(),
        "hidden": opts.hidden,
        "epochs": opts.epochs,
        "lr": opts.lr,
        "batch": opts.batch,
        "seed": opts.seed,
        "sentence_context": opts.sentence_context,
        "context": opts.context,
        "layers": opts.layers,
        "training": report,
        "dev_sentences": dev_set.len(),
        "dev_spans": dev_scores,
    });
    if let Some(c) = keep_thresholds.and_then(|k| k.report.get("calibration")) {
        value["calibration"] = c.clone();
    }
    let spec = MentionSpec {
        file: MENTION_FILE.into(),
        hidden: opts.hidden,
        sentence_context: head.sentence_context(),
        context: head.context(),
        layers: opts.layers.clone(),
        sentence_gate: (head.gate.is_some() && head.gate_threshold > 0.0)
            .then_some(head.gate_threshold),
        threshold: head.threshold,
        knowledge_threshold: (head.knowledge_threshold != head.threshold)
            .then_some(head.knowledge_threshold),
        label_threshold: head.label_threshold,
        report: value.clone(),
    };
    let bytes = to_safetensors(&head)?;
    for d in std::iter::once(&model_dir.to_path_buf()).chain(also) {
        crate::model::attach_mentions(d, &spec, &bytes)?;
    }
    // Reopening checks the sha256 just written and that the head loads.
    crate::model::ModelDir::open(model_dir)?
        .mention_head()?
        .ok_or_else(|| ModelError::Weights("the tagger was not attached".into()))?;
    Ok(value)
}

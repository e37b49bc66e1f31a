//! Model directories: the ONNX graph, the tokenizer and a manifest that everything else reads.
//!
//! ```text
//! models/<name>/
//!   manifest.json    name, version, checksums, dimensions, scorer, dev scores
//!   model.onnx       token embeddings + pooled embedding (see `graph`)
//!   model.int8.onnx  the same graph with int8 linear layers, for CPUs (optional)
//!   tokenizer.json   Hugging Face tokenizer
//! ```
//! Nothing in the project hard-codes a model: dimensions, sequence window, scorer and
//! target text all come from the manifest.

mod build;
pub mod calibrate;
pub mod graph;
pub mod onnx_proto;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};
pub use build::{attach_int8, attach_mentions, build_model_dir, write_dir_atomically, BuildSpec};
pub use graph::{BertConfig, Precision};

/// Manifest format understood by this build.
pub const MANIFEST_FORMAT: u32 = 1;
/// File names inside a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The ONNX graph.
pub const ONNX_FILE: &str = "model.onnx";
/// The int8 variant of the graph, when the model has one.
pub const ONNX_INT8_FILE: &str = "model.int8.onnx";
/// The tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// How a text is scored against a target.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScorerSpec {
    /// Cosine of the pooled embeddings.
    Pooled,
    /// Soft late interaction over token embeddings, applied to the pooled top `rerank_top`.
    Late {
        /// Softmax temperature τ over target tokens (τ → 0 gives MaxSim).
        temperature: f32,
        /// How many pooled candidates are reranked; 0 means exhaustive.
        rerank_top: usize,
    },
    /// Token attention over the query, after ConTeXT-match (Decorte et al. 2025): the
    /// concept's pooled vector attends over the query's tokens and scores the attended mix,
    /// which lets one sentence naming several skills match each through its own words; the
    /// result is blended with the pooled cosine. Applied to the pooled top `rerank_top`.
    Attend {
        /// Softmax temperature τ over query tokens.
        temperature: f32,
        /// Weight of the pooled cosine in the blend, in [0, 1].
        pooled_weight: f32,
        /// How many pooled candidates are reranked; 0 means exhaustive.
        rerank_top: usize,
    },
}

/// Which text of a concept is embedded for ranking.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TargetText {
    /// The preferred label only.
    #[default]
    Label,
    /// The preferred label, a colon and the description.
    LabelDescription,
    /// The preferred label followed by the alternative labels (comma-separated, within
    /// one model window): the concept's embedding then covers the names people use.
    LabelAliases,
}

/// The manifest of a model directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// Model family name, e.g. `uwe-minilm-l6`.
    pub name: String,
    /// Version string carried by every enriched record.
    pub version: String,
    /// Where the starting weights came from.
    pub base_model: String,
    /// Embedding width.
    pub dim: usize,
    /// Longest token window, special tokens included; longer texts are split.
    pub max_seq_len: usize,
    /// sha256 of each file in the directory (manifest excluded).
    pub files: BTreeMap<String, String>,
    /// sha256 of the safetensors weights the graph was written from.
    pub weights_sha256: String,
    /// sha256 of the trained weights' safetensors (`uwe-trainer`'s output), when the model
    /// has them.
    #[serde(default, alias = "head_sha256")]
    pub trained_sha256: Option<String>,
    /// Default scorer and its parameters.
    pub scorer: ScorerSpec,
    /// Scorers that win for particular target spaces, by space name as a connector names
    /// it (`esco-skills`, ...); other spaces use `scorer`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_scorers: BTreeMap<String, ScorerSpec>,
    /// Which concept text is embedded.
    #[serde(default)]
    pub target_text: TargetText,
    /// The transformer shape.
    pub bert: BertConfig,
    /// Data the model was trained on (empty for a base model).
    #[serde(default)]
    pub training_data: Vec<String>,
    /// Dev-set scores, by task name.
    #[serde(default)]
    pub dev_scores: BTreeMap<String, serde_json::Value>,
    /// The skill-mention tagger over the token embeddings, when the model has one
    /// (`uwe-trainer mentions`); targets in `mentions` mode need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions: Option<crate::mentions::MentionSpec>,
    /// The int8 variant of the graph, when the model has one (`build-model --quantize int8`):
    /// served on CPU when `encoder.precision` is `int8` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<QuantizedGraph>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// A quantised variant of the graph in the same model directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuantizedGraph {
    /// File name inside the directory (its sha256 is in `files`).
    pub file: String,
    /// How it was quantised, for people reading the manifest.
    pub scheme: String,
}

/// The scheme string written for [`Precision::Int8`] graphs, with how many input channels
/// of how many layers stay f32 and how many calibration texts chose them.
pub fn int8_scheme(outliers: &graph::OutlierChannels, texts: usize) -> String {
    let channels: usize = outliers.values().map(Vec::len).sum();
    format!(
        "dynamic int8: linear weights per output channel, symmetric, |q| <= 127; activations per token, symmetric (MatMulIntegerToFloat; batch-independent); \
         {channels} outlier input channels of {} layers multiplied in f32 (chosen on {texts} calibration texts)",
        outliers.len()
    )
}

impl Manifest {
    /// The scorer for the target space named `space`: its entry in `target_scorers`, else
    /// the default `scorer`.
    pub fn scorer_for(&self, space: &str) -> ScorerSpec {
        self.target_scorers
            .get(space)
            .copied()
            .unwrap_or(self.scorer)
    }

    /// A short identity of what the model computes in `precision`: the graph served, the
    /// tokenizer and the target text. Caches of target-space embeddings are keyed by it, so
    /// f32 and int8 embeddings never mix.
    pub fn model_key(&self, precision: Precision) -> String {
        let mut h = Sha256::new();
        // The mention tagger reads token embeddings but changes none: target-space caches
        // stay valid when it is added or retrained. Of the two graphs only the one served counts.
        let int8 = self.int8.as_ref().map(|q| q.file.as_str());
        let skip: [Option<&str>; 2] = [
            self.mentions.as_ref().map(|m| m.file.as_str()),
            match precision {
                Precision::F32 => int8,
                Precision::Int8 => Some(ONNX_FILE),
            },
        ];
        for (k, v) in self
            .files
            .iter()
            .filter(|(k, _)| !skip.contains(&Some(k.as_str())))
        {
            h.update(k.as_bytes());
            h.update(v.as_bytes());
        }
        h.update(format!("{:?}", self.target_text).as_bytes());
        hex::encode(&h.finalize()[..8])
    }
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(ModelError::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(ModelError::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 of bytes.
pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// An opened model directory whose files matched their checksums.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl ModelDir {
    /// Opens `path`, parses the manifest and verifies every file's sha256.
    pub fn open(path: &Path) -> Result<Self> {
        let mpath = path.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&mpath).map_err(ModelError::io(&mpath))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
            path: mpath.clone(),
            msg: e.to_string(),
        })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(ModelError::Manifest {
                path: mpath,
                msg: format!(
                    "format {} is not supported by this build (expected {MANIFEST_FORMAT})",
                    manifest.format
                ),
            });
        }
        for required in [ONNX_FILE, TOKENIZER_FILE] {
            if !manifest.files.contains_key(required) {
                return Err(ModelError::Manifest {
                    path: mpath.clone(),
                    msg: format!("`files` lacks {required}"),
                });
            }
        }
        if manifest.max_seq_len < 8 || manifest.max_seq_len > manifest.bert.max_position_embeddings
        {
            return Err(ModelError::Manifest {
                path: mpath,
                msg: format!(
                    "max_seq_len {} must be between 8 and max_position_embeddings {}",
                    manifest.max_seq_len, manifest.bert.max_position_embeddings
                ),
            });
        }
        for (file, expected) in &manifest.files {
            let fp = path.join(file);
            let actual = sha256_file(&fp)?;
            if &actual != expected {
                return Err(ModelError::Checksum {
                    path: fp,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(ModelDir {
            path: path.to_path_buf(),
            manifest,
        })
    }

    /// Path of the ONNX graph.
    pub fn onnx_path(&self) -> PathBuf {
        self.path.join(ONNX_FILE)
    }

    /// Path of the graph in `precision`, when the directory has it.
    pub fn graph_path(&self, precision: Precision) -> Option<PathBuf> {
        match precision {
            Precision::F32 => Some(self.onnx_path()),
            Precision::Int8 => self.manifest.int8.as_ref().map(|q| self.path.join(&q.file)),
        }
    }

    /// Path of the tokenizer.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.path.join(TOKENIZER_FILE)
    }

    /// The mention tagger, when the manifest names one (its sha256 was checked at open).
    pub fn mention_head(&self) -> Result<Option<crate::mentions::MentionHead>> {
        match &self.manifest.mentions {
            None => Ok(None),
            Some(spec) => {
                crate::mentions::MentionHead::load(&self.path, spec, self.manifest.dim).map(Some)
            }
        }
    }
}

/// Current UTC time in RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../trained/uwe-minilm-l6/manifest.json");

    #[test]
    fn the_shipped_model_scores_skills_by_attention_and_the_rest_pooled() {
        let m: Manifest = serde_json::from_str(SHIPPED).unwrap();
        assert!(matches!(
            m.scorer_for("esco-skills"),
            ScorerSpec::Attend { .. }
        ));
        assert_eq!(m.scorer_for("esco-occupations"), ScorerSpec::Pooled);
        assert_eq!(m.scorer_for("data/my-taxonomy.jsonl"), m.scorer);
        // A manifest written before per-space scorers reads as the default for every space.
        let mut v: serde_json::Value = serde_json::from_str(SHIPPED).unwrap();
        v.as_object_mut().unwrap().remove("target_scorers");
        let old: Manifest = serde_json::from_value(v).unwrap();
        assert_eq!(old.scorer_for("esco-skills"), old.scorer);
        assert!(!serde_json::to_string(&old)
            .unwrap()
            .contains("target_scorers"));
    }
}

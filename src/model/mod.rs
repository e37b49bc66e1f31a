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

pub mod graph;
pub mod onnx_proto;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};
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

/// The scheme string written for [`Precision::Int8`] graphs.
pub const INT8_SCHEME: &str =
    "dynamic int8: linear weights per output channel, symmetric, |q| <= 127; activations per call (DynamicQuantizeMatMul)";

impl Manifest {
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

/// Adds (or replaces) the mention tagger of the directory holding `manifest.json` at `dir`:
/// writes the tagger's file, then the manifest naming it with its sha256 (each through a
/// temporary file and a rename, so a crash leaves the old manifest or the new one).
/// Works on a model directory and on a shipped `trained/` folder alike.
pub fn attach_mentions(
    dir: &Path,
    spec: &crate::mentions::MentionSpec,
    bytes: &[u8],
) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&mpath).map_err(ModelError::io(&mpath))?;
    let mut manifest: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
        path: mpath.clone(),
        msg: e.to_string(),
    })?;
    if let Some(old) = &manifest.mentions {
        manifest.files.remove(&old.file);
    }
    manifest
        .files
        .insert(spec.file.clone(), sha256_bytes(bytes));
    manifest.mentions = Some(spec.clone());
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    replace_files(
        dir,
        &[(spec.file.as_str(), bytes), (MANIFEST_FILE, &json[..])],
    )?;
    Ok(manifest)
}

/// Writes each file of `files` into `dir` through a temporary file and a rename, in order,
/// so a crash leaves every file either old or new (the manifest goes last).
fn replace_files(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    for (name, data) in files {
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, data).map_err(ModelError::io(&tmp))?;
        let fin = dir.join(name);
        std::fs::rename(&tmp, &fin).map_err(ModelError::io(&fin))?;
    }
    Ok(())
}

/// Parses a Hugging Face `config.json`.
fn read_bert_config(path: &Path) -> Result<BertConfig> {
    let text = std::fs::read_to_string(path).map_err(ModelError::io(path))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Parses safetensors bytes read from `path`.
fn parse_safetensors<'b>(bytes: &'b [u8], path: &Path) -> Result<safetensors::SafeTensors<'b>> {
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        ModelError::Weights(format!("{}: not a safetensors file: {e}", path.display()))
    })
}

/// Adds the int8 graph to the model directory at `dir`, written from the same files it was
/// built from (`config`, base `weights`, optional `trained` weights, whose sha256 must be
/// those the manifest records); the manifest is replaced last, through a rename.
pub fn attach_int8(
    dir: &Path,
    config: &Path,
    weights: &Path,
    trained: Option<&Path>,
) -> Result<ModelDir> {
    let current = ModelDir::open(dir)?;
    let mpath = dir.join(MANIFEST_FILE);
    let bert = read_bert_config(config)?;
    let wb = std::fs::read(weights).map_err(ModelError::io(weights))?;
    let tb = match trained {
        Some(p) => Some(std::fs::read(p).map_err(ModelError::io(p))?),
        None => None,
    };
    if sha256_bytes(&wb) != current.manifest.weights_sha256
        || tb.as_deref().map(sha256_bytes) != current.manifest.trained_sha256
    {
        return Err(ModelError::Manifest {
            path: mpath,
            msg: "the weights given are not the ones this model was built from".into(),
        });
    }
    let st = parse_safetensors(&wb, weights)?;
    let tt = match (&tb, trained) {
        (Some(b), Some(p)) => Some(parse_safetensors(b, p)?),
        _ => None,
    };
    let q = graph::build_bert_onnx(&bert, &st, tt.as_ref(), Precision::Int8)?;
    let mut manifest = current.manifest;
    manifest
        .files
        .insert(ONNX_INT8_FILE.to_string(), sha256_bytes(&q));
    manifest.int8 = Some(QuantizedGraph {
        file: ONNX_INT8_FILE.into(),
        scheme: INT8_SCHEME.into(),
    });
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    replace_files(dir, &[(ONNX_INT8_FILE, &q[..]), (MANIFEST_FILE, &json[..])])?;
    ModelDir::open(dir)
}

/// What a new model directory is built from.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// Hugging Face `config.json`.
    pub config: PathBuf,
    /// Weights in safetensors.
    pub weights: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Optional trained weights from `uwe-trainer`: base weights of the same names are
    /// replaced, and a `head.weight` adds the projection head.
    pub trained: Option<PathBuf>,
    /// Model family name.
    pub name: String,
    /// Version string.
    pub version: String,
    /// Description of the starting weights.
    pub base_model: String,
    /// Token window.
    pub max_seq_len: usize,
    /// Default scorer.
    pub scorer: ScorerSpec,
    /// Target text.
    pub target_text: TargetText,
    /// Training data description.
    pub training_data: Vec<String>,
    /// Dev scores to record.
    pub dev_scores: BTreeMap<String, serde_json::Value>,
    /// A mention tagger to ship in the directory: its spec and file bytes.
    pub mentions: Option<(crate::mentions::MentionSpec, Vec<u8>)>,
    /// Also write the int8 variant of the graph ([`ONNX_INT8_FILE`]).
    pub int8: bool,
}

/// Builds a model directory at `out` atomically: everything is written into a sibling
/// temporary directory, fsynced, then renamed into place.
pub fn build_model_dir(spec: &BuildSpec, out: &Path) -> Result<ModelDir> {
    let bert = read_bert_config(&spec.config)?;
    let weights = std::fs::read(&spec.weights).map_err(ModelError::io(&spec.weights))?;
    let st = parse_safetensors(&weights, &spec.weights)?;
    let head_bytes = match &spec.trained {
        Some(p) => Some(std::fs::read(p).map_err(ModelError::io(p))?),
        None => None,
    };
    let head = match (&head_bytes, &spec.trained) {
        (Some(b), Some(p)) => Some(parse_safetensors(b, p)?),
        _ => None,
    };
    let onnx = graph::build_bert_onnx(&bert, &st, head.as_ref(), Precision::F32)?;
    let onnx_int8 = match spec.int8 {
        true => Some(graph::build_bert_onnx(
            &bert,
            &st,
            head.as_ref(),
            Precision::Int8,
        )?),
        false => None,
    };
    let tok = std::fs::read(&spec.tokenizer).map_err(ModelError::io(&spec.tokenizer))?;
    tokenizers::Tokenizer::from_bytes(&tok)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", spec.tokenizer.display())))?;
    let mut files = BTreeMap::new();
    files.insert(ONNX_FILE.to_string(), sha256_bytes(&onnx));
    files.insert(TOKENIZER_FILE.to_string(), sha256_bytes(&tok));
    if let Some((m, bytes)) = &spec.mentions {
        files.insert(m.file.clone(), sha256_bytes(bytes));
    }
    if let Some(q) = &onnx_int8 {
        files.insert(ONNX_INT8_FILE.to_string(), sha256_bytes(q));
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: spec.name.clone(),
        version: spec.version.clone(),
        base_model: spec.base_model.clone(),
        dim: bert.hidden_size,
        max_seq_len: spec.max_seq_len.min(bert.max_position_embeddings),
        files,
        weights_sha256: sha256_bytes(&weights),
        trained_sha256: head_bytes.as_deref().map(sha256_bytes),
        scorer: spec.scorer,
        target_text: spec.target_text,
        bert,
        training_data: spec.training_data.clone(),
        dev_scores: spec.dev_scores.clone(),
        mentions: spec.mentions.as_ref().map(|(m, _)| m.clone()),
        int8: onnx_int8.as_ref().map(|_| QuantizedGraph {
            file: ONNX_INT8_FILE.into(),
            scheme: INT8_SCHEME.into(),
        }),
        created_at: now_rfc3339(),
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let mut files: Vec<(&str, &[u8])> = vec![
        (ONNX_FILE, &onnx),
        (TOKENIZER_FILE, &tok),
        (MANIFEST_FILE, &manifest_json),
    ];
    if let Some((m, bytes)) = &spec.mentions {
        files.push((m.file.as_str(), bytes));
    }
    if let Some(q) = &onnx_int8 {
        files.push((ONNX_INT8_FILE, q));
    }
    write_dir_atomically(out, &files)?;
    ModelDir::open(out)
}

/// Writes `files` into a fresh directory at `out`: temp dir, fsync each file, rename.
/// An existing `out` is replaced.
pub fn write_dir_atomically(out: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    use std::io::Write;
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(ModelError::io(parent))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(ModelError::io(&tmp))?;
    for (file, bytes) in files {
        let p = tmp.join(file);
        let mut f = std::fs::File::create(&p).map_err(ModelError::io(&p))?;
        f.write_all(bytes).map_err(ModelError::io(&p))?;
        f.sync_all().map_err(ModelError::io(&p))?;
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(ModelError::io(out))?;
    }
    std::fs::rename(&tmp, out).map_err(ModelError::io(out))?;
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Current UTC time in RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

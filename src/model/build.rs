//! Writing model directories: a new one from weights (`build-model`), and the files added to
//! an existing one (the int8 graph, the mention tagger), each replaced atomically.

use std::path::{Path, PathBuf};

use super::graph::GraphVariant;
use super::*;

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
    let tok_path = current.tokenizer_path();
    let tok = std::fs::read(&tok_path).map_err(ModelError::io(&tok_path))?;
    let (q, info) = int8_graph(&bert, &st, tt.as_ref(), &tok, current.manifest.max_seq_len)?;
    let mut manifest = current.manifest;
    manifest
        .files
        .insert(ONNX_INT8_FILE.to_string(), sha256_bytes(&q));
    manifest.int8 = Some(info);
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    replace_files(dir, &[(ONNX_INT8_FILE, &q[..]), (MANIFEST_FILE, &json[..])])?;
    ModelDir::open(dir)
}

/// The int8 graph, its outlier channels measured on the shipped calibration texts, and the
/// manifest entry that describes it.
fn int8_graph(
    bert: &graph::BertConfig,
    weights: &safetensors::SafeTensors<'_>,
    trained: Option<&safetensors::SafeTensors<'_>>,
    tokenizer: &[u8],
    max_seq_len: usize,
) -> Result<(Vec<u8>, QuantizedGraph)> {
    let texts: Vec<&str> = calibrate::SHIPPED_TEXTS.lines().collect();
    let outliers =
        calibrate::outlier_channels(bert, weights, trained, tokenizer, max_seq_len, &texts)?;
    let q = graph::build_bert_onnx(bert, weights, trained, GraphVariant::Int8(&outliers))?;
    let info = QuantizedGraph {
        file: ONNX_INT8_FILE.into(),
        scheme: int8_scheme(&outliers, texts.len()),
    };
    Ok((q, info))
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
    /// Scorers for particular target spaces (the manifest's `target_scorers`).
    pub target_scorers: BTreeMap<String, ScorerSpec>,
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
    let onnx = graph::build_bert_onnx(&bert, &st, head.as_ref(), GraphVariant::F32)?;
    let tok = std::fs::read(&spec.tokenizer).map_err(ModelError::io(&spec.tokenizer))?;
    tokenizers::Tokenizer::from_bytes(&tok)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", spec.tokenizer.display())))?;
    let max_seq_len = spec.max_seq_len.min(bert.max_position_embeddings);
    let int8 = match spec.int8 {
        true => Some(int8_graph(&bert, &st, head.as_ref(), &tok, max_seq_len)?),
        false => None,
    };
    let mut files = BTreeMap::new();
    files.insert(ONNX_FILE.to_string(), sha256_bytes(&onnx));
    files.insert(TOKENIZER_FILE.to_string(), sha256_bytes(&tok));
    if let Some((m, bytes)) = &spec.mentions {
        files.insert(m.file.clone(), sha256_bytes(bytes));
    }
    if let Some((q, _)) = &int8 {
        files.insert(ONNX_INT8_FILE.to_string(), sha256_bytes(q));
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: spec.name.clone(),
        version: spec.version.clone(),
        base_model: spec.base_model.clone(),
        dim: bert.hidden_size,
        max_seq_len,
        files,
        weights_sha256: sha256_bytes(&weights),
        trained_sha256: head_bytes.as_deref().map(sha256_bytes),
        scorer: spec.scorer,
        target_scorers: spec.target_scorers.clone(),
        target_text: spec.target_text,
        bert,
        training_data: spec.training_data.clone(),
        dev_scores: spec.dev_scores.clone(),
        mentions: spec.mentions.as_ref().map(|(m, _)| m.clone()),
        int8: int8.as_ref().map(|(_, info)| info.clone()),
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
    if let Some((q, _)) = &int8 {
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

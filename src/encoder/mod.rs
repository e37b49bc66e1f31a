//! The encoder: text → token-level and pooled embeddings through ONNX Runtime.
//!
//! [`Encoder`] is plain, blocking code: tokenise, split long texts into windows, group the
//! windows into token-budget batches padded to their longest member, run the session,
//! gather the results. [`service::EncoderService`] puts one on its own thread behind a
//! queue, as text-embeddings-inference does with its backend, so async code never blocks
//! on inference.

pub mod runtime;
pub mod service;
mod windows;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};
use crate::model::{graph, Manifest, ModelDir, Precision};
pub use runtime::{Device, PrecisionChoice};
use windows::Window;

/// Byte range `(start, end)` of each token row of a text, in the text.
pub type TokenOffsets = Vec<(u32, u32)>;

/// Embeddings of one text.
#[derive(Debug, Clone, Default)]
pub struct TextEmbedding {
    /// L2-normalised pooled embedding (`dim` values; all zero for an empty text).
    pub pooled: Vec<f32>,
    /// L2-normalised embeddings of the text's word pieces, special tokens excluded,
    /// `n_tokens × dim` row-major.
    pub tokens: Vec<f32>,
    /// Number of token rows.
    pub n_tokens: usize,
    /// Byte range in the text of each token row (`n_tokens` entries): mention spans are
    /// mapped back to characters through it.
    pub offsets: Vec<(u32, u32)>,
    /// Number of model windows the text was split into.
    pub n_windows: usize,
    /// Hidden states of the earlier layers the mention tagger reads
    /// ([`Encoder::feature_layers`]), each L2-normalised: `n_tokens × layers × dim`, one
    /// token's blocks together, in the layers' order. Empty when it reads none.
    pub layer_rows: Vec<f32>,
}

impl TextEmbedding {
    /// True for an empty or whitespace-only text.
    pub fn is_empty(&self) -> bool {
        self.n_tokens == 0
    }

    /// Approximate heap size, for the byte-bounded cache.
    pub fn heap_bytes(&self) -> usize {
        (self.pooled.len() + self.tokens.len() + self.layer_rows.len() + 2 * self.offsets.len()) * 4
            + 64
    }
}

/// Encoder settings (`[encoder]` in a connector file).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// `auto`, `cpu` or `cuda`.
    pub device: Device,
    /// `auto` (default: int8 on CPU when the model has it), `f32`, or `int8` (CPU only).
    pub precision: PrecisionChoice,
    /// Intra-op threads on CPU; 0 means one per available core.
    pub intra_threads: usize,
    /// Token budget of one batch, padding included.
    pub max_batch_tokens: usize,
    /// Most windows in one batch.
    pub max_batch_size: usize,
    /// Bytes of the query-embedding cache (0 turns it off).
    pub cache_bytes: u64,
    /// Texts longer than this many bytes are not cached.
    pub cache_max_text_bytes: usize,
    /// Path of `libonnxruntime.so`; defaults to `ORT_DYLIB_PATH`, then `.uwe/lib/`.
    pub onnxruntime: Option<PathBuf>,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            device: Device::Auto,
            precision: PrecisionChoice::Auto,
            intra_threads: 0,
            max_batch_tokens: 8192,
            max_batch_size: 128,
            cache_bytes: 64 << 20,
            cache_max_text_bytes: 1024,
            onnxruntime: None,
        }
    }
}

/// Blocking encoder over one ONNX Runtime session.
pub struct Encoder {
    session: ort::session::Session,
    tokenizer: Tokenizer,
    manifest: Manifest,
    cfg: EncoderConfig,
    cls: u32,
    sep: u32,
    pad: u32,
    cache: Option<moka::sync::Cache<String, Arc<TextEmbedding>>>,
    device: Device,
    precision: Precision,
    /// Earlier layers (1-based) whose hidden states each text's embedding carries.
    feature_layers: Vec<usize>,
    /// Run options fetching only the token and pooled outputs, and those plus the feature
    /// layers: ONNX Runtime otherwise copies out every graph output, five hidden states
    /// included, for target spaces and trainer passes that read none of them.
    run_plain: ort::session::RunOptions<ort::session::HasSelectedOutputs>,
    run_layers: ort::session::RunOptions<ort::session::HasSelectedOutputs>,
}

/// Run options that fetch the token and pooled outputs and the hidden states of `layers`.
fn run_options(
    layers: &[usize],
) -> Result<ort::session::RunOptions<ort::session::HasSelectedOutputs>> {
    let mut sel = ort::session::OutputSelector::no_default()
        .with(graph::OUTPUT_TOKENS)
        .with(graph::OUTPUT_POOLED);
    for &l in layers {
        sel = sel.with(graph::output_hidden(l));
    }
    Ok(ort::session::RunOptions::new()
        .map_err(|e| ModelError::Runtime(e.to_string()))?
        .with_outputs(sel))
}

/// One window's outputs: pooled embedding, token rows and the feature layers' rows, each
/// `(ids + 2) × width` with `[CLS]` and `[SEP]` included until [`Encoder::run_batch`] drops
/// them.
struct WindowOut {
    pooled: Vec<f32>,
    rows: Vec<f32>,
    layer_rows: Vec<f32>,
}

impl Encoder {
    /// Loads the model directory's graph and tokenizer.
    pub fn load(model: &ModelDir, cfg: &EncoderConfig) -> Result<Self> {
        let manifest = model.manifest.clone();
        let tpath = model.tokenizer_path();
        let mut tokenizer = Tokenizer::from_file(&tpath)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tpath.display())))?;
        // The shipped tokenizer pads and truncates at 128: windows are made here instead.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let special = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                ModelError::Tokenizer(format!(
                    "{}: has no {t} token; the tokenizer does not belong to this BERT model",
                    tpath.display()
                ))
            })
        };
        let (cls, sep, pad) = (special("[CLS]")?, special("[SEP]")?, special("[PAD]")?);
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > manifest.bert.vocab_size {
            return Err(ModelError::Tokenizer(format!(
                "{}: vocabulary of {vocab} tokens exceeds the model's {} embedding rows; tokenizer and model do not match",
                tpath.display(),
                manifest.bert.vocab_size
            )));
        }
        let (session, device, precision) = runtime::build_session(model, cfg)?;
        tracing::info!(model = %manifest.version, ?device, %precision, "encoder loaded");
        let cache = (cfg.cache_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cfg.cache_bytes)
                .weigher(|k: &String, v: &Arc<TextEmbedding>| {
                    (k.len() + v.heap_bytes()).min(u32::MAX as usize) as u32
                })
                .build()
        });
        let mut enc = Encoder {
            session,
            tokenizer,
            manifest,
            cfg: cfg.clone(),
            cls,
            sep,
            pad,
            cache,
            device,
            precision,
            feature_layers: vec![],
            run_plain: run_options(&[])?,
            run_layers: run_options(&[])?,
        };
        let layers = enc
            .manifest
            .mentions
            .as_ref()
            .map(|m| m.layers.clone())
            .unwrap_or_default();
        enc.set_feature_layers(&layers)?;
        Ok(enc)
    }

    /// Earlier layers (1-based) whose hidden states every embedding carries in
    /// [`TextEmbedding::layer_rows`]: the model's tagger's ([`crate::mentions::MentionSpec::layers`])
    /// unless set otherwise.
    pub fn feature_layers(&self) -> &[usize] {
        &self.feature_layers
    }

    /// Makes every embedding carry these layers' hidden states (the trainer sets the layers
    /// of a tagger it is about to train). Clears the embedding cache.
    pub fn set_feature_layers(&mut self, layers: &[usize]) -> Result<()> {
        let have: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        for &l in layers {
            let name = graph::output_hidden(l);
            if l == 0 || l >= self.manifest.bert.num_hidden_layers || !have.contains(&name.as_str())
            {
                return Err(ModelError::Weights(format!(
                    "the mention tagger reads layer {l}, but the graph of model {} has no `{name}` output (layers 1..{} can be read; graphs written before the tagger read earlier layers have none): rebuild the model directory with `scripts/setup` or `uwe-connect build-model`",
                    self.manifest.version,
                    self.manifest.bert.num_hidden_layers.saturating_sub(1)
                )));
            }
        }
        self.run_layers = run_options(layers)?;
        self.feature_layers = layers.to_vec();
        if let Some(c) = &self.cache {
            c.invalidate_all();
        }
        Ok(())
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The device the session runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The precision of the graph served.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Identity of what this encoder computes (graph served, tokenizer, target text): the
    /// key of target-space caches.
    pub fn model_key(&self) -> String {
        self.manifest.model_key(self.precision)
    }

    /// Number of word pieces of `text` (special tokens excluded).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?
            .len())
    }

    /// Encodes `texts`, in order. Empty texts give an empty embedding.
    pub fn encode<S: AsRef<str>>(&mut self, texts: &[S]) -> Result<Vec<Arc<TextEmbedding>>> {
        let mut out: Vec<Option<Arc<TextEmbedding>>> = vec![None; texts.len()];
        let mut todo: Vec<usize> = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let t = t.as_ref();
            if t.trim().is_empty() {
                out[i] = Some(Arc::new(TextEmbedding {
                    pooled: vec![0.0; self.manifest.dim],
                    ..Default::default()
                }));
            } else if let Some(hit) = self.cache_get(t) {
                crate::telemetry::query_cache(true);
                out[i] = Some(hit);
            } else {
                crate::telemetry::query_cache(false);
                todo.push(i);
            }
        }
        if !todo.is_empty() {
            let strs: Vec<&str> = todo.iter().map(|&i| texts[i].as_ref()).collect();
            let fresh = self.encode_uncached(&strs)?;
            for (&i, e) in todo.iter().zip(fresh) {
                let e = Arc::new(e);
                if let Some(c) = &self.cache {
                    let t = texts[i].as_ref();
                    if t.len() <= self.cfg.cache_max_text_bytes {
                        c.insert(t.to_string(), e.clone());
                    }
                }
                out[i] = Some(e);
            }
        }
        Ok(out
            .into_iter()
            .map(|e| e.expect("every text encoded"))
            .collect())
    }

    fn cache_get(&self, t: &str) -> Option<Arc<TextEmbedding>> {
        let c = self.cache.as_ref()?;
        if t.len() > self.cfg.cache_max_text_bytes {
            return None;
        }
        c.get(t)
    }

    fn encode_uncached(&mut self, texts: &[&str]) -> Result<Vec<TextEmbedding>> {
        let dim = self.manifest.dim;
        let (windows, offsets) = self.windows(texts)?;
        let mut results: Vec<Option<WindowOut>> = (0..windows.len()).map(|_| None).collect();
        for (idx, seq) in self.plan_batches(&windows) {
            let batch: Vec<&Window> = idx.iter().map(|&i| &windows[i]).collect();
            for (&wi, e) in idx.iter().zip(self.run_batch(&batch, seq)?) {
                results[wi] = Some(e);
            }
        }
        // Gather windows back into texts: pooled is the token-weighted mean of the windows'.
        let mut out: Vec<TextEmbedding> = (0..texts.len())
            .map(|_| TextEmbedding {
                pooled: vec![0.0; dim],
                ..Default::default()
            })
            .collect();
        for (w, r) in windows.iter().zip(results) {
            let r = r.expect("every window ran");
            let o = &mut out[w.text];
            let weight = (w.ids.len() + 2) as f32;
            for (a, b) in o.pooled.iter_mut().zip(&r.pooled) {
                *a += weight * b;
            }
            o.n_tokens += r.rows.len() / dim;
            o.tokens.extend_from_slice(&r.rows);
            o.layer_rows.extend_from_slice(&r.layer_rows);
            o.n_windows += 1;
        }
        for (o, off) in out.iter_mut().zip(offsets) {
            normalize(&mut o.pooled);
            // Windows cover every word piece once, in order, so rows and offsets align.
            debug_assert_eq!(off.len(), o.n_tokens);
            o.offsets = off;
        }
        Ok(out)
    }

    /// Runs one padded batch; returns each window's pooled embedding and normalised
    /// word-piece rows (token and feature layers).
    fn run_batch(&mut self, batch: &[&Window], seq: usize) -> Result<Vec<WindowOut>> {
        let dim = self.manifest.dim;
        let lw = self.feature_layers.len() * dim;
        let raw = self.run_raw(batch, seq, true)?;
        // Drop [CLS] and [SEP]: late interaction and the tagger look at word pieces.
        let inner = |rows: Vec<f32>, width: usize| {
            let mut t = rows[width..rows.len() - width].to_vec();
            for row in t.chunks_mut(dim) {
                normalize(row);
            }
            t
        };
        Ok(raw
            .into_iter()
            .map(|w| WindowOut {
                pooled: w.pooled,
                rows: inner(w.rows, dim),
                layer_rows: if lw == 0 {
                    vec![]
                } else {
                    inner(w.layer_rows, lw)
                },
            })
            .collect())
    }

    /// Runs one padded batch; returns each window's pooled embedding and raw hidden states
    /// of `[CLS] ids [SEP]` (last layer, then the feature layers when `with_layers`).
    fn run_raw(
        &mut self,
        batch: &[&Window],
        seq: usize,
        with_layers: bool,
    ) -> Result<Vec<WindowOut>> {
        let dim = self.manifest.dim;
        let b = batch.len();
        let mut ids = vec![self.pad as i64; b * seq];
        let mut mask = vec![0i64; b * seq];
        for (r, w) in batch.iter().enumerate() {
            let row = &mut ids[r * seq..(r + 1) * seq];
            row[0] = self.cls as i64;
            for (k, &t) in w.ids.iter().enumerate() {
                row[k + 1] = t as i64;
            }
            row[w.ids.len() + 1] = self.sep as i64;
            mask[r * seq..r * seq + w.ids.len() + 2].fill(1);
        }
        let started = std::time::Instant::now();
        let rt = |e: ort::Error| ModelError::Runtime(e.to_string());
        let ids_t =
            ort::value::Tensor::from_array((vec![b as i64, seq as i64], ids)).map_err(rt)?;
        let mask_t =
            ort::value::Tensor::from_array((vec![b as i64, seq as i64], mask)).map_err(rt)?;
        let opts = if with_layers && !self.feature_layers.is_empty() {
            &self.run_layers
        } else {
            &self.run_plain
        };
        let outputs = self
            .session
            .run_with_options(
                ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t],
                opts,
            )
            .map_err(rt)?;
        let (tshape, tokens) = outputs[graph::OUTPUT_TOKENS]
            .try_extract_tensor::<f32>()
            .map_err(rt)?;
        let (pshape, pooled) = outputs[graph::OUTPUT_POOLED]
            .try_extract_tensor::<f32>()
            .map_err(rt)?;
        if tshape.len() != 3 || tshape[2] as usize != dim || pshape[1] as usize != dim {
            return Err(ModelError::Runtime(format!(
                "graph outputs have shapes {tshape:?} and {pshape:?}; the manifest says dim {dim}"
            )));
        }
        let mut layers = Vec::with_capacity(self.feature_layers.len());
        for &l in self.feature_layers.iter().filter(|_| with_layers) {
            let (shape, rows) = outputs[graph::output_hidden(l).as_str()]
                .try_extract_tensor::<f32>()
                .map_err(rt)?;
            if shape[..] != tshape[..] {
                return Err(ModelError::Runtime(format!(
                    "graph output {} has shape {shape:?}, the token embeddings {tshape:?}",
                    graph::output_hidden(l)
                )));
            }
            layers.push(rows);
        }
        let out = batch
            .iter()
            .enumerate()
            .map(|(r, w)| {
                let base = r * seq * dim;
                let n = w.ids.len() + 2;
                let mut layer_rows = Vec::with_capacity(n * layers.len() * dim);
                for t in 0..n {
                    let at = base + t * dim;
                    for rows in &layers {
                        layer_rows.extend_from_slice(&rows[at..at + dim]);
                    }
                }
                WindowOut {
                    pooled: pooled[r * dim..(r + 1) * dim].to_vec(),
                    rows: tokens[base..base + n * dim].to_vec(),
                    layer_rows,
                }
            })
            .collect();
        crate::telemetry::encode_batch(b, b * seq, started.elapsed());
        Ok(out)
    }

    /// Raw last hidden states of `[CLS] text [SEP]` (`rows × dim`, unnormalised), each text
    /// cut to one window. The trainer learns its projection head on these.
    pub fn hidden_states<S: AsRef<str>>(&mut self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        let strs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
        let encs = self
            .tokenizer
            .encode_batch(strs, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let limit = self.manifest.max_seq_len - 2;
        let windows: Vec<Window> = encs
            .iter()
            .enumerate()
            .map(|(i, e)| Window {
                text: i,
                ids: e.get_ids()[..e.len().min(limit)].to_vec(),
            })
            .collect();
        let mut out = vec![Vec::new(); windows.len()];
        for (idx, seq) in self.plan_batches(&windows) {
            let batch: Vec<&Window> = idx.iter().map(|&i| &windows[i]).collect();
            for (&i, w) in idx.iter().zip(self.run_raw(&batch, seq, false)?) {
                out[i] = w.rows;
            }
        }
        Ok(out)
    }
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 1e-12 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

//! Arguments shared by the subcommands: where the model, runtime and data are, and the scorer.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::encoder::{Device, Encoder, EncoderConfig, PrecisionChoice};
use crate::model::{self, ModelDir, ScorerSpec};
use crate::space::cache;

#[derive(Args, Clone)]
pub(crate) struct RuntimeArgs {
    /// Model directory (manifest.json, model.onnx, tokenizer.json).
    #[arg(long, env = "UWE_MODEL", default_value = "models/default")]
    pub(crate) model: PathBuf,
    /// auto, cpu or cuda.
    #[arg(long, env = "UWE_DEVICE", default_value = "auto")]
    pub(crate) device: Device,
    /// auto (int8 on CPU when the model has an int8 graph, as the connector), f32, or int8 (CPU only).
    #[arg(long, env = "UWE_PRECISION", default_value = "auto")]
    pub(crate) precision: PrecisionChoice,
    /// Intra-op threads (0: one per core).
    #[arg(long, env = "UWE_THREADS", default_value_t = 0)]
    pub(crate) threads: usize,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, then .uwe/lib/).
    #[arg(long, env = "UWE_ORT_LIB")]
    pub(crate) ort_lib: Option<PathBuf>,
    /// Directory holding esco/ (the repository's data/).
    #[arg(long, env = "UWE_DATA_DIR", default_value = "data")]
    pub(crate) data_dir: PathBuf,
    /// Cache of target-space embeddings.
    #[arg(long, env = "UWE_CACHE_DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Concept text to embed (label, label_description, label_aliases); default: the manifest's.
    #[arg(long)]
    pub(crate) target_text: Option<String>,
    /// Also match the concepts' alternative labels (as `targets.match_aliases`).
    #[arg(long)]
    pub(crate) match_aliases: bool,
    /// Weight of an alias match, in (0, 1] (as `targets.alias_weight`).
    #[arg(long, default_value_t = crate::connector::config::DEFAULT_ALIAS_WEIGHT)]
    pub(crate) alias_weight: f32,
}

impl RuntimeArgs {
    pub(crate) fn encoder_config(&self) -> EncoderConfig {
        EncoderConfig {
            device: self.device,
            precision: self.precision,
            intra_threads: self.threads,
            onnxruntime: self.ort_lib.clone(),
            ..Default::default()
        }
    }

    pub(crate) fn load_encoder(&self) -> anyhow::Result<Encoder> {
        let mut dir = ModelDir::open(&self.model)
            .with_context(|| format!("opening model directory {}", self.model.display()))?;
        if let Some(t) = &self.target_text {
            dir.manifest.target_text = serde_json::from_value(serde_json::Value::String(t.clone()))
                .with_context(|| {
                    format!("--target-text {t:?}: use label, label_description or label_aliases")
                })?;
        }
        Ok(Encoder::load(&dir, &self.encoder_config())?)
    }

    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(cache::default_cache_dir)
    }

    pub(crate) fn load_space(
        &self,
        spec: &str,
        enc: &mut Encoder,
    ) -> anyhow::Result<cache::EncodedSpace> {
        Ok(cache::load_named(
            spec,
            &self.data_dir,
            enc,
            &self.cache_dir(),
            true,
            self.match_aliases.then_some(self.alias_weight),
        )?)
    }
}

#[derive(Args, Clone, Copy)]
pub(crate) struct ScorerArgs {
    /// Scorer; default: the model manifest's.
    #[arg(long)]
    pub(crate) scorer: Option<ScorerKind>,
    /// Late-interaction temperature τ (default: the manifest's).
    #[arg(long)]
    pub(crate) temperature: Option<f32>,
    /// Pooled candidates reranked by late interaction (0: exhaustive).
    #[arg(long)]
    pub(crate) rerank_top: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum QuantizeKind {
    Int8,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum ScorerKind {
    Pooled,
    Late,
}

impl ScorerArgs {
    pub(crate) fn resolve(&self, manifest: &model::Manifest) -> ScorerSpec {
        let (t0, r0) = match manifest.scorer {
            ScorerSpec::Late {
                temperature,
                rerank_top,
            } => (temperature, rerank_top),
            ScorerSpec::Pooled => (0.05, 100),
        };
        let kind = self.scorer.unwrap_or(match manifest.scorer {
            ScorerSpec::Pooled => ScorerKind::Pooled,
            ScorerSpec::Late { .. } => ScorerKind::Late,
        });
        match kind {
            ScorerKind::Pooled => ScorerSpec::Pooled,
            ScorerKind::Late => ScorerSpec::Late {
                temperature: self.temperature.unwrap_or(t0),
                rerank_top: self.rerank_top.unwrap_or(r0),
            },
        }
    }
}

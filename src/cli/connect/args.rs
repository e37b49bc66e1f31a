//! Arguments shared by the subcommands: where the model, runtime and data are, and the scorer.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::encoder::{Device, Encoder, EncoderConfig, PrecisionChoice};
use crate::model::{self, ModelDir, ScorerSpec};
use crate::rank::{ATTEND_POOLED_WEIGHT, ATTEND_TEMPERATURE, LATE_TEMPERATURE};
use crate::space::cache;

/// `--model`'s default.
pub(crate) const DEFAULT_MODEL_DIR: &str = "models/default";

#[derive(Args, Clone)]
pub(crate) struct RuntimeArgs {
    /// Model directory (manifest.json, model.onnx, tokenizer.json) [default: models/default].
    /// Kept as given (or not): `eval --postings` overrides its pipeline file's model only
    /// with a model named here, the default one included.
    #[arg(long, env = "UWE_MODEL")]
    pub(crate) model: Option<PathBuf>,
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

    /// The model directory: `--model`, else `models/default`.
    pub(crate) fn model(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_DIR))
    }

    pub(crate) fn load_encoder(&self) -> anyhow::Result<Encoder> {
        let model = self.model();
        let mut dir = ModelDir::open(&model)
            .with_context(|| format!("opening model directory {}", model.display()))?;
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
    /// Temperature τ of the late or attend scorer (default: the manifest's).
    #[arg(long)]
    pub(crate) temperature: Option<f32>,
    /// Pooled candidates reranked by the token-level scorer (0: exhaustive).
    #[arg(long)]
    pub(crate) rerank_top: Option<usize>,
    /// Attend scorer: weight of the pooled cosine in its blend (default: the manifest's, else 0.5).
    #[arg(long)]
    pub(crate) pooled_weight: Option<f32>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum QuantizeKind {
    Int8,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(crate) enum ScorerKind {
    Pooled,
    Late,
    Attend,
}

impl ScorerArgs {
    /// The scorer for target space `space`: these arguments over the manifest's scorer for
    /// that space ([`model::Manifest::scorer_for`]).
    pub(crate) fn resolve(&self, manifest: &model::Manifest, space: &str) -> ScorerSpec {
        // Defaults: the manifest's settings for its own scorer kind, else these.
        let (mut tau_late, mut tau_attend, mut weight, mut top) = (
            LATE_TEMPERATURE,
            ATTEND_TEMPERATURE,
            ATTEND_POOLED_WEIGHT,
            100,
        );
        let manifest_kind = match manifest.scorer_for(space) {
            ScorerSpec::Pooled => ScorerKind::Pooled,
            ScorerSpec::Late {
                temperature,
                rerank_top,
            } => {
                (tau_late, top) = (temperature, rerank_top);
                ScorerKind::Late
            }
            ScorerSpec::Attend {
                temperature,
                pooled_weight,
                rerank_top,
            } => {
                (tau_attend, weight, top) = (temperature, pooled_weight, rerank_top);
                ScorerKind::Attend
            }
        };
        let rerank_top = self.rerank_top.unwrap_or(top);
        match self.scorer.unwrap_or(manifest_kind) {
            ScorerKind::Pooled => ScorerSpec::Pooled,
            ScorerKind::Late => ScorerSpec::Late {
                temperature: self.temperature.unwrap_or(tau_late),
                rerank_top,
            },
            ScorerKind::Attend => ScorerSpec::Attend {
                temperature: self.temperature.unwrap_or(tau_attend),
                pooled_weight: self.pooled_weight.unwrap_or(weight),
                rerank_top,
            },
        }
    }
}

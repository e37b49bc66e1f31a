//! `uwe-trainer serve`'s configuration: one TOML file (`deploy/trainer.toml`), then
//! `UWE_TRAINER__<SECTION>__<KEY>` environment overrides; unknown keys are errors and every
//! invalid value is named by its key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::connector::config::{env_overrides, parse_layered, CodecSection, ConfigError};

/// Prefix of the environment overrides.
pub const ENV_PREFIX: &str = "UWE_TRAINER__";

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// `[service]`: where models and data are.
    #[serde(default)]
    pub service: ServiceSection,
    /// `[kafka]`.
    pub kafka: TrainerKafka,
    /// `[codec]`: the feedback topic's wire format (reader schema default
    /// `schemas/avro/feedback.avsc`).
    #[serde(default)]
    pub codec: CodecSection,
    /// `[feedback]`.
    #[serde(default)]
    pub feedback: FeedbackSection,
    /// `[trigger]`.
    #[serde(default)]
    pub trigger: TriggerSection,
    /// `[training]`.
    #[serde(default)]
    pub training: TrainingSection,
    /// `[gate]`.
    #[serde(default)]
    pub gate: GateSection,
    /// `[http]`.
    #[serde(default)]
    pub http: TrainerHttp,
}

/// `[service]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSection {
    /// Model registry: versions, `current`, the feedback log and run state.
    pub registry: PathBuf,
    /// Model to start from while the registry has no `current`.
    pub initial_model: PathBuf,
    /// The base model directory (the graph's frozen layers).
    pub base: PathBuf,
    /// The base weights (`model.safetensors`, `config.json`) from `scripts/setup`.
    pub base_files: PathBuf,
    /// Data directory: ESCO, dev tasks, training sources.
    pub data_dir: PathBuf,
    /// Encoder and training threads (0: all cores).
    pub threads: usize,
}

impl Default for ServiceSection {
    fn default() -> Self {
        ServiceSection {
            registry: "registry".into(),
            initial_model: "models/default".into(),
            base: "models/base".into(),
            base_files: ".uwe/base".into(),
            data_dir: "data".into(),
            threads: 0,
        }
    }
}

/// `[kafka]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainerKafka {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group of the feedback topic.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Analysts' feedback.
    #[serde(default = "default_feedback_topic")]
    pub feedback_topic: String,
    /// Where bad feedback events go, with `uwe.error.*` headers.
    #[serde(default = "default_dlq")]
    pub dead_letter_topic: String,
    /// Published models are announced here; `{"request": "retrain"}` on it starts a run.
    #[serde(default = "default_control")]
    pub control_topic: String,
    /// librdkafka options for every client (SASL/SSL included).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_group() -> String {
    "uwe-trainer".into()
}
fn default_feedback_topic() -> String {
    "uwe.feedback".into()
}
fn default_dlq() -> String {
    "uwe.feedback.dlq".into()
}
fn default_control() -> String {
    "uwe.models".into()
}

/// `[feedback]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackSection {
    /// Target spaces feedback may name (`esco-skills`, `esco-occupations`, or space files);
    /// an event naming another is dead-lettered.
    pub targets: Vec<String>,
}

impl Default for FeedbackSection {
    fn default() -> Self {
        FeedbackSection {
            targets: vec!["esco-skills".into(), "esco-occupations".into()],
        }
    }
}

/// `[trigger]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerSection {
    /// Retrain once this many new events are stored.
    pub min_new_feedback: usize,
    /// Retrain when new events have waited this many seconds.
    pub max_interval_s: u64,
}

impl Default for TriggerSection {
    fn default() -> Self {
        TriggerSection {
            min_new_feedback: 200,
            max_interval_s: 86_400,
        }
    }
}

/// `[training]`: the recipe of a feedback run. It starts from the serving model's trained
/// layers, so it is short, with a lower rate than a run from the base.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    /// Top transformer layers trained (the shipped model trains 3).
    pub layers: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs per batch.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Times each feedback pair is drawn per epoch.
    pub feedback_repeat: usize,
    /// Pairs of the base training data replayed beside the feedback, so the model does not
    /// forget what it knew (an even sample across sources).
    pub replay_pairs: usize,
    /// Steps between checkpoints (what a killed run resumes from).
    pub checkpoint_every: usize,
    /// Soft late-interaction temperature.
    pub late_temperature: f32,
    /// InfoNCE temperature.
    pub nce_temperature: f32,
    /// Longest text a training step sees, in word pieces (longer ones keep their start):
    /// bounds the memory of a step, which grows with the batch's longest text.
    pub max_text_tokens: usize,
    /// Anchor texts per step (0: off): job titles and occupation names of the replayed
    /// pairs, held at the pooled embeddings the serving model gives them while feedback on
    /// skills moves the shared layers ([`crate::train::Anchor`]). Off by default until a
    /// feedback run has measured it (`uwe-trainer train --anchor-texts` halved the
    /// job-normalisation loss of a skill fine-tune).
    pub anchor_texts: usize,
    /// Weight of the anchor term beside the InfoNCE.
    pub anchor_weight: f32,
}

impl Default for TrainingSection {
    fn default() -> Self {
        TrainingSection {
            layers: 3,
            steps: 300,
            batch: 64,
            lr: 5e-5,
            warmup: 20,
            feedback_repeat: 4,
            replay_pairs: 20_000,
            checkpoint_every: 50,
            late_temperature: 0.05,
            nce_temperature: 0.05,
            max_text_tokens: 128,
            anchor_texts: 0,
            anchor_weight: 10.0,
        }
    }
}

/// `[gate]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GateSection {
    /// Required MAP gain on every dev task (points; negative tolerates a loss).
    pub margin: f64,
    /// Dev tasks of the gate by name (empty: all of `uwe-trainer train`'s).
    pub tasks: Vec<String>,
}

impl Default for GateSection {
    fn default() -> Self {
        GateSection {
            margin: 0.0,
            tasks: vec![],
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerHttp {
    /// Listen address of `/metrics`, `/health`, `/ready`; empty turns it off.
    pub listen: String,
}

impl Default for TrainerHttp {
    fn default() -> Self {
        TrainerHttp {
            listen: "0.0.0.0:9465".into(),
        }
    }
}

impl ServiceConfig {
    /// Reads `path`, applies `UWE_TRAINER__*` overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |msg: String| ConfigError {
            path: path.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&text, &env_overrides(ENV_PREFIX)).map_err(err)
    }

    /// Parses TOML text with overrides, then validates.
    pub fn parse(text: &str, overrides: &[(String, String)]) -> Result<Self, String> {
        let cfg: ServiceConfig = parse_layered(text, overrides, ENV_PREFIX)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every invalid value, each named by its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            errs.push("`kafka.brokers` is empty: give host:port of a broker".to_string());
        }
        for (key, v) in [
            ("group_id", &k.group_id),
            ("feedback_topic", &k.feedback_topic),
            ("dead_letter_topic", &k.dead_letter_topic),
            ("control_topic", &k.control_topic),
        ] {
            if v.trim().is_empty() {
                errs.push(format!("`kafka.{key}` is empty"));
            }
        }
        if k.dead_letter_topic == k.feedback_topic || k.control_topic == k.feedback_topic {
            errs.push("`kafka.feedback_topic` must differ from `kafka.dead_letter_topic` and `kafka.control_topic`".into());
        }
        if self.feedback.targets.is_empty() {
            errs.push("`feedback.targets` is empty: no feedback could be accepted".into());
        }
        if self.trigger.min_new_feedback == 0 {
            errs.push("`trigger.min_new_feedback` must be at least 1".into());
        }
        if self.trigger.max_interval_s == 0 {
            errs.push("`trigger.max_interval_s` must be at least 1".into());
        }
        let t = &self.training;
        if !(1..=6).contains(&t.layers) {
            errs.push(format!(
                "`training.layers` = {}: train 1 to 6 of MiniLM's layers",
                t.layers
            ));
        }
        if t.steps == 0 {
            errs.push("`training.steps` must be at least 1".into());
        }
        if t.batch < 2 {
            errs.push("`training.batch` must be at least 2 (in-batch negatives)".into());
        }
        if !(t.lr > 0.0 && t.lr < 1.0) {
            errs.push(format!("`training.lr` = {}: give a rate in (0, 1)", t.lr));
        }
        if t.max_text_tokens < 8 {
            errs.push(format!(
                "`training.max_text_tokens` = {}: give at least 8 word pieces",
                t.max_text_tokens
            ));
        }
        if let Err(e) = crate::train::Anchor::from_settings(t.anchor_texts, t.anchor_weight, false)
        {
            errs.push(format!(
                "`training.anchor_weight` = {}: {e}",
                t.anchor_weight
            ));
        }
        if t.feedback_repeat == 0 {
            errs.push("`training.feedback_repeat` must be at least 1".into());
        }
        if t.checkpoint_every == 0 {
            errs.push("`training.checkpoint_every` must be at least 1".into());
        }
        if t.late_temperature <= 0.0 || t.nce_temperature <= 0.0 {
            errs.push(
                "`training.late_temperature` and `training.nce_temperature` must be positive"
                    .into(),
            );
        }
        let known: Vec<String> = crate::train::default_dev_tasks(Path::new("."))
            .into_iter()
            .map(|t| t.name)
            .collect();
        for name in &self.gate.tasks {
            if !known.contains(name) {
                errs.push(format!(
                    "`gate.tasks`: {name:?} is not a dev task; use some of {known:?}"
                ));
            }
        }
        if !self.gate.margin.is_finite() {
            errs.push("`gate.margin` must be a number of MAP points".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[kafka]\nbrokers = \"localhost:9092\"\n";

    #[test]
    fn defaults_overrides_and_named_errors() {
        let c = ServiceConfig::parse(MIN, &[]).unwrap();
        assert_eq!(c.kafka.feedback_topic, "uwe.feedback");
        assert_eq!(c.trigger.min_new_feedback, 200);
        let c = ServiceConfig::parse(
            MIN,
            &[("UWE_TRAINER__TRIGGER__MIN_NEW_FEEDBACK".into(), "5".into())],
        )
        .unwrap();
        assert_eq!(c.trigger.min_new_feedback, 5);
        let e = ServiceConfig::parse(&format!("{MIN}[trigger]\nmin_new = 3\n"), &[]).unwrap_err();
        assert!(e.contains("min_new"), "{e}");
        let bad = format!("{MIN}[training]\nlayers = 9\nbatch = 1\nanchor_texts = 64\nanchor_weight = -1.0\n[gate]\ntasks = [\"nope\"]\n");
        let e = ServiceConfig::parse(&bad, &[]).unwrap_err();
        for key in [
            "`training.layers`",
            "`training.batch`",
            "`training.anchor_weight`",
            "`gate.tasks`",
        ] {
            assert!(e.contains(key), "{key} in {e}");
        }
    }

    #[test]
    fn the_shipped_file_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/trainer.toml");
        ServiceConfig::load(&p).unwrap();
    }
}

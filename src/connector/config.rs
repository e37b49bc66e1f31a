//! Pipeline definitions: one TOML file per pipeline in `connectors/`.
//!
//! Layers, lowest first: defaults, the file, then environment variables
//! `UWE__<SECTION>__<KEY>=value` (for example `UWE__KAFKA__BROKERS=kafka:9092`); values are
//! read as TOML when they parse as such, else as strings. Unknown keys are errors, and
//! [`PipelineConfig::validate`] names the key of every invalid value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::encoder::EncoderConfig;

/// A configuration error; the message names the file and key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub msg: String,
}

/// What a pipeline reads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// A job vacancy (`schemas/vacancy.*`).
    Vacancy,
    /// A CV (`schemas/cv.*`).
    Cv,
}

impl EventType {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Vacancy => "vacancy",
            EventType::Cv => "cv",
        }
    }
}

/// Delivery guarantee.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Offsets are stored only after every output record for them is acknowledged.
    #[default]
    AtLeastOnce,
    /// Output records and offsets commit together in Kafka transactions.
    ExactlyOnce,
}

/// Wire format of input events.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// UTF-8 JSON.
    #[default]
    Json,
    /// Avro in the Confluent wire format (magic 0, 4-byte schema id, body).
    Avro,
}

/// `[pipeline]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Name used in metrics, logs and dead-letter headers.
    pub name: String,
    /// Event type of the input topics.
    pub event_type: EventType,
}

/// `[kafka]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// Input topics.
    pub input_topics: Vec<String>,
    /// Output topic of enriched records.
    pub output_topic: String,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Delivery guarantee.
    #[serde(default)]
    pub delivery: Delivery,
    /// Transactional id prefix (exactly-once); the default is `uwe-<pipeline>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Static group membership (`group.instance.id`): give each instance a stable id so a
    /// restart keeps its partitions without a rebalance.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// librdkafka options passed through to consumer and producer (SASL/SSL included).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// librdkafka options for the consumer only.
    #[serde(default)]
    pub consumer_options: BTreeMap<String, String>,
    /// librdkafka options for the producer only.
    #[serde(default)]
    pub producer_options: BTreeMap<String, String>,
}

/// `[codec]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CodecSection {
    /// Wire format.
    pub format: Format,
    /// Folder of writer schemas named `<id>-<anything>.avsc` (Avro).
    pub schema_dir: Option<PathBuf>,
    /// Confluent-compatible schema registry URL (Avro), tried after `schema_dir`.
    pub registry_url: Option<String>,
    /// Reader schema (Avro); the default is the event type's schema in `schemas/`.
    pub reader_schema: Option<PathBuf>,
    /// Events larger than this are dead-lettered.
    pub max_event_bytes: usize,
}

impl Default for CodecSection {
    fn default() -> Self {
        CodecSection {
            format: Format::Json,
            schema_dir: None,
            registry_url: None,
            reader_schema: None,
            max_event_bytes: 1 << 20,
        }
    }
}

/// How a target turns an event's texts into queries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each text is one query, ranked on its own (a title → occupations, per experience).
    Whole,
    /// Texts are split into sentences; each concept keeps its best sentence as evidence and
    /// the event gets the overall top k.
    Sentences,
    /// Sentences are tagged for skill and knowledge mentions by the model's mention tagger;
    /// each mention gets its top concept when that clears the calibrated threshold, a line
    /// with no mention gets none, and each concept is listed once with its best mention as
    /// evidence. Listed items (a CV's `skills`) are one mention each.
    Mentions,
}

/// `[[targets]]`: one target space to rank against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// Name of the label group in the output record.
    pub name: String,
    /// `esco-skills`, `esco-occupations`, or a JSONL space file.
    pub space: String,
    /// Event fields whose texts are ranked (see `schemas/`): for a vacancy `title`,
    /// `description`; for a CV `headline`, `summary`, `experience_title`,
    /// `experience_description`, `skills`.
    pub fields: Vec<String>,
    /// Whole texts or sentences.
    pub mode: Mode,
    /// Labels kept (per text in `whole` mode, per event in `sentences` and `mentions` mode).
    pub k: usize,
    /// `mentions` mode: most mentions ranked per event (the most confident are kept), so a
    /// description of thousands of lines costs a bounded amount of ranking.
    #[serde(default = "default_max_mentions")]
    pub max_mentions: usize,
    /// Labels scoring below this are dropped.
    #[serde(default)]
    pub min_score: f32,
    /// Also match each concept's alternative labels, each embedded on its own; a concept
    /// scores `max(label, alias_weight × best alias)`. Pays off for job titles (+3.7 to
    /// +4.6 MAP on the job-normalisation dev set); for skills it helped one dev set and cost
    /// the other.
    #[serde(default)]
    pub match_aliases: bool,
    /// Weight of an alias match against a preferred-label match, in (0, 1].
    #[serde(default = "default_alias_weight")]
    pub alias_weight: f32,
}

impl TargetSection {
    /// The alias weight when aliases are matched.
    pub fn alias_weight(&self) -> Option<f32> {
        self.match_aliases.then_some(self.alias_weight)
    }
}

/// Default of `targets.alias_weight`: the best of 0.8, 0.9, 0.95 and 1 on the
/// job-normalisation dev set, for the base and the default model alike.
pub const DEFAULT_ALIAS_WEIGHT: f32 = 0.9;

/// Default of `targets.max_mentions`.
pub const DEFAULT_MAX_MENTIONS: usize = 200;

fn default_max_mentions() -> usize {
    DEFAULT_MAX_MENTIONS
}

fn default_alias_weight() -> f32 {
    DEFAULT_ALIAS_WEIGHT
}

/// `[batching]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingSection {
    /// Estimated word pieces that close a batch.
    pub max_batch_tokens: usize,
    /// Longest a text waits for its batch to fill, in milliseconds.
    pub max_wait_ms: u64,
    /// Events accepted but not yet acknowledged; partitions pause when reached.
    pub max_in_flight: usize,
}

impl Default for BatchingSection {
    fn default() -> Self {
        BatchingSection {
            max_batch_tokens: 16384,
            max_wait_ms: 25,
            max_in_flight: 1000,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Model directory served at start.
    pub dir: PathBuf,
    /// Directory holding `esco/`.
    pub data_dir: PathBuf,
    /// Cache of target-space embeddings (default: `~/.cache/uwe-connect`).
    pub cache_dir: Option<PathBuf>,
    /// Model registry folder to follow (`<registry>/current`); models are hot-swapped.
    pub registry: Option<PathBuf>,
    /// Serve this registry version and never swap.
    pub pin: Option<String>,
    /// How often the registry is checked, in milliseconds.
    pub watch_interval_ms: u64,
    /// Control topic whose announcements trigger an immediate check.
    pub control_topic: Option<String>,
    /// Share of live events kept (the newest 200) to shadow-score a new model before it
    /// serves; 0 turns shadow scoring off.
    pub shadow_share: f64,
    /// A new model whose mean top-k overlap with the serving model on the shadow events is
    /// below this is refused (0: report only).
    pub min_shadow_overlap: f64,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            dir: PathBuf::from("models/default"),
            data_dir: PathBuf::from("data"),
            cache_dir: None,
            registry: None,
            pin: None,
            watch_interval_ms: 5000,
            control_topic: None,
            shadow_share: 0.05,
            min_shadow_overlap: 0.0,
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Listen address of `/metrics`, `/health` and `/ready`; empty turns it off.
    pub listen: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "0.0.0.0:9464".into(),
        }
    }
}

/// A whole pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// `[pipeline]`.
    pub pipeline: PipelineSection,
    /// `[kafka]`.
    pub kafka: KafkaSection,
    /// `[codec]`.
    #[serde(default)]
    pub codec: CodecSection,
    /// `[[targets]]`.
    pub targets: Vec<TargetSection>,
    /// `[batching]`.
    #[serde(default)]
    pub batching: BatchingSection,
    /// `[model]`.
    #[serde(default)]
    pub model: ModelSection,
    /// `[encoder]`.
    #[serde(default)]
    pub encoder: EncoderConfig,
    /// `[http]`.
    #[serde(default)]
    pub http: HttpSection,
}

/// Fields each event type offers to `targets.fields`.
pub fn known_fields(t: EventType) -> &'static [&'static str] {
    match t {
        EventType::Vacancy => &["title", "description"],
        EventType::Cv => &[
            "headline",
            "summary",
            "experience_title",
            "experience_description",
            "skills",
        ],
    }
}

impl PipelineConfig {
    /// Reads `path`, applies `UWE__*` environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |msg: String| ConfigError {
            path: path.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let vars: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("UWE__"))
            .collect();
        Self::parse(&text, &vars).map_err(err)
    }

    /// Parses TOML text with overrides `(UWE__SECTION__KEY, value)`.
    pub fn parse(text: &str, overrides: &[(String, String)]) -> Result<Self, String> {
        let cfg: PipelineConfig = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| e.to_string())?
        } else {
            let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
            for (k, v) in overrides {
                let path: Vec<String> = k["UWE__".len()..]
                    .split("__")
                    .map(|s| s.to_lowercase())
                    .collect();
                let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or_else(|| toml::Value::String(v.clone()));
                let mut cur = &mut table;
                for (i, seg) in path.iter().enumerate() {
                    if i + 1 == path.len() {
                        cur.insert(seg.clone(), value.clone());
                    } else {
                        let next = cur
                            .entry(seg.clone())
                            .or_insert_with(|| toml::Value::Table(Default::default()));
                        cur = next
                            .as_table_mut()
                            .ok_or_else(|| format!("environment {k}: `{seg}` is not a table"))?;
                    }
                }
            }
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| format!("after environment overrides: {e}"))?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that types cannot; each message names its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        let nonempty = |v: &str, key: &str, errs: &mut Vec<String>| {
            if v.trim().is_empty() {
                errs.push(format!("`{key}` must not be empty"));
            }
        };
        nonempty(&self.pipeline.name, "pipeline.name", &mut errs);
        if self.encoder.device == crate::encoder::Device::Cuda
            && self.encoder.precision == crate::encoder::PrecisionChoice::Int8
        {
            errs.push(
                "`encoder.precision` = \"int8\" runs on CPU only, but `encoder.device` = \"cuda\": use precision \"f32\" or \"auto\" on CUDA".into(),
            );
        }
        nonempty(&self.kafka.brokers, "kafka.brokers", &mut errs);
        nonempty(&self.kafka.group_id, "kafka.group_id", &mut errs);
        if let Some(id) = &self.kafka.group_instance_id {
            nonempty(id, "kafka.group_instance_id", &mut errs);
        }
        nonempty(&self.kafka.output_topic, "kafka.output_topic", &mut errs);
        nonempty(
            &self.kafka.dead_letter_topic,
            "kafka.dead_letter_topic",
            &mut errs,
        );
        if self.kafka.input_topics.is_empty()
            || self.kafka.input_topics.iter().any(|t| t.trim().is_empty())
        {
            errs.push("`kafka.input_topics` must list at least one non-empty topic".into());
        }
        for t in &self.kafka.input_topics {
            if t == &self.kafka.output_topic || t == &self.kafka.dead_letter_topic {
                errs.push(format!(
                    "`kafka.input_topics` contains {t:?}, which is also the output or dead-letter topic: the pipeline would consume its own output"
                ));
            }
        }
        for key in self
            .kafka
            .options
            .keys()
            .chain(self.kafka.consumer_options.keys())
        {
            if matches!(
                key.as_str(),
                "enable.auto.commit"
                    | "enable.auto.offset.store"
                    | "group.id"
                    | "bootstrap.servers"
            ) {
                errs.push(format!(
                    "`kafka.options.\"{key}\"` is managed by uwe-connect (it guarantees delivery); remove it"
                ));
            }
        }
        if self.codec.format == Format::Avro
            && self.codec.schema_dir.is_none()
            && self.codec.registry_url.is_none()
        {
            errs.push("`codec.format = \"avro\"` needs `codec.schema_dir` or `codec.registry_url` to find writer schemas".into());
        }
        if self.codec.max_event_bytes == 0 {
            errs.push("`codec.max_event_bytes` must be > 0".into());
        }
        for (v, key) in [
            (self.model.shadow_share, "model.shadow_share"),
            (self.model.min_shadow_overlap, "model.min_shadow_overlap"),
        ] {
            if !(0.0..=1.0).contains(&v) {
                errs.push(format!("`{key}` must be between 0 and 1, got {v}"));
            }
        }
        if self.targets.is_empty() {
            errs.push("`targets` must define at least one [[targets]] table".into());
        }
        let fields = known_fields(self.pipeline.event_type);
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if !names.insert(&t.name) {
                errs.push(format!("`targets[{i}].name` {:?} is used twice", t.name));
            }
            if t.k == 0 {
                errs.push(format!("`targets[{i}].k` must be > 0"));
            }
            if t.max_mentions == 0 {
                errs.push(format!("`targets[{i}].max_mentions` must be > 0"));
            }
            if !(-1.0..=1.0).contains(&t.min_score) {
                errs.push(format!("`targets[{i}].min_score` must be between -1 and 1"));
            }
            if !(t.alias_weight > 0.0 && t.alias_weight <= 1.0) {
                errs.push(format!(
                    "`targets[{i}].alias_weight` must be in (0, 1], got {}",
                    t.alias_weight
                ));
            }
            if t.fields.is_empty() {
                errs.push(format!("`targets[{i}].fields` must not be empty"));
            }
            for f in &t.fields {
                if !fields.contains(&f.as_str()) {
                    errs.push(format!(
                        "`targets[{i}].fields` has {f:?}, which a {} event does not have; use one of {fields:?}",
                        self.pipeline.event_type.as_str()
                    ));
                }
            }
        }
        if self.batching.max_batch_tokens < 16 {
            errs.push("`batching.max_batch_tokens` must be at least 16".into());
        }
        if self.model.pin.is_some() && self.model.registry.is_none() {
            errs.push("`model.pin` needs `model.registry`".into());
        }
        if self.model.registry.is_some() && self.model.watch_interval_ms < 100 {
            errs.push("`model.watch_interval_ms` must be at least 100".into());
        }
        if self.batching.max_in_flight == 0 {
            errs.push("`batching.max_in_flight` must be > 0".into());
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

    const MIN: &str = r#"
[pipeline]
name = "v"
event_type = "vacancy"
[kafka]
brokers = "localhost:9092"
group_id = "g"
input_topics = ["in"]
output_topic = "out"
dead_letter_topic = "dlq"
[[targets]]
name = "occupations"
space = "esco-occupations"
fields = ["title"]
mode = "whole"
k = 3
"#;

    #[test]
    fn parses_minimal_with_defaults() {
        let c = PipelineConfig::parse(MIN, &[]).unwrap();
        assert_eq!(c.kafka.delivery, Delivery::AtLeastOnce);
        assert_eq!(c.batching.max_in_flight, 1000);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = PipelineConfig::parse(&MIN.replace("k = 3", "k = 3\nkk = 1"), &[]).unwrap_err();
        assert!(e.contains("kk"), "{e}");
    }

    #[test]
    fn precision_defaults_to_f32_and_int8_is_refused_on_cuda() {
        use crate::encoder::PrecisionChoice;
        let c = PipelineConfig::parse(MIN, &[]).unwrap();
        assert_eq!(c.encoder.precision, PrecisionChoice::F32);
        let env = |v: &str| ("UWE__ENCODER__PRECISION".to_string(), v.to_string());
        let c = PipelineConfig::parse(MIN, &[env("\"int8\"")]).unwrap();
        assert_eq!(c.encoder.precision, PrecisionChoice::Int8);
        let cuda = format!("{MIN}[encoder]\ndevice = \"cuda\"\nprecision = \"int8\"\n");
        let e = PipelineConfig::parse(&cuda, &[]).unwrap_err();
        assert!(e.contains("`encoder.precision`"), "{e}");
        let e = PipelineConfig::parse(&format!("{MIN}[encoder]\nprecision = \"fp16\"\n"), &[])
            .unwrap_err();
        assert!(e.contains("precision") || e.contains("fp16"), "{e}");
    }

    #[test]
    fn shadow_settings_are_ratios() {
        let bad = format!("{MIN}[model]\nshadow_share = 1.5\nmin_shadow_overlap = -0.1\n");
        let e = PipelineConfig::parse(&bad, &[]).unwrap_err();
        assert!(e.contains("`model.shadow_share`"), "{e}");
        assert!(e.contains("`model.min_shadow_overlap`"), "{e}");
    }

    #[test]
    fn invalid_values_name_their_keys() {
        let bad = MIN
            .replace("fields = [\"title\"]", "fields = [\"summary\"]")
            .replace("k = 3", "k = 0");
        let e = PipelineConfig::parse(&bad, &[]).unwrap_err();
        assert!(
            e.contains("targets[0].fields") && e.contains("targets[0].k"),
            "{e}"
        );
        let e = PipelineConfig::parse(
            &MIN.replace("output_topic = \"out\"", "output_topic = \"in\""),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("kafka.input_topics"), "{e}");
    }

    #[test]
    fn alias_matching_is_off_by_default_and_its_weight_checked() {
        let c = PipelineConfig::parse(MIN, &[]).unwrap();
        assert_eq!(c.targets[0].alias_weight(), None);
        let on = MIN.replace("k = 3", "k = 3\nmatch_aliases = true");
        let c = PipelineConfig::parse(&on, &[]).unwrap();
        assert_eq!(c.targets[0].alias_weight(), Some(DEFAULT_ALIAS_WEIGHT));
        let e = PipelineConfig::parse(&format!("{on}\nalias_weight = 1.5\n"), &[]).unwrap_err();
        assert!(e.contains("`targets[0].alias_weight`"), "{e}");
    }

    #[test]
    fn static_membership_reaches_the_consumer_and_an_empty_id_is_refused() {
        let c = PipelineConfig::parse(
            MIN,
            &[("UWE__KAFKA__GROUP_INSTANCE_ID".into(), "\"vac-1\"".into())],
        )
        .unwrap();
        let cc = crate::connector::kafka::consumer_config(&c);
        assert_eq!(cc.get("group.instance.id"), Some("vac-1"));
        let plain = PipelineConfig::parse(MIN, &[]).unwrap();
        assert_eq!(
            crate::connector::kafka::consumer_config(&plain).get("group.instance.id"),
            None
        );
        let e = PipelineConfig::parse(
            MIN,
            &[("UWE__KAFKA__GROUP_INSTANCE_ID".into(), "\" \"".into())],
        )
        .unwrap_err();
        assert!(e.contains("kafka.group_instance_id"), "{e}");
    }

    #[test]
    fn environment_overrides_win() {
        let c = PipelineConfig::parse(
            MIN,
            &[
                ("UWE__KAFKA__BROKERS".into(), "kafka:29092".into()),
                ("UWE__BATCHING__MAX_WAIT_MS".into(), "5".into()),
                (
                    "UWE__KAFKA__OPTIONS__security.protocol".into(),
                    "SASL_SSL".into(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "kafka:29092");
        assert_eq!(c.batching.max_wait_ms, 5);
        assert_eq!(c.kafka.options["security.protocol"], "SASL_SSL");
        let e = PipelineConfig::parse(
            MIN,
            &[("UWE__BATCHING__MAX_WAIT_MS".into(), "\"soon\"".into())],
        )
        .unwrap_err();
        assert!(e.contains("max_wait_ms"), "{e}");
    }
}

//! The sections of a pipeline file, each with its defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

//! Pipeline definitions: one TOML file per pipeline in `connectors/`.
//!
//! Layers, lowest first: defaults, the file, then environment variables
//! `UWE__<SECTION>__<KEY>=value` (for example `UWE__KAFKA__BROKERS=kafka:9092`); values are
//! read as TOML when they parse as such, else as strings. Unknown keys are errors, and
//! [`PipelineConfig::validate`] names the key of every invalid value.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::encoder::EncoderConfig;

mod sections;
mod validate;

pub use sections::*;

/// A configuration error; the message names the file and key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub msg: String,
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
        Self::parse(&text, &env_overrides("UWE__")).map_err(err)
    }

    /// Parses TOML text with overrides `(UWE__SECTION__KEY, value)`.
    pub fn parse(text: &str, overrides: &[(String, String)]) -> Result<Self, String> {
        let cfg: PipelineConfig = parse_layered(text, overrides, "UWE__")?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Parses TOML text into `T`, then applies overrides `(<PREFIX>SECTION__KEY, value)` (the
/// values read as TOML when they parse as such, else as strings). Both binaries' files are
/// layered this way (`UWE__` for pipelines, `UWE_TRAINER__` for the trainer service).
pub fn parse_layered<T: serde::de::DeserializeOwned>(
    text: &str,
    overrides: &[(String, String)],
    prefix: &str,
) -> Result<T, String> {
    if overrides.is_empty() {
        return toml::from_str(text).map_err(|e| e.to_string());
    }
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    for (k, v) in overrides {
        let path: Vec<String> = k
            .strip_prefix(prefix)
            .unwrap_or(k)
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
        .map_err(|e: toml::de::Error| format!("after environment overrides: {e}"))
}

/// The environment variables that start with `prefix`, as `(name, value)`.
pub fn env_overrides(prefix: &str) -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect()
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
    fn precision_defaults_to_auto_and_int8_is_refused_on_cuda() {
        use crate::encoder::PrecisionChoice;
        let c = PipelineConfig::parse(MIN, &[]).unwrap();
        assert_eq!(c.encoder.precision, PrecisionChoice::Auto);
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

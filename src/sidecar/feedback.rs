//! One analyst's verdict on one label, and how verdicts become training pairs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::connector::codec::DecodeError;
use crate::error::ModelError;
use crate::space::TargetSpace;
use crate::train::data::Pair;

/// Longest feedback text kept (characters); a longer one is dead-lettered, since a verdict
/// is about a sentence, a title or a span, never a whole document.
pub const MAX_TEXT_CHARS: usize = 20_000;

/// What the analyst said about the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The connector's label is right: a positive.
    Confirm,
    /// The connector's label is wrong for this text: a hard negative.
    Reject,
    /// A label the connector missed: a positive.
    Add,
}

impl Verdict {
    /// The name events and metric labels use.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Confirm => "confirm",
            Verdict::Reject => "reject",
            Verdict::Add => "add",
        }
    }
}

/// The enriched record a verdict is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// A feedback event (`schemas/json/feedback.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The text the label is for.
    pub text: String,
    /// Concept id in the target space.
    pub label_id: String,
    /// The analyst's verdict.
    pub verdict: Verdict,
    /// Target space name.
    pub target: String,
    /// The enriched record it is about.
    #[serde(default)]
    pub source: Option<SourceRecord>,
    /// Who said so.
    #[serde(default)]
    pub analyst: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// The target spaces feedback may name, loaded once each: concept id → preferred label.
pub struct Spaces {
    allowed: Vec<String>,
    data_dir: std::path::PathBuf,
    loaded: HashMap<String, HashMap<String, String>>,
}

impl Spaces {
    /// Spaces named in `allowed` (the config's `feedback.targets`), read from `data_dir`.
    pub fn new(allowed: Vec<String>, data_dir: &Path) -> Self {
        Spaces {
            allowed,
            data_dir: data_dir.to_path_buf(),
            loaded: HashMap::new(),
        }
    }

    /// The labels of space `name` by id; an error when it is not allowed or cannot be read.
    pub fn labels(&mut self, name: &str) -> Result<&HashMap<String, String>, ModelError> {
        if !self.allowed.iter().any(|a| a == name) {
            return Err(ModelError::Invalid(format!(
                "target {name:?} is not one of feedback.targets {:?}",
                self.allowed
            )));
        }
        if !self.loaded.contains_key(name) {
            let s = TargetSpace::resolve(name, &self.data_dir)?;
            let by_id = s.concepts.into_iter().map(|c| (c.id, c.label)).collect();
            self.loaded.insert(name.to_string(), by_id);
        }
        Ok(&self.loaded[name])
    }
}

impl Feedback {
    /// Reads and validates a decoded event: required fields, a non-empty text of bounded
    /// length, an allowed target, a label id that is a concept of it, an RFC 3339 time.
    /// Every failure is bad data with a reason for the dead-letter headers.
    pub fn from_value(v: serde_json::Value, spaces: &mut Spaces) -> Result<Self, DecodeError> {
        let fb: Feedback = serde_json::from_value(v)
            .map_err(|e| DecodeError::bad("schema", format!("not a valid feedback event: {e}")))?;
        if fb.text.trim().is_empty() {
            return Err(DecodeError::bad("empty_text", "`text` is empty"));
        }
        let n = fb.text.chars().count();
        if n > MAX_TEXT_CHARS {
            return Err(DecodeError::bad(
                "too_long",
                format!("`text` has {n} characters; feedback is about a sentence, a title or a span (at most {MAX_TEXT_CHARS})"),
            ));
        }
        if time::OffsetDateTime::parse(&fb.at, &time::format_description::well_known::Rfc3339)
            .is_err()
        {
            return Err(DecodeError::bad(
                "schema",
                format!("`at` = {:?} is not an RFC 3339 time", fb.at),
            ));
        }
        let labels = spaces
            .labels(&fb.target)
            .map_err(|e| DecodeError::bad("unknown_target", e.to_string()))?;
        if !labels.contains_key(&fb.label_id) {
            return Err(DecodeError::bad(
                "unknown_label",
                format!(
                    "label_id {:?} is not a concept of {}",
                    fb.label_id, fb.target
                ),
            ));
        }
        Ok(fb)
    }
}

/// Training pairs from stored feedback: confirmed and added labels are positives, rejected
/// ones hard negatives (`source` `feedback`). For one (text, target, label) only the latest
/// verdict counts, so an analyst can take a verdict back.
pub fn training_pairs(
    items: &[Feedback],
    spaces: &mut Spaces,
) -> Result<(Vec<Pair>, Vec<Pair>), ModelError> {
    let mut latest: BTreeMap<(&str, &str, &str), (usize, Verdict)> = BTreeMap::new();
    for (i, f) in items.iter().enumerate() {
        latest.insert(
            (f.text.trim(), f.target.as_str(), f.label_id.as_str()),
            (i, f.verdict),
        );
    }
    let mut order: Vec<(usize, (&str, &str, &str), Verdict)> =
        latest.into_iter().map(|(k, (i, v))| (i, k, v)).collect();
    order.sort_by_key(|x| x.0);
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for (_, (text, target, id), verdict) in order {
        let label = spaces
            .labels(target)?
            .get(id)
            .ok_or_else(|| ModelError::Invalid(format!("stored feedback names {id:?}, which {target} no longer holds: the space changed since it was stored")))?;
        let p = Pair {
            query: text.to_string(),
            target: label.clone(),
            target_id: id.to_string(),
            source: "feedback",
        };
        match verdict {
            Verdict::Confirm | Verdict::Add => pos.push(p),
            Verdict::Reject => neg.push(p),
        }
    }
    Ok((pos, neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spaces() -> (tempfile::TempDir, Spaces) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tiny.jsonl");
        std::fs::write(
            &p,
            "{\"id\":\"s:1\",\"label\":\"Python\"}\n{\"id\":\"s:2\",\"label\":\"dock operations\"}\n",
        )
        .unwrap();
        let name = p.to_string_lossy().to_string();
        let s = Spaces::new(vec![name], d.path());
        (d, s)
    }

    fn ev(text: &str, id: &str, verdict: &str, target: &str) -> serde_json::Value {
        serde_json::json!({"text": text, "label_id": id, "verdict": verdict, "target": target,
            "at": "2026-12-03T10:00:00Z"})
    }

    #[test]
    fn bad_events_are_bad_data_with_a_reason() {
        let (d, mut s) = spaces();
        let t = d.path().join("tiny.jsonl").to_string_lossy().to_string();
        let ok = Feedback::from_value(ev("Experience with Docker", "s:1", "reject", &t), &mut s);
        assert_eq!(ok.unwrap().verdict, Verdict::Reject);
        let reason =
            |v: serde_json::Value, s: &mut Spaces| Feedback::from_value(v, s).unwrap_err().reason;
        assert_eq!(reason(ev(" ", "s:1", "confirm", &t), &mut s), "empty_text");
        assert_eq!(
            reason(ev("x", "s:9", "confirm", &t), &mut s),
            "unknown_label"
        );
        assert_eq!(reason(ev("x", "s:1", "maybe", &t), &mut s), "schema");
        assert_eq!(
            reason(ev("x", "s:1", "add", "/etc/passwd"), &mut s),
            "unknown_target"
        );
        assert_eq!(
            reason(
                ev(&"a".repeat(MAX_TEXT_CHARS + 1), "s:1", "add", &t),
                &mut s
            ),
            "too_long"
        );
        let mut late = ev("x", "s:1", "add", &t);
        late["at"] = "yesterday".into();
        assert_eq!(reason(late, &mut s), "schema");
        let mut extra = ev("x", "s:1", "add", &t);
        extra["colour"] = "red".into();
        assert_eq!(reason(extra, &mut s), "schema");
        assert_eq!(reason(serde_json::json!([1, 2]), &mut s), "schema");
    }

    #[test]
    fn avro_feedback_in_the_confluent_framing_decodes_and_validates() {
        use crate::connector::codec::{confluent_frame, ValueDecoder};
        use crate::connector::config::{CodecSection, Format};
        use apache_avro::types::Value;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let reader = root.join("schemas/avro/feedback.avsc");
        let schema =
            apache_avro::Schema::parse_str(&std::fs::read_to_string(&reader).unwrap()).unwrap();
        let (d, mut s) = spaces();
        let t = d.path().join("tiny.jsonl").to_string_lossy().to_string();
        let rec = |id: &str| {
            Value::Record(vec![
                (
                    "text".into(),
                    Value::String("Experience with Docker".into()),
                ),
                ("label_id".into(), Value::String(id.into())),
                ("verdict".into(), Value::Enum(1, "reject".into())),
                ("target".into(), Value::String(t.clone())),
                (
                    "source".into(),
                    Value::Union(
                        1,
                        Box::new(Value::Record(vec![
                            ("topic".into(), Value::String("vacancies.enriched".into())),
                            ("partition".into(), Value::Int(2)),
                            ("offset".into(), Value::Long(41)),
                        ])),
                    ),
                ),
                ("analyst".into(), Value::Union(0, Box::new(Value::Null))),
                ("at".into(), Value::String("2026-12-03T10:00:00Z".into())),
            ])
        };
        let cfg = CodecSection {
            format: Format::Avro,
            schema_dir: Some(root.join("schemas/registry")),
            ..Default::default()
        };
        let dec = ValueDecoder::new(&cfg, &reader).unwrap();
        let framed =
            |id: &str| confluent_frame(4, &apache_avro::to_avro_datum(&schema, rec(id)).unwrap());
        let fb = Feedback::from_value(dec.decode(Some(&framed("s:2"))).unwrap(), &mut s).unwrap();
        assert_eq!(fb.verdict, Verdict::Reject);
        assert_eq!(
            fb.source,
            Some(SourceRecord {
                topic: "vacancies.enriched".into(),
                partition: 2,
                offset: 41
            })
        );
        assert_eq!(fb.analyst, None);
        let e =
            Feedback::from_value(dec.decode(Some(&framed("s:7"))).unwrap(), &mut s).unwrap_err();
        assert_eq!(e.reason, "unknown_label");
    }

    #[test]
    fn the_latest_verdict_counts_and_rejects_are_negatives() {
        let (d, mut s) = spaces();
        let t = d.path().join("tiny.jsonl").to_string_lossy().to_string();
        let items: Vec<Feedback> = [
            ev("Experience with Docker", "s:2", "confirm", &t),
            ev("Experience with Docker", "s:1", "add", &t),
            ev("Experience with Docker ", "s:2", "reject", &t),
            ev("Python scripting", "s:1", "confirm", &t),
        ]
        .into_iter()
        .map(|v| Feedback::from_value(v, &mut s).unwrap())
        .collect();
        let (pos, neg) = training_pairs(&items, &mut s).unwrap();
        assert_eq!(
            pos.iter()
                .map(|p| (p.query.as_str(), p.target.as_str()))
                .collect::<Vec<_>>(),
            [
                ("Experience with Docker", "Python"),
                ("Python scripting", "Python")
            ]
        );
        assert_eq!(neg.len(), 1);
        assert_eq!(neg[0].target, "dock operations");
        assert_eq!(neg[0].query, "Experience with Docker");
    }
}

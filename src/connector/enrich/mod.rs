//! From a decoded event and the embeddings of its texts to an enriched record.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::{Mode, TargetSection};
use super::event::Event;
use crate::encoder::TextEmbedding;
use crate::mentions::MentionHead;
use crate::model::ScorerSpec;
use crate::rank::rank_many;
use crate::space::cache::EncodedSpace;
use crate::text::{char_offset, sentence_spans};

mod mentions;

pub use mentions::{find_mentions, labels_from_tops, mention_labels, top_concepts, FoundMention};

/// A target of the pipeline with its embedded space.
#[derive(Clone)]
pub struct Target {
    /// Its configuration.
    pub cfg: TargetSection,
    /// The embedded space.
    pub space: Arc<EncodedSpace>,
    /// How texts are scored against this space: the serving model's scorer for it
    /// ([`crate::model::Manifest::scorer_for`]).
    pub scorer: ScorerSpec,
}

/// Where a label's text came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evidence {
    /// Field of the event, e.g. `description` or `experiences[0].title`.
    pub field: String,
    /// The ranked text (a sentence in `sentences` mode).
    pub text: String,
    /// Character offset of `text` in the field.
    pub start: usize,
    /// Character offset of its end.
    pub end: usize,
    /// `mentions` mode: the sentence the mention was found in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentence: Option<String>,
}

/// One label of an enriched record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Label {
    /// Concept id (URI for ESCO).
    pub id: String,
    /// Preferred label.
    pub label: String,
    /// Score under the model's scorer.
    pub score: f32,
    /// 1-based rank (within its text in `whole` mode, within the event in `sentences` mode).
    pub rank: usize,
    /// The alternative label that matched, when it scored above the preferred label
    /// (`targets.match_aliases`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    /// `mentions` mode: how many of the event's mentions have this concept as their top
    /// label (the evidence is the best-scoring one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions: Option<usize>,
    /// The text that earned it.
    pub evidence: Evidence,
}

/// Where the source event was read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceRef {
    /// Event id.
    pub id: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// What the connector publishes (`schemas/json/enriched.schema.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnrichedRecord {
    /// Source reference.
    pub source: SourceRef,
    /// `vacancy` or `cv`.
    pub event_type: String,
    /// Labels by target name.
    pub labels: BTreeMap<String, Vec<Label>>,
    /// Model version that produced the labels.
    pub model_version: String,
    /// Taxonomy version by target name.
    pub taxonomy_versions: BTreeMap<String, String>,
    /// RFC 3339 processing time.
    pub processed_at: String,
}

/// One text to encode for a target.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Index into the pipeline's targets.
    pub target: usize,
    /// Index into [`Plan::texts`].
    pub text: usize,
    /// Evidence to report.
    pub evidence: Evidence,
    /// `mentions` mode: the whole text is one mention (a listed skill), not tagged.
    pub is_item: bool,
}

/// The texts of one event, deduplicated, and what each target ranks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Distinct texts to encode.
    pub texts: Vec<String>,
    /// Units referring to them.
    pub units: Vec<Unit>,
}

impl Plan {
    /// Estimated word pieces (about four bytes each, plus the two special tokens).
    pub fn estimated_tokens(&self) -> usize {
        self.texts.iter().map(|t| t.len() / 4 + 3).sum()
    }
}

/// Lists the texts of `event` each target ranks.
pub fn plan(event: &Event, targets: &[TargetSection]) -> Plan {
    let mut p = Plan::default();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    for (ti, t) in targets.iter().enumerate() {
        for f in &t.fields {
            for ft in event.texts(f) {
                let is_item = t.mode == Mode::Mentions && f == "skills";
                let pieces: Vec<(usize, usize)> = match t.mode {
                    Mode::Whole => vec![(0, ft.text.len())],
                    Mode::Mentions if is_item => vec![(0, ft.text.len())],
                    Mode::Sentences | Mode::Mentions => sentence_spans(&ft.text),
                };
                for (a, b) in pieces {
                    let text = ft.text[a..b].trim().to_string();
                    if text.is_empty() {
                        continue;
                    }
                    let ti_text = *index.entry(text.clone()).or_insert_with(|| {
                        p.texts.push(text.clone());
                        p.texts.len() - 1
                    });
                    let start = char_offset(&ft.text, a);
                    p.units.push(Unit {
                        target: ti,
                        text: ti_text,
                        evidence: Evidence {
                            field: ft.field.clone(),
                            start,
                            end: start + text.chars().count(),
                            text,
                            sentence: None,
                        },
                        is_item,
                    });
                }
            }
        }
    }
    p
}

/// Ranks every unit and assembles the labels of each target.
///
/// `mentions` is the serving model's mention tagger; targets in `mentions` mode need it
/// (the serving is refused at load without one), and without it they rank whole sentences.
pub fn labels(
    plan: &Plan,
    embeddings: &[Arc<TextEmbedding>],
    targets: &[Target],
    mentions: Option<&MentionHead>,
) -> BTreeMap<String, Vec<Label>> {
    let mut out: BTreeMap<String, Vec<Label>> = BTreeMap::new();
    for (ti, t) in targets.iter().enumerate() {
        let units: Vec<&Unit> = plan.units.iter().filter(|u| u.target == ti).collect();
        if let (Mode::Mentions, Some(head)) = (t.cfg.mode, mentions) {
            let found = find_mentions(&units, embeddings, head, t.cfg.max_mentions);
            out.insert(t.cfg.name.clone(), mention_labels(t, &found, head));
            continue;
        }
        let queries: Vec<&TextEmbedding> =
            units.iter().map(|u| embeddings[u.text].as_ref()).collect();
        let ranked = rank_many(&t.space, &queries, t.cfg.k, t.scorer);
        let units = units.into_iter().zip(ranked);
        let concepts = &t.space.space.concepts;
        let matched = |h: &crate::rank::Hit| t.space.alias_text(h.alias).map(str::to_string);
        let mut labels: Vec<Label> = Vec::new();
        match t.cfg.mode {
            Mode::Whole => {
                for (u, hits) in units {
                    labels.extend(
                        hits.into_iter()
                            .filter(|h| h.score >= t.cfg.min_score)
                            .enumerate()
                            .map(|(r, h)| Label {
                                id: concepts[h.index].id.clone(),
                                label: concepts[h.index].label.clone(),
                                score: h.score,
                                rank: r + 1,
                                matched: matched(&h),
                                mentions: None,
                                evidence: u.evidence.clone(),
                            }),
                    );
                }
            }
            Mode::Sentences | Mode::Mentions => {
                // Each concept keeps its best-scoring sentence.
                let mut best: std::collections::HashMap<usize, (crate::rank::Hit, &Unit)> =
                    Default::default();
                for (u, hits) in units {
                    for h in hits {
                        if h.score < t.cfg.min_score {
                            continue;
                        }
                        let e = best.entry(h.index).or_insert((h, u));
                        if h.score > e.0.score {
                            *e = (h, u);
                        }
                    }
                }
                let mut v: Vec<(crate::rank::Hit, &Unit)> = best.into_values().collect();
                v.sort_by(|a, b| {
                    b.0.score
                        .total_cmp(&a.0.score)
                        .then(a.0.index.cmp(&b.0.index))
                });
                v.truncate(t.cfg.k);
                labels = v
                    .into_iter()
                    .enumerate()
                    .map(|(r, (h, u))| Label {
                        id: concepts[h.index].id.clone(),
                        label: concepts[h.index].label.clone(),
                        score: h.score,
                        rank: r + 1,
                        matched: matched(&h),
                        mentions: None,
                        evidence: u.evidence.clone(),
                    })
                    .collect();
            }
        }
        out.insert(t.cfg.name.clone(), labels);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::event::{Cv, Experience, Vacancy};

    fn target(name: &str, fields: &[&str], mode: Mode) -> TargetSection {
        TargetSection {
            name: name.into(),
            space: "x".into(),
            fields: fields.iter().map(|s| s.to_string()).collect(),
            mode,
            k: 3,
            min_score: 0.0,
            match_aliases: false,
            alias_weight: 0.9,
            max_mentions: 200,
        }
    }

    #[test]
    fn vacancy_plan_has_title_and_sentences_with_char_spans() {
        let ev = Event::Vacancy(Vacancy {
            id: "1".into(),
            title: "Köchin".into(),
            description: "Wir suchen eine Köchin. Sie kocht gern.\nKöchin".into(),
            location: None,
            language: None,
            posted_date: None,
            source: None,
        });
        let p = plan(
            &ev,
            &[
                target("occ", &["title"], Mode::Whole),
                target("sk", &["description"], Mode::Sentences),
            ],
        );
        assert_eq!(
            p.texts,
            vec!["Köchin", "Wir suchen eine Köchin.", "Sie kocht gern."]
        );
        let last = p.units.last().unwrap();
        assert_eq!(last.text, 0, "repeated text is encoded once");
        assert_eq!((last.evidence.start, last.evidence.end), (40, 46));
        assert_eq!(p.units[2].evidence.start, 24);
    }

    #[test]
    fn cv_plan_names_each_experience() {
        let ev = Event::Cv(Cv {
            id: "c".into(),
            headline: None,
            summary: Some("  ".into()),
            experiences: vec![
                Experience {
                    title: "Nurse".into(),
                    description: None,
                },
                Experience {
                    title: "Head nurse".into(),
                    description: Some("Led a ward.".into()),
                },
            ],
            skills: vec!["triage".into()],
            language: None,
        });
        let p = plan(
            &ev,
            &[
                target("occ", &["experience_title"], Mode::Whole),
                target(
                    "sk",
                    &["summary", "experience_description", "skills"],
                    Mode::Sentences,
                ),
            ],
        );
        let fields: Vec<&str> = p.units.iter().map(|u| u.evidence.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "experiences[0].title",
                "experiences[1].title",
                "experiences[1].description",
                "skills[0]"
            ]
        );
    }
}

//! Posting-level evaluation: the real enrichment code over whole, annotated job postings.
//!
//! Sentence benchmarks ask "which skill does this sentence name?" of sentences known to name
//! one; a posting also asks "does this line name a skill at all?". This runs a connector's
//! skill target over each posting as a vacancy event and measures what a user would see:
//! labels per posting, the share of labels whose evidence overlaps no annotated span (noise:
//! headers, boilerplate, benefits), span precision/recall/F1 of the detected mentions, and,
//! where a posting lists the ESCO skills annotators gave it, label precision and recall.
//!
//! A posting line (SkillSpan's `postings_*.jsonl`): `{"text", "skill_spans": [..],
//! "knowledge_spans": [..], "esco_labels"?: [id | label | {"id"|"uri", "label"}]}`.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::bootstrap;
use crate::connector::config::{Mode, TargetSection};
use crate::connector::enrich::{self, Target};
use crate::connector::event::{Event, Vacancy};
use crate::connector::swap::Serving;
use crate::encoder::Encoder;
use crate::error::{ModelError, Result};
use crate::mentions::train::{SpanCounter, SpanScores};
use crate::text::char_offset;

/// An ESCO label annotators gave a posting: an id (URI) or a preferred label.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum GoldLabel {
    /// A concept id or a preferred label.
    Text(String),
    /// `{"id" | "uri", "label"}`.
    Object {
        /// Concept id.
        #[serde(default, alias = "uri")]
        id: Option<String>,
        /// Preferred label.
        #[serde(default)]
        label: Option<String>,
    },
}

/// One annotated posting.
#[derive(Debug, Clone, Deserialize)]
pub struct AnnotatedPosting {
    /// Posting index.
    #[serde(default)]
    pub idx: u64,
    /// SkillSpan source (`tech` or `house`), with `idx` the posting's identity.
    #[serde(default)]
    pub source: String,
    /// Whole text.
    pub text: String,
    /// Annotated skill spans, as strings of the text.
    #[serde(default)]
    pub skill_spans: Vec<String>,
    /// Annotated knowledge spans.
    #[serde(default)]
    pub knowledge_spans: Vec<String>,
    /// ESCO skills annotators gave the posting, when known.
    #[serde(default, alias = "esco_skills", alias = "skill_labels")]
    pub esco_labels: Option<Vec<GoldLabel>>,
}

/// Reads a postings file.
pub fn read_postings(path: &Path) -> Result<Vec<AnnotatedPosting>> {
    Ok(crate::error::read_jsonl::<AnnotatedPosting>(
        path,
        "a posting {text, skill_spans, knowledge_spans, esco_labels?}",
    )?
    .into_iter()
    .map(|(_, p)| p)
    .collect())
}

/// Character ranges of the annotated spans in `text`. `spans` is one annotation list, in
/// document order (SkillSpan lists each annotated occurrence): each span is looked for from
/// the previous one's position, else at its first occurrence not yet taken.
pub fn gold_ranges(text: &str, spans: &[&str]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut cursor = 0usize;
    for s in spans.iter().filter(|s| !s.trim().is_empty()) {
        let range = |a: usize| {
            let ca = char_offset(text, a);
            (ca, ca + s.chars().count())
        };
        let at = text[cursor..].find(s).map(|i| i + cursor).or_else(|| {
            text.match_indices(s)
                .map(|(i, _)| i)
                .find(|&i| !out.contains(&range(i)))
        });
        if let Some(a) = at {
            out.push(range(a));
            cursor = a + s.len();
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What [`evaluate`] prints.
#[derive(Debug, Clone, Serialize)]
pub struct PostingReport {
    /// Postings evaluated.
    pub postings: usize,
    /// Target evaluated and its mode.
    pub target: String,
    /// `sentences` or `mentions`.
    pub mode: Mode,
    /// Model version.
    pub model: String,
    /// Mean labels per posting.
    pub labels_per_posting: f64,
    /// Percent of labels whose evidence overlaps no annotated span.
    pub noise_share: f64,
    /// 95% bootstrap interval of `noise_share` (postings resampled).
    pub noise_share_ci95: [f64; 2],
    /// Detected mentions against the annotated spans (`mentions` mode).
    pub spans: Option<SpanScores>,
    /// Postings that list ESCO labels.
    pub labelled_postings: usize,
    /// Percent of labels of those postings that annotators gave.
    pub label_precision: Option<f64>,
    /// Percent of annotators' labels found.
    pub label_recall: Option<f64>,
    /// 95% bootstrap intervals of label precision and recall.
    pub label_precision_ci95: Option<[f64; 2]>,
    /// See `label_precision_ci95`.
    pub label_recall_ci95: Option<[f64; 2]>,
}

/// Per-posting counts, for the totals and the bootstrap.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    labels: usize,
    noise: usize,
    gold_labels: usize,
    labels_in_gold: usize,
    gold_found: usize,
    labelled: bool,
}

/// The skill target to evaluate: `name`, else the first target ranking `description`.
pub fn pick_target(serving: &Serving, name: Option<&str>) -> Result<Target> {
    serving
        .targets
        .iter()
        .find(|t| match name {
            Some(n) => t.cfg.name == n,
            None => t.cfg.fields.iter().any(|f| f == "description"),
        })
        .cloned()
        .ok_or_else(|| {
            ModelError::Runtime(match name {
                Some(n) => format!("the pipeline has no target named {n:?}"),
                None => "the pipeline has no target ranking `description`; name one with --target"
                    .into(),
            })
        })
}

/// Runs `target` (its mode replaced by `mode` when given) over `postings` as vacancy events.
pub fn evaluate(
    enc: &mut Encoder,
    serving: &Serving,
    mut target: Target,
    mode: Option<Mode>,
    postings: &[AnnotatedPosting],
    explain: bool,
    reencode_spans: bool,
) -> Result<PostingReport> {
    if let Some(m) = mode {
        target.cfg.mode = m;
    }
    if target.cfg.mode == Mode::Mentions && serving.mentions.is_none() {
        return Err(ModelError::Runtime(format!(
            "{}: the model has no mention tagger; train one with `uwe-trainer mentions`",
            enc.manifest().version
        )));
    }
    let cfgs: Vec<TargetSection> = vec![target.cfg.clone()];
    let targets = vec![target.clone()];
    let mut counts = Vec::with_capacity(postings.len());
    let mut spans = SpanCounter::default();
    for (i, p) in postings.iter().enumerate() {
        let ev = Event::Vacancy(Vacancy {
            id: format!("posting-{i}"),
            title: p.text.lines().next().unwrap_or("").to_string(),
            description: p.text.clone(),
            location: None,
            language: None,
            posted_date: None,
            source: None,
        });
        let plan = enrich::plan(&ev, &cfgs);
        let embs = enc.encode(&plan.texts)?;
        // Mentions are found once: they give both the labels and the span scores.
        let (labels, found) = match (target.cfg.mode, serving.mentions.as_deref()) {
            (Mode::Mentions, Some(head)) => {
                let units: Vec<&enrich::Unit> = plan.units.iter().collect();
                let mut found = enrich::find_mentions(&units, &embs, head, target.cfg.max_mentions);
                if reencode_spans {
                    // The alternative to ranking a span by its contextual token rows: the
                    // span's words encoded on their own, out of their sentence.
                    let texts: Vec<String> =
                        found.iter().map(|m| m.evidence.text.clone()).collect();
                    for (m, e) in found.iter_mut().zip(enc.encode(&texts)?) {
                        m.embedding = (*e).clone();
                    }
                }
                let labels = enrich::mention_labels(&target, &found, serving.scorer, head);
                (labels, Some(found))
            }
            _ => {
                let mut all = enrich::labels(
                    &plan,
                    &embs,
                    &targets,
                    serving.scorer,
                    serving.mentions.as_deref(),
                );
                (all.remove(&target.cfg.name).unwrap_or_default(), None)
            }
        };
        fn as_strs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        // Each list is in document order on its own: match them apart, then merge.
        let mut gold = gold_ranges(&p.text, &as_strs(&p.skill_spans));
        gold.extend(gold_ranges(&p.text, &as_strs(&p.knowledge_spans)));
        gold.sort();
        gold.dedup();
        let overlaps = |a: usize, b: usize| gold.iter().any(|g| a < g.1 && g.0 < b);
        if explain {
            for l in &labels {
                let tag = if overlaps(l.evidence.start, l.evidence.end) {
                    "span "
                } else {
                    "NOISE"
                };
                eprintln!(
                    "{tag} posting {i} {:.2} {:?} -> {}",
                    l.score, l.evidence.text, l.label
                );
            }
        }
        let mut c = Counts {
            labels: labels.len(),
            noise: labels
                .iter()
                .filter(|l| !overlaps(l.evidence.start, l.evidence.end))
                .count(),
            ..Default::default()
        };
        if let Some(found) = &found {
            let pred: Vec<(usize, usize)> = found
                .iter()
                .map(|m| (m.evidence.start, m.evidence.end))
                .collect();
            spans.add(&pred, &gold);
        }
        if let Some(gl) = &p.esco_labels {
            let ids: HashSet<String> = gl
                .iter()
                .filter_map(|g| match g {
                    GoldLabel::Text(s) => Some(s.to_lowercase()),
                    GoldLabel::Object { id, label } => id
                        .clone()
                        .or_else(|| label.clone())
                        .map(|s| s.to_lowercase()),
                })
                .collect();
            let hit = |l: &enrich::Label| {
                ids.contains(&l.id.to_lowercase()) || ids.contains(&l.label.to_lowercase())
            };
            let got: HashSet<String> = labels
                .iter()
                .filter(|l| hit(l))
                .map(|l| l.id.clone())
                .collect();
            c.labelled = true;
            c.gold_labels = ids.len();
            c.labels_in_gold = labels.iter().filter(|l| hit(l)).count();
            c.gold_found = got.len().min(ids.len());
        }
        counts.push(c);
    }
    let pct = |a: usize, b: usize| {
        if b == 0 {
            0.0
        } else {
            (a as f64 * 10000.0 / b as f64).round() / 100.0
        }
    };
    let sum = |cs: &[&Counts]| {
        cs.iter().fold(Counts::default(), |mut s, c| {
            s.labels += c.labels;
            s.noise += c.noise;
            s.gold_labels += c.gold_labels;
            s.labels_in_gold += c.labels_in_gold;
            s.gold_found += c.gold_found;
            s
        })
    };
    let all: Vec<&Counts> = counts.iter().collect();
    let labelled: Vec<&Counts> = counts.iter().filter(|c| c.labelled).collect();
    let tot = sum(&all);
    let lab = sum(&labelled);
    let noise_ci = bootstrap(&all, |s| {
        let t = sum(s);
        pct(t.noise, t.labels)
    });
    let has_labels = !labelled.is_empty();
    Ok(PostingReport {
        postings: postings.len(),
        target: target.cfg.name.clone(),
        mode: target.cfg.mode,
        model: enc.manifest().version.clone(),
        labels_per_posting: (tot.labels as f64 * 100.0 / postings.len().max(1) as f64).round()
            / 100.0,
        noise_share: pct(tot.noise, tot.labels),
        noise_share_ci95: noise_ci,
        spans: (target.cfg.mode == Mode::Mentions).then(|| spans.scores()),
        labelled_postings: labelled.len(),
        label_precision: has_labels.then(|| pct(lab.labels_in_gold, lab.labels)),
        label_recall: has_labels.then(|| pct(lab.gold_found, lab.gold_labels)),
        label_precision_ci95: has_labels.then(|| {
            bootstrap(&labelled, |s| {
                let t = sum(s);
                pct(t.labels_in_gold, t.labels)
            })
        }),
        label_recall_ci95: has_labels.then(|| {
            bootstrap(&labelled, |s| {
                let t = sum(s);
                pct(t.gold_found, t.gold_labels)
            })
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_ranges_follow_the_text_in_characters() {
        let t = "Zürich: Java, Java and Docker";
        let r = gold_ranges(t, &["Java", "Java", "Docker", "", "missing"]);
        assert_eq!(r, vec![(8, 12), (14, 18), (23, 29)]);
        // Out of order: the second "Java" is the first occurrence not yet taken.
        let r = gold_ranges(t, &["Java", "Docker", "Java"]);
        assert_eq!(r, vec![(8, 12), (14, 18), (23, 29)]);
    }

    #[test]
    fn gold_labels_accept_ids_labels_and_objects() {
        let p: AnnotatedPosting = serde_json::from_str(
            r#"{"text": "x", "esco_skills": ["http://e/1", {"uri": "http://e/2"}, {"label": "Java"}]}"#,
        )
        .unwrap();
        let g = p.esco_labels.unwrap();
        assert_eq!(g[0], GoldLabel::Text("http://e/1".into()));
        assert!(matches!(&g[1], GoldLabel::Object { id: Some(i), .. } if i == "http://e/2"));
        assert!(matches!(&g[2], GoldLabel::Object { label: Some(l), .. } if l == "Java"));
    }

    #[test]
    fn bootstrap_brackets_the_statistic() {
        let xs: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let [lo, hi] = bootstrap(&xs, |s| s.iter().sum::<f64>() / s.len() as f64);
        assert!(lo < 49.5 && hi > 49.5 && hi - lo < 20.0, "{lo} {hi}");
    }
}

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

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::bootstrap;
use crate::connector::config::{Mode, TargetSection};
use crate::connector::enrich::{self, FoundMention, Plan, Target};
use crate::connector::event::{Event, Vacancy};
use crate::connector::swap::Serving;
use crate::encoder::{Encoder, TextEmbedding};
use crate::error::{ModelError, Result};
use crate::mentions::train::{SpanCounter, SpanScores};
use crate::mentions::MentionHead;
use crate::rank::Hit;
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
    /// The counts behind the shares, so that reports of disjoint posting sets (the folds of
    /// a cross-validated calibration) can be pooled.
    pub totals: Counts,
}

/// Per-posting counts, for the totals and the bootstrap.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Labels given.
    pub labels: usize,
    /// Labels whose evidence overlaps no annotated span.
    pub noise: usize,
    /// Distinct ESCO labels annotators gave (labelled postings).
    pub gold_labels: usize,
    /// Labels given that annotators gave too.
    pub labels_in_gold: usize,
    /// Annotators' labels found.
    pub gold_found: usize,
    #[serde(skip)]
    labelled: bool,
}

/// The tagger's thresholds, one point of a calibration sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// [`MentionHead::threshold`].
    #[serde(serialize_with = "rounded")]
    pub threshold: f32,
    /// [`MentionHead::knowledge_threshold`].
    #[serde(serialize_with = "rounded")]
    pub knowledge_threshold: f32,
    /// [`MentionHead::gate_threshold`] (0: no gate).
    #[serde(serialize_with = "rounded")]
    pub sentence_gate: f32,
    /// [`MentionHead::label_threshold`].
    #[serde(serialize_with = "rounded")]
    pub label_threshold: f32,
}

/// An f32 threshold as the decimal it was written as (0.6, not 0.6000000238418579).
fn rounded<S: serde::Serializer>(x: &f32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64((*x as f64 * 1e4).round() / 1e4)
}

impl OperatingPoint {
    /// The point `head` is at.
    pub fn of(head: &MentionHead) -> Self {
        OperatingPoint {
            threshold: head.threshold,
            knowledge_threshold: head.knowledge_threshold,
            sentence_gate: head.gate_threshold,
            label_threshold: head.label_threshold,
        }
    }

    /// `head` moved to this point.
    pub fn apply(&self, head: &MentionHead) -> MentionHead {
        let mut h = head.clone();
        h.threshold = self.threshold;
        h.knowledge_threshold = self.knowledge_threshold;
        h.gate_threshold = self.sentence_gate;
        h.label_threshold = self.label_threshold;
        h
    }
}

/// A posting encoded once, with its annotations resolved, for one or many operating points.
struct Prepared {
    plan: Plan,
    embs: Vec<Arc<TextEmbedding>>,
    /// Character ranges of the annotated spans, skill and knowledge together.
    gold: Vec<(usize, usize)>,
    /// Annotators' ESCO labels (ids or preferred labels, lower case), when the posting has them.
    esco: Option<HashSet<String>>,
}

impl Prepared {
    fn new(enc: &mut Encoder, cfg: &TargetSection, i: usize, p: &AnnotatedPosting) -> Result<Self> {
        let ev = Event::Vacancy(Vacancy {
            id: format!("posting-{i}"),
            title: p.text.lines().next().unwrap_or("").to_string(),
            description: p.text.clone(),
            location: None,
            language: None,
            posted_date: None,
            source: None,
        });
        let plan = enrich::plan(&ev, std::slice::from_ref(cfg));
        let embs = enc.encode(&plan.texts)?;
        fn as_strs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        // Each list is in document order on its own: match them apart, then merge.
        let mut gold = gold_ranges(&p.text, &as_strs(&p.skill_spans));
        gold.extend(gold_ranges(&p.text, &as_strs(&p.knowledge_spans)));
        gold.sort();
        gold.dedup();
        let esco = p.esco_labels.as_ref().map(|gl| {
            gl.iter()
                .filter_map(|g| match g {
                    GoldLabel::Text(s) => Some(s.to_lowercase()),
                    GoldLabel::Object { id, label } => id
                        .clone()
                        .or_else(|| label.clone())
                        .map(|s| s.to_lowercase()),
                })
                .collect()
        });
        Ok(Prepared {
            plan,
            embs,
            gold,
            esco,
        })
    }

    fn overlaps_gold(&self, a: usize, b: usize) -> bool {
        self.gold.iter().any(|g| a < g.1 && g.0 < b)
    }

    /// The counts of `labels`; the mentions' spans go to `spans`.
    fn count(
        &self,
        labels: &[enrich::Label],
        found: Option<&[FoundMention]>,
        spans: &mut SpanCounter,
    ) -> Counts {
        let mut c = Counts {
            labels: labels.len(),
            noise: labels
                .iter()
                .filter(|l| !self.overlaps_gold(l.evidence.start, l.evidence.end))
                .count(),
            ..Default::default()
        };
        if let Some(found) = found {
            let pred: Vec<(usize, usize)> = found
                .iter()
                .map(|m| (m.evidence.start, m.evidence.end))
                .collect();
            spans.add(&pred, &self.gold);
        }
        if let Some(ids) = &self.esco {
            let hit = |l: &enrich::Label| {
                ids.contains(&l.id.to_lowercase()) || ids.contains(&l.label.to_lowercase())
            };
            let got: HashSet<&str> = labels
                .iter()
                .filter(|l| hit(l))
                .map(|l| l.id.as_str())
                .collect();
            c.labelled = true;
            c.gold_labels = ids.len();
            c.labels_in_gold = labels.iter().filter(|l| hit(l)).count();
            c.gold_found = got.len().min(ids.len());
        }
        c
    }
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
    let head = tagger_of(enc, serving, &target)?;
    let targets = vec![target.clone()];
    let mut counts = Vec::with_capacity(postings.len());
    let mut spans = SpanCounter::default();
    for (i, p) in postings.iter().enumerate() {
        let prep = Prepared::new(enc, &target.cfg, i, p)?;
        let (plan, embs) = (&prep.plan, &prep.embs);
        // Mentions are found once: they give both the labels and the span scores.
        let (labels, found) = match head {
            Some(head) => {
                let units: Vec<&enrich::Unit> = plan.units.iter().collect();
                let mut found = enrich::find_mentions(&units, embs, head, target.cfg.max_mentions);
                if reencode_spans {
                    // The alternative to ranking a span by its contextual token rows: the
                    // span's words encoded on their own, out of their sentence.
                    let texts: Vec<String> =
                        found.iter().map(|m| m.evidence.text.clone()).collect();
                    for (m, e) in found.iter_mut().zip(enc.encode(&texts)?) {
                        m.embedding = (*e).clone();
                    }
                }
                let labels = enrich::mention_labels(&target, &found, head);
                (labels, Some(found))
            }
            None => {
                let mut all = enrich::labels(plan, embs, &targets, serving.mentions.as_deref());
                (all.remove(&target.cfg.name).unwrap_or_default(), None)
            }
        };
        if explain {
            for l in &labels {
                let tag = if prep.overlaps_gold(l.evidence.start, l.evidence.end) {
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
        counts.push(prep.count(&labels, found.as_deref(), &mut spans));
    }
    Ok(report(enc, &target, &counts, spans))
}

/// [`evaluate`] in `mentions` mode at each of `points`, encoding each posting once and
/// ranking each distinct mention once: a calibration sweep.
pub fn sweep(
    enc: &mut Encoder,
    serving: &Serving,
    mut target: Target,
    postings: &[AnnotatedPosting],
    points: &[OperatingPoint],
) -> Result<Vec<(OperatingPoint, PostingReport)>> {
    target.cfg.mode = Mode::Mentions;
    let head = tagger_of(enc, serving, &target)?.expect("mentions mode");
    let prepared = postings
        .iter()
        .enumerate()
        .map(|(i, p)| Prepared::new(enc, &target.cfg, i, p))
        .collect::<Result<Vec<_>>>()?;
    // A mention's top concept depends only on its rows: its posting and character range.
    let mut tops: HashMap<(usize, usize, usize), Option<Hit>> = HashMap::new();
    let mut out = Vec::with_capacity(points.len());
    for point in points {
        let h = point.apply(head);
        let mut counts = Vec::with_capacity(prepared.len());
        let mut spans = SpanCounter::default();
        for (i, prep) in prepared.iter().enumerate() {
            let units: Vec<&enrich::Unit> = prep.plan.units.iter().collect();
            let found = enrich::find_mentions(&units, &prep.embs, &h, target.cfg.max_mentions);
            let key = |m: &FoundMention| (i, m.evidence.start, m.evidence.end);
            let new: Vec<&FoundMention> = found
                .iter()
                .filter(|m| !tops.contains_key(&key(m)))
                .collect();
            let queries: Vec<&TextEmbedding> = new.iter().map(|m| &m.embedding).collect();
            for (m, hit) in new.iter().zip(enrich::top_concepts(&target, &queries)) {
                tops.insert(key(m), hit);
            }
            let mine: Vec<Option<Hit>> = found.iter().map(|m| tops[&key(m)]).collect();
            let labels = enrich::labels_from_tops(&target, &found, &mine, &h);
            counts.push(prep.count(&labels, Some(&found), &mut spans));
        }
        out.push((*point, report(enc, &target, &counts, spans)));
    }
    Ok(out)
}

/// The tagger `target` needs: `Some` in `mentions` mode (an error when the model has none).
fn tagger_of<'a>(
    enc: &Encoder,
    serving: &'a Serving,
    target: &Target,
) -> Result<Option<&'a MentionHead>> {
    if target.cfg.mode != Mode::Mentions {
        return Ok(None);
    }
    match serving.mentions.as_deref() {
        Some(h) => Ok(Some(h)),
        None => Err(ModelError::Runtime(format!(
            "{}: the model has no mention tagger; train one with `uwe-trainer mentions`",
            enc.manifest().version
        ))),
    }
}

/// The report of per-posting `counts`.
fn report(enc: &Encoder, target: &Target, counts: &[Counts], spans: SpanCounter) -> PostingReport {
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
    PostingReport {
        postings: counts.len(),
        target: target.cfg.name.clone(),
        mode: target.cfg.mode,
        model: enc.manifest().version.clone(),
        labels_per_posting: (tot.labels as f64 * 100.0 / counts.len().max(1) as f64).round()
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
        totals: tot,
    }
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

//! Pseudo-labels for real job-ad sentences: each annotated SkillSpan span ranked against the
//! ESCO skills on its own, and its top skill kept as a label of the span's sentence only when
//! it is both confident and clearly ahead of the runner-up. The rule's precision is measured
//! on spans whose ESCO skill annotators gave (the skill-extraction dev sets).

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::encoder::{Encoder, TextEmbedding};
use crate::error::Result;
use crate::mentions::{MentionKind, TaggedSentence};
use crate::model::ScorerSpec;
use crate::rank::rank_many;
use crate::space::cache::EncodedSpace;

/// When a span's top skill becomes a pseudo-label.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rule {
    /// Lowest score of the top skill.
    pub min_score: f32,
    /// Lowest lead of the top skill over the second.
    pub min_margin: f32,
}

/// A span's top skill under the rule's scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanLabel {
    /// Index of the top skill in the space.
    pub concept: usize,
    /// Its score.
    pub score: f32,
    /// Its lead over the second skill.
    pub margin: f32,
}

impl Rule {
    /// Whether `l` is kept.
    pub fn keeps(&self, l: &SpanLabel) -> bool {
        l.score >= self.min_score && l.margin >= self.min_margin
    }
}

/// The top skill of each span text, each encoded on its own (`None` for an empty text).
pub fn label_spans(
    enc: &mut Encoder,
    space: &EncodedSpace,
    spans: &[String],
    scorer: ScorerSpec,
) -> Result<Vec<Option<SpanLabel>>> {
    let embs = enc.encode(spans)?;
    let qs: Vec<&TextEmbedding> = embs.iter().map(|e| e.as_ref()).collect();
    Ok(rank_many(space, &qs, 2, scorer)
        .into_iter()
        .map(|hits| {
            let top = hits.first()?;
            let second = hits.get(1).map_or(0.0, |h| h.score);
            Some(SpanLabel {
                concept: top.index,
                score: top.score,
                margin: top.score - second,
            })
        })
        .collect())
}

/// One pseudo-labelled sentence → skill pair, as `uwe-trainer` reads labelled texts.
#[derive(Debug, Clone, Serialize)]
pub struct PseudoPair {
    /// The whole sentence.
    pub text: String,
    /// The skill's id.
    pub label_id: String,
    /// The span that earned it, and its top-skill score and margin.
    pub span: String,
    /// Score of the skill for the span.
    pub score: f32,
    /// Lead over the second skill.
    pub margin: f32,
}

/// Sentence → skill pairs from the annotated spans of `sentences` (skill and knowledge
/// spans alike), each distinct (sentence, skill) once, with how many spans were labelled.
pub fn pseudo_pairs(
    enc: &mut Encoder,
    space: &EncodedSpace,
    sentences: &[TaggedSentence],
    rule: Rule,
    scorer: ScorerSpec,
) -> Result<(Vec<PseudoPair>, usize)> {
    let mut spans: Vec<(usize, String)> = Vec::new();
    for (si, s) in sentences.iter().enumerate() {
        for kind in [MentionKind::Skill, MentionKind::Knowledge] {
            for (a, b) in s.spans(kind) {
                spans.push((si, s.tokens[a..b].join(" ")));
            }
        }
    }
    // Each distinct span text is ranked once.
    let mut distinct: HashMap<&str, usize> = HashMap::new();
    let mut texts: Vec<String> = Vec::new();
    for (_, t) in &spans {
        if !distinct.contains_key(t.as_str()) {
            distinct.insert(t, texts.len());
            texts.push(t.clone());
        }
    }
    let labels = label_spans(enc, space, &texts, scorer)?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (si, t) in &spans {
        let Some(l) = labels[distinct[t.as_str()]] else {
            continue;
        };
        if !rule.keeps(&l) || !seen.insert((*si, l.concept)) {
            continue;
        }
        out.push(PseudoPair {
            text: sentences[*si].text().0,
            label_id: space.space.concepts[l.concept].id.clone(),
            span: t.clone(),
            score: l.score,
            margin: l.margin,
        });
    }
    Ok((out, spans.len()))
}

/// Precision of `rule` on annotated spans: skill-extraction CSVs (`sentence,span,sub_span,
/// label`, label an ESCO preferred label; rows without one are skipped, a malformed row is an
/// error naming its line).
#[derive(Debug, Clone, Serialize)]
pub struct RuleCheck {
    /// Spans with an ESCO label.
    pub spans: usize,
    /// Spans the rule labels.
    pub kept: usize,
    /// Percent of kept spans whose pseudo-label is the annotators' skill.
    pub precision: f64,
    /// Percent of all spans whose top skill is the annotators' (the rule off).
    pub top1_accuracy: f64,
}

/// Measures `rule` on the annotated spans of `csvs`.
pub fn check_rule(
    enc: &mut Encoder,
    space: &EncodedSpace,
    csvs: &[&Path],
    rule: Rule,
    scorer: ScorerSpec,
) -> Result<RuleCheck> {
    let mut spans = Vec::new();
    let mut gold = Vec::new();
    for p in csvs {
        for (_, rec) in crate::error::read_csv(p)? {
            let (span, label) = (rec.get(1).unwrap_or("").trim(), rec.get(3).unwrap_or(""));
            if span.is_empty() || matches!(label, "LABEL NOT PRESENT" | "UNDERSPECIFIED" | "") {
                continue;
            }
            spans.push(span.replace('\n', " "));
            gold.push(label.to_lowercase());
        }
    }
    let labels = label_spans(enc, space, &spans, scorer)?;
    let right = |l: &SpanLabel, g: &str| space.space.concepts[l.concept].label.to_lowercase() == g;
    let (mut kept, mut kept_right, mut top1) = (0usize, 0usize, 0usize);
    for (l, g) in labels.iter().zip(&gold) {
        let Some(l) = l else { continue };
        top1 += right(l, g) as usize;
        if rule.keeps(l) {
            kept += 1;
            kept_right += right(l, g) as usize;
        }
    }
    let pct = |a: usize, b: usize| (a as f64 * 10000.0 / b.max(1) as f64).round() / 100.0;
    Ok(RuleCheck {
        spans: spans.len(),
        kept,
        precision: pct(kept_right, kept),
        top1_accuracy: pct(top1, spans.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_needs_both_score_and_lead() {
        let r = Rule {
            min_score: 0.7,
            min_margin: 0.05,
        };
        let l = |score, margin| SpanLabel {
            concept: 0,
            score,
            margin,
        };
        assert!(r.keeps(&l(0.8, 0.06)));
        assert!(r.keeps(&l(0.7, 0.05)));
        assert!(!r.keeps(&l(0.95, 0.01)), "a close runner-up is ambiguous");
        assert!(!r.keeps(&l(0.6, 0.3)), "a weak match is not a label");
    }
}

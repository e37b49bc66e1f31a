//! SkillSpan's BIO-tagged sentences, and span precision/recall/F1 of the tagger on them
//! (exact and overlap match).

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{MentionHead, MentionKind};
use crate::encoder::TextEmbedding;
use crate::error::{ModelError, Result};

/// One SkillSpan sentence (`sentences_{train,dev}.jsonl`).
#[derive(Debug, Clone, Deserialize)]
pub struct TaggedSentence {
    /// Posting index within its source.
    pub idx: u64,
    /// `tech` or `house`.
    #[serde(default)]
    pub source: String,
    /// Words.
    pub tokens: Vec<String>,
    /// BIO tags of skill spans, one per word.
    pub tags_skill: Vec<String>,
    /// BIO tags of knowledge spans, one per word.
    pub tags_knowledge: Vec<String>,
}

impl TaggedSentence {
    /// The sentence as text (words joined by spaces) and each word's byte range.
    pub fn text(&self) -> (String, Vec<(usize, usize)>) {
        let mut s = String::new();
        let mut ranges = Vec::with_capacity(self.tokens.len());
        for w in &self.tokens {
            if !s.is_empty() {
                s.push(' ');
            }
            ranges.push((s.len(), s.len() + w.len()));
            s.push_str(w);
        }
        (s, ranges)
    }

    /// Gold word spans `(first, end)` of one kind.
    pub fn spans(&self, kind: MentionKind) -> Vec<(usize, usize)> {
        let tags = match kind {
            MentionKind::Skill => &self.tags_skill,
            MentionKind::Knowledge => &self.tags_knowledge,
        };
        let mut out = Vec::new();
        let mut start: Option<usize> = None;
        for (i, t) in tags.iter().enumerate() {
            let b = t.starts_with('B');
            let inside = b || t.starts_with('I');
            if let Some(a) = start {
                if !inside || b {
                    out.push((a, i));
                    start = None;
                }
            }
            if inside && start.is_none() {
                start = Some(i);
            }
        }
        if let Some(a) = start {
            out.push((a, tags.len()));
        }
        out
    }
}

/// Reads a SkillSpan sentences file.
pub fn read_sentences(path: &Path) -> Result<Vec<TaggedSentence>> {
    let rows: Vec<(usize, TaggedSentence)> = crate::error::read_jsonl(
        path,
        "a SkillSpan sentence {idx, tokens, tags_skill, tags_knowledge}",
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (line, s) in rows {
        if s.tags_skill.len() != s.tokens.len() || s.tags_knowledge.len() != s.tokens.len() {
            return Err(ModelError::BadLine {
                path: path.to_path_buf(),
                line,
                msg: "tags_skill and tags_knowledge must have one tag per token".into(),
            });
        }
        out.push(s);
    }
    Ok(out)
}

/// Span precision, recall and F1, in percent.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Prf {
    /// Predicted spans.
    pub predicted: usize,
    /// Gold spans.
    pub gold: usize,
    /// Precision.
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// F1.
    pub f1: f64,
}

impl Prf {
    /// From counts: predicted spans that match, gold spans matched.
    pub fn new(predicted: usize, gold: usize, tp_pred: usize, tp_gold: usize) -> Self {
        let p = if predicted == 0 {
            0.0
        } else {
            tp_pred as f64 / predicted as f64
        };
        let r = if gold == 0 {
            0.0
        } else {
            tp_gold as f64 / gold as f64
        };
        let f = if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        };
        let pct = |x: f64| (x * 10000.0).round() / 100.0;
        Prf {
            predicted,
            gold,
            precision: pct(p),
            recall: pct(r),
            f1: pct(f),
        }
    }
}

/// Exact and overlap span scores of mentions (skill and knowledge spans pooled).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct SpanScores {
    /// A predicted span counts when it equals a gold span.
    pub exact: Prf,
    /// A predicted span counts when it overlaps a gold span, and a gold span when a
    /// predicted one overlaps it.
    pub overlap: Prf,
}

/// Accumulates span matches over many texts.
#[derive(Debug, Default, Clone)]
pub struct SpanCounter {
    pred: usize,
    gold: usize,
    exact: usize,
    ov_pred: usize,
    ov_gold: usize,
}

impl SpanCounter {
    /// Adds one text's predicted and gold spans (half-open ranges in any one unit).
    pub fn add(&mut self, pred: &[(usize, usize)], gold: &[(usize, usize)]) {
        let pred: HashSet<(usize, usize)> = pred.iter().copied().collect();
        let gold: HashSet<(usize, usize)> = gold.iter().copied().collect();
        let overlaps = |a: &(usize, usize), b: &(usize, usize)| a.0 < b.1 && b.0 < a.1;
        self.pred += pred.len();
        self.gold += gold.len();
        self.exact += pred.intersection(&gold).count();
        self.ov_pred += pred
            .iter()
            .filter(|p| gold.iter().any(|g| overlaps(p, g)))
            .count();
        self.ov_gold += gold
            .iter()
            .filter(|g| pred.iter().any(|p| overlaps(p, g)))
            .count();
    }

    /// The scores so far.
    pub fn scores(&self) -> SpanScores {
        SpanScores {
            exact: Prf::new(self.pred, self.gold, self.exact, self.exact),
            overlap: Prf::new(self.pred, self.gold, self.ov_pred, self.ov_gold),
        }
    }
}

/// Gold mention spans of a sentence: skill and knowledge spans, each range once.
pub fn gold_mentions(s: &TaggedSentence) -> Vec<(usize, usize)> {
    let mut g = s.spans(MentionKind::Skill);
    g.extend(s.spans(MentionKind::Knowledge));
    g.sort();
    g.dedup();
    g
}

/// Word spans of the mentions `head` detects in `s` (encoded as `emb`).
pub fn predicted_mentions(
    head: &MentionHead,
    s: &TaggedSentence,
    emb: &TextEmbedding,
) -> Vec<(usize, usize)> {
    let (text, words) = s.text();
    head.detect(&text, emb, usize::MAX)
        .iter()
        .filter_map(|m| {
            let first = words.iter().position(|w| w.1 > m.start)?;
            let end = words.iter().rposition(|w| w.0 < m.end)? + 1;
            (first < end).then_some((first, end))
        })
        .collect()
}

/// Span scores of `head` on `sentences`, already encoded as `embs`.
pub fn evaluate(
    head: &MentionHead,
    sentences: &[TaggedSentence],
    embs: &[std::sync::Arc<TextEmbedding>],
) -> SpanScores {
    let mut c = SpanCounter::default();
    for (s, e) in sentences.iter().zip(embs) {
        c.add(&predicted_mentions(head, s, e), &gold_mentions(s));
    }
    c.scores()
}

//! Skill and knowledge mentions: which word spans of a sentence name a skill at all.
//!
//! A small tagger over the encoder's own (L2-normalised) token embeddings: each token's
//! features are its embedding, its hidden states in some earlier layers
//! ([`MentionSpec::layers`]: a frozen ranking model's last layer keeps little of where a
//! phrase starts and ends, the middle layers keep more), and the same of its two neighbours;
//! a hidden layer of `hidden` ReLU units,
//! and two independent BIO softmaxes, one for skill spans and one for knowledge spans (as
//! SkillSpan annotates them; the two may overlap). One encoder pass gives the embeddings and,
//! through this head, the mentions; the head ships in the model directory
//! ([`MentionSpec::file`], checked by sha256 like every other file), so a hot swap swaps both.
//!
//! A mention is ranked by the mean of its contextual token embeddings (see
//! [`span_embedding`]): no second encoder pass.

mod attach;
mod file;
mod gate;
mod score;
mod spans;
pub mod train;

pub use file::to_safetensors;
pub use score::{read_sentences, TaggedSentence};
pub use spans::{decode_bio, snap_to_words, trim_function_words};

use serde::{Deserialize, Serialize};

use crate::encoder::{normalize, TextEmbedding};
use crate::error::{ModelError, Result};

/// Default file name of the head inside a model directory.
pub const MENTION_FILE: &str = "mentions.safetensors";
/// Number of BIO logits: skill O/B/I, then knowledge O/B/I.
pub const N_LOGITS: usize = 6;
/// Tokens either side of a token that its features include, by default (a head's own width
/// follows from its weights' shape).
pub const CONTEXT: usize = 1;

/// The `mentions` entry of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MentionSpec {
    /// File in the model directory (listed with its sha256 in `files`).
    pub file: String,
    /// Hidden units of the tagger.
    pub hidden: usize,
    /// A token is inside a mention when `P(B) + P(I)` exceeds this (chosen on held-out
    /// training postings).
    pub threshold: f32,
    /// The same for knowledge mentions, when it differs (its probabilities run lower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_threshold: Option<f32>,
    /// Whether each token's features also hold its sentence's pooled embedding (so a header
    /// or a benefits line can be told from a requirement as a whole).
    #[serde(default)]
    pub sentence_context: bool,
    /// Neighbouring tokens either side of a token that its features include.
    #[serde(default = "default_context")]
    pub context: usize,
    /// Earlier encoder layers (1-based, below the last) whose hidden states, L2-normalised,
    /// join each token's features before its final embedding. Empty: the final embedding
    /// only (heads trained before this field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<usize>,
    /// Sentences whose gate probability (a logistic model on the sentence's pooled
    /// embedding: "does this line name a skill at all?") is below this get no mention.
    /// `None`: no gate (the file then need not hold one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentence_gate: Option<f32>,
    /// A mention's top label is kept only when it scores at least this (calibrated on
    /// annotated spans; a target's `min_score` can only raise it).
    pub label_threshold: f32,
    /// What it was trained on and how it scored, for the model card.
    #[serde(default)]
    pub report: serde_json::Value,
}

fn default_context() -> usize {
    CONTEXT
}

/// Which annotation a mention follows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum MentionKind {
    /// A skill (an ability: "communicate at all levels").
    Skill,
    /// Knowledge (a tool, field or technology: "Kubernetes").
    Knowledge,
}

/// A detected mention: a byte range of the text and the token rows it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Mention {
    /// Byte offset of its start in the text (snapped to a word start).
    pub start: usize,
    /// Byte offset of its end (snapped to a word end).
    pub end: usize,
    /// Token rows `first..last` (exclusive) of the text's embedding.
    pub tokens: (usize, usize),
    /// Skill or knowledge.
    pub kind: MentionKind,
    /// Mean `P(B) + P(I)` over its tokens.
    pub confidence: f32,
}

/// The tagger's weights, row-major.
#[derive(Debug, Clone)]
pub struct MentionHead {
    dim: usize,
    /// Earlier layers in each token's features (see [`MentionSpec::layers`]).
    layers: usize,
    hidden: usize,
    /// Features end with the sentence's pooled embedding (see [`MentionSpec::sentence_context`]).
    sentence: bool,
    /// Tokens either side of a token that its features include.
    context: usize,
    /// `[(2·context+1)·(layers+1)·dim, hidden]`, plus `dim` rows for the sentence when
    /// `sentence`; each token's block holds its `layers` earlier rows, then its final row.
    w1: Vec<f32>,
    b1: Vec<f32>,
    /// `[hidden, N_LOGITS]`.
    w2: Vec<f32>,
    b2: Vec<f32>,
    /// See [`MentionSpec::threshold`].
    pub threshold: f32,
    /// See [`MentionSpec::knowledge_threshold`] (equal to `threshold` when not set).
    pub knowledge_threshold: f32,
    /// See [`MentionSpec::label_threshold`].
    pub label_threshold: f32,
    /// Sentence gate: weights over the pooled embedding and bias (see
    /// [`MentionSpec::sentence_gate`]).
    pub gate: Option<(Vec<f32>, f32)>,
    /// Gate probability a sentence needs; 0 lets every sentence through.
    pub gate_threshold: f32,
}

/// Names of the weights in the safetensors file.
pub const W1: &str = "mentions.w1";
/// Hidden bias.
pub const B1: &str = "mentions.b1";
/// Output weight.
pub const W2: &str = "mentions.w2";
/// Output bias.
pub const B2: &str = "mentions.b2";
/// Sentence gate weights (optional).
pub const GATE_W: &str = "mentions.gate_w";
/// Sentence gate bias (optional).
pub const GATE_B: &str = "mentions.gate_b";

impl MentionHead {
    /// Width of the feature rows: the token and `context` neighbours either side, each with
    /// `layers` earlier rows, plus the sentence when `sentence`.
    pub fn feature_width(dim: usize, layers: usize, context: usize, sentence: bool) -> usize {
        (2 * context + 1) * (layers + 1) * dim + sentence as usize * dim
    }

    /// A head from its weights (shapes are checked). `w1` holds `2·context + 1` token blocks
    /// of `(layers + 1)·dim` rows, plus `dim` rows for the sentence's pooled embedding when
    /// the token blocks alone cannot fill it.
    pub fn new(
        dim: usize,
        layers: usize,
        hidden: usize,
        w1: Vec<f32>,
        b1: Vec<f32>,
        w2: Vec<f32>,
        b2: Vec<f32>,
    ) -> Result<Self> {
        let blocks = w1.len().checked_div(dim * hidden).unwrap_or(0);
        // Token blocks come in an odd count of (layers + 1)·dim rows; one more dim-block is
        // the sentence (the two readings never fit the same count).
        let per = layers + 1;
        let odd = |b: usize| b > 0 && b.is_multiple_of(per) && (b / per) % 2 == 1;
        let sentence = !odd(blocks) && blocks > 0 && odd(blocks - 1);
        let context = (blocks.saturating_sub(sentence as usize) / per).saturating_sub(1) / 2;
        let width = Self::feature_width(dim, layers, context, sentence);
        if blocks < per
            || w1.len() != width * hidden
            || b1.len() != hidden
            || w2.len() != hidden * N_LOGITS
            || b2.len() != N_LOGITS
        {
            return Err(ModelError::Weights(format!(
                "mention head weights have {}, {}, {}, {} values; a head of {hidden} units over \
                 {dim}-wide embeddings needs {}, {hidden}, {}, {N_LOGITS}: the head was trained \
                 for another model (retrain it with `uwe-trainer mentions`)",
                w1.len(),
                b1.len(),
                w2.len(),
                b2.len(),
                width * hidden,
                hidden * N_LOGITS
            )));
        }
        Ok(MentionHead {
            dim,
            layers,
            hidden,
            context,
            sentence,
            w1,
            b1,
            w2,
            b2,
            threshold: 0.5,
            knowledge_threshold: 0.5,
            label_threshold: 0.0,
            gate: None,
            gate_threshold: 0.0,
        })
    }

    /// Hidden units.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The sentence gate's probability that a sentence with this pooled embedding names a
    /// skill or knowledge span (1 without a gate).
    pub fn gate_probability(&self, pooled: &[f32]) -> f32 {
        match &self.gate {
            Some((w, b)) if w.len() == pooled.len() => {
                let z: f32 = w.iter().zip(pooled).map(|(a, x)| a * x).sum::<f32>() + b;
                1.0 / (1.0 + (-z).exp())
            }
            _ => 1.0,
        }
    }

    /// Tokens either side of a token that its features include.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Whether the features hold the sentence's pooled embedding.
    pub fn sentence_context(&self) -> bool {
        self.sentence
    }

    /// How many earlier layers each token's features hold.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Per-token probabilities `[n, 6]` of a text's embedding: skill O/B/I, knowledge O/B/I.
    /// Empty when the embedding lacks the rows the head reads (the encoder was not given
    /// the head's layers).
    pub fn probabilities(&self, emb: &TextEmbedding) -> Vec<f32> {
        let (d, h, n) = (self.dim, self.hidden, emb.n_tokens);
        let lw = self.layers * d;
        let pooled = &emb.pooled;
        if n == 0
            || emb.tokens.len() != n * d
            || emb.layer_rows.len() != n * lw
            || (self.sentence && pooled.len() != d)
        {
            if n > 0 {
                tracing::warn!(
                    rows = emb.layer_rows.len(),
                    want = n * lw,
                    "the embedding lacks the layer rows the mention tagger reads: no mentions"
                );
            }
            return vec![];
        }
        // Each token's block: its earlier layers' rows, then its final row.
        let td = lw + d;
        let joined;
        let tokens: &[f32] = if lw == 0 {
            &emb.tokens
        } else {
            let mut v = Vec::with_capacity(n * td);
            for i in 0..n {
                v.extend_from_slice(&emb.layer_rows[i * lw..(i + 1) * lw]);
                v.extend_from_slice(&emb.tokens[i * d..(i + 1) * d]);
            }
            joined = v;
            &joined
        };
        // W1 x for the concatenated features splits into one product per neighbour:
        // P = E · [W1_prev | W1_self | W1_next] computed once, then shifted and summed.
        let e = ndarray::ArrayView2::from_shape((n, td), tokens).expect("n × width rows");
        let mut hid = ndarray::Array2::<f32>::zeros((n, h));
        let c = self.context as isize;
        for (j, off) in (-c..=c).enumerate() {
            let w =
                ndarray::ArrayView2::from_shape((td, h), &self.w1[j * td * h..(j + 1) * td * h])
                    .expect("block shape");
            let p = e.dot(&w);
            for i in 0..n {
                let src = i as isize + off;
                if src < 0 || src >= n as isize {
                    continue;
                }
                let mut row = hid.row_mut(i);
                row += &p.row(src as usize);
            }
        }
        // The sentence's block is one product shared by every token: a bias per sentence.
        let mut bias = self.b1.clone();
        if self.sentence {
            let at = (2 * self.context + 1) * td * h;
            let w = ndarray::ArrayView2::from_shape((d, h), &self.w1[at..at + d * h])
                .expect("block shape");
            let s = ndarray::ArrayView1::from(pooled).dot(&w);
            bias.iter_mut().zip(s.iter()).for_each(|(b, x)| *b += x);
        }
        let w2 = ndarray::ArrayView2::from_shape((h, N_LOGITS), &self.w2).expect("w2 shape");
        hid.rows_mut().into_iter().for_each(|mut r| {
            for (x, b) in r.iter_mut().zip(&bias) {
                *x = (*x + b).max(0.0);
            }
        });
        let mut logits = hid.dot(&w2);
        let mut out = Vec::with_capacity(n * N_LOGITS);
        for mut r in logits.rows_mut() {
            for (x, b) in r.iter_mut().zip(&self.b2) {
                *x += b;
            }
            let r = r.as_slice().expect("contiguous row");
            out.extend(softmax3(&r[0..3]));
            out.extend(softmax3(&r[3..6]));
        }
        out
    }

    /// Detects the mentions of `text`, whose embedding is `emb`; at most `max` of them,
    /// the most confident kept, returned in text order.
    pub fn detect(&self, text: &str, emb: &TextEmbedding, max: usize) -> Vec<Mention> {
        let probs = self.probabilities(emb);
        if probs.is_empty() || emb.offsets.len() != emb.n_tokens {
            return vec![];
        }
        if self.gate_probability(&emb.pooled) < self.gate_threshold {
            return vec![];
        }
        let mut out = Vec::new();
        for (kind, col, threshold) in [
            (MentionKind::Skill, 0, self.threshold),
            (MentionKind::Knowledge, 3, self.knowledge_threshold),
        ] {
            let at = |i: usize| &probs[i * N_LOGITS + col..i * N_LOGITS + col + 3];
            out.extend(
                decode_bio(emb.n_tokens, threshold, at)
                    .into_iter()
                    .filter_map(|(a, b, conf)| {
                        let (s, e) = snap_to_words(
                            text,
                            emb.offsets[a].0 as usize,
                            emb.offsets[b - 1].1 as usize,
                        )?;
                        let (s, e) = trim_function_words(text, s, e)?;
                        // The token rows the trimmed words still cover.
                        let ta = (a..b).find(|&i| emb.offsets[i].1 as usize > s)?;
                        let tb = (a..b).rposition(|i| (emb.offsets[i].0 as usize) < e)? + a + 1;
                        Some(Mention {
                            start: s,
                            end: e,
                            tokens: (ta, tb.max(ta + 1)),
                            kind,
                            confidence: conf,
                        })
                    }),
            );
        }
        // Word pieces snapped to the same word merge; the same words tagged both ways are
        // one mention to rank.
        out.sort_by(|a, b| {
            (a.kind == MentionKind::Knowledge, a.start, a.end).cmp(&(
                b.kind == MentionKind::Knowledge,
                b.start,
                b.end,
            ))
        });
        out.dedup_by(|b, a| {
            let merge = a.kind == b.kind && b.start < a.end;
            if merge {
                let n_a = (a.tokens.1 - a.tokens.0) as f32;
                let n_b = (b.tokens.1 - b.tokens.0) as f32;
                a.confidence = (a.confidence * n_a + b.confidence * n_b) / (n_a + n_b);
                a.end = a.end.max(b.end);
                a.tokens = (a.tokens.0.min(b.tokens.0), a.tokens.1.max(b.tokens.1));
            }
            merge
        });
        out.sort_by_key(|a| (a.start, a.end));
        out.dedup_by(|b, a| (a.start, a.end) == (b.start, b.end));
        if out.len() > max {
            out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
            out.truncate(max);
            out.sort_by_key(|a| (a.start, a.end));
        }
        out
    }
}

fn softmax3(x: &[f32]) -> [f32; 3] {
    let m = x[0].max(x[1]).max(x[2]);
    let e = [(x[0] - m).exp(), (x[1] - m).exp(), (x[2] - m).exp()];
    let s = e[0] + e[1] + e[2];
    [e[0] / s, e[1] / s, e[2] / s]
}

/// The embedding a mention is ranked with: the mean of its contextual token rows,
/// normalised, as pooled vector; its rows as token embeddings (for a late scorer).
pub fn span_embedding(emb: &TextEmbedding, tokens: (usize, usize)) -> TextEmbedding {
    let d = emb.pooled.len();
    let (a, b) = (tokens.0.min(emb.n_tokens), tokens.1.min(emb.n_tokens));
    if a >= b || d == 0 {
        return TextEmbedding {
            pooled: vec![0.0; d],
            ..Default::default()
        };
    }
    let rows = &emb.tokens[a * d..b * d];
    let mut pooled = vec![0.0f32; d];
    for r in rows.chunks(d) {
        for (p, x) in pooled.iter_mut().zip(r) {
            *p += x;
        }
    }
    normalize(&mut pooled);
    TextEmbedding {
        pooled,
        tokens: rows.to_vec(),
        n_tokens: b - a,
        n_windows: 1,
        offsets: emb.offsets[a..b].to_vec(),
        layer_rows: vec![],
    }
}

#[cfg(test)]
mod tests;

//! Training and measuring the mention tagger on SkillSpan's BIO-tagged sentences.
//!
//! The encoder is frozen: each sentence is encoded once, its word pieces take the tag of the
//! word they belong to (a word's first piece its own tag, the others `I` inside a span), and
//! the two-layer tagger is trained on candle with cross-entropy. Training postings are split
//! by posting (one in ten held out) so the inside threshold is chosen on postings the tagger
//! never saw; the dev sentences only measure.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

pub use super::attach::{train_and_attach, Thresholds};
use super::gate::{auc, fit_gate};
pub use super::score::{
    evaluate, gold_mentions, predicted_mentions, read_sentences, Prf, SpanCounter, SpanScores,
    TaggedSentence,
};
use super::{MentionHead, MentionKind, MentionSpec, CONTEXT, N_LOGITS};
use crate::encoder::{Encoder, TextEmbedding};
use crate::error::{ModelError, Result};

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Hidden units.
    pub hidden: usize,
    /// Passes over the training tokens.
    pub epochs: usize,
    /// Peak learning rate (AdamW, linear decay).
    pub lr: f64,
    /// Tokens per step.
    pub batch: usize,
    /// Seed of the initial weights and the shuffles.
    pub seed: u64,
    /// Give every token its sentence's pooled embedding too.
    pub sentence_context: bool,
    /// Neighbours either side of a token in its features.
    pub context: usize,
    /// The fold of training postings held out (see [`holdout_fold`]).
    pub holdout_fold: u64,
    /// Earlier encoder layers whose hidden states join each token's features (see
    /// [`MentionSpec::layers`]).
    pub layers: Vec<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            hidden: 256,
            epochs: 8,
            lr: 2e-3,
            batch: 512,
            seed: 42,
            sentence_context: false,
            context: CONTEXT,
            holdout_fold: 0,
            layers: LAYERS.to_vec(),
        }
    }
}

/// What a training run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Training sentences and their word pieces.
    pub train_sentences: usize,
    /// Word pieces trained on.
    pub train_tokens: usize,
    /// Sentences held out (one posting in ten) to choose the threshold.
    pub holdout_sentences: usize,
    /// Which fold of the training postings was held out.
    #[serde(default)]
    pub holdout_fold: u64,
    /// The chosen inside threshold.
    pub threshold: f32,
    /// Scores on the held-out training postings at that threshold.
    pub holdout: SpanScores,
    /// Mean loss of the last epoch.
    pub final_loss: f32,
    /// Sentence gate's ROC AUC on the held-out sentences (span or none), percent.
    #[serde(default)]
    pub gate_holdout_auc: f64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Earlier layers a new tagger reads by default (of a 6-layer model): with them, span
/// detection on the SkillSpan dev sentences finds far more of the annotated spans at the
/// same precision than from the last layer alone (BENCHMARKS.md, "Tagger features from
/// earlier layers").
pub const LAYERS: &[usize] = &[4, 5];

/// How many folds the training postings are split into; the tagger holds one out.
pub const HOLDOUT_FOLDS: u64 = 10;

/// The fold of a training posting: a stable FNV-1a of (source, idx) modulo
/// [`HOLDOUT_FOLDS`], so a posting's sentences stay together. The tagger's training holds one
/// fold out (fold 0 unless asked otherwise) to choose its threshold; thresholds downstream of
/// the tagger are calibrated on held-out postings too, never on the dev sets.
pub fn holdout_fold(source: &str, idx: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in source.bytes().chain(idx.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h % HOLDOUT_FOLDS
}

/// Whether the shipped tagger's training (fold 0) holds this posting out.
pub fn is_holdout_posting(source: &str, idx: u64) -> bool {
    holdout_fold(source, idx) == 0
}

/// The fold a tagger's training held out, from its manifest entry (0 when not recorded).
pub fn holdout_fold_of(spec: &MentionSpec) -> u64 {
    spec.report
        .pointer("/training/holdout_fold")
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// BIO class of each word piece of `s` for one kind: 0 = O, 1 = B, 2 = I.
fn piece_labels(
    s: &TaggedSentence,
    words: &[(usize, usize)],
    emb: &TextEmbedding,
    kind: MentionKind,
) -> Vec<u32> {
    let tags = match kind {
        MentionKind::Skill => &s.tags_skill,
        MentionKind::Knowledge => &s.tags_knowledge,
    };
    let mut last_word = usize::MAX;
    emb.offsets
        .iter()
        .map(|&(a, _)| {
            let w = words
                .partition_point(|r| r.1 <= a as usize)
                .min(words.len() - 1);
            let first = w != last_word;
            last_word = w;
            match (tags[w].as_bytes().first(), first) {
                (Some(b'B'), true) => 1,
                (Some(b'B' | b'I'), _) => 2,
                _ => 0,
            }
        })
        .collect()
}

/// Feature rows `[e_{i-c}, …, e_i, …, e_{i+c}]` (each `e` the token's `layers` earlier rows,
/// then its final row; the pooled sentence after them when `sentence`) of every token of
/// `emb`, appended to `out`.
fn push_features(
    emb: &TextEmbedding,
    dim: usize,
    layers: usize,
    context: usize,
    sentence: bool,
    out: &mut Vec<f32>,
) {
    let n = emb.n_tokens;
    let c = context as isize;
    let lw = layers * dim;
    for i in 0..n {
        for off in -c..=c {
            let j = i as isize + off;
            if j < 0 || j >= n as isize {
                out.extend(std::iter::repeat_n(0.0, lw + dim));
            } else {
                let j = j as usize;
                out.extend_from_slice(&emb.layer_rows[j * lw..(j + 1) * lw]);
                out.extend_from_slice(&emb.tokens[j * dim..(j + 1) * dim]);
            }
        }
        if sentence {
            out.extend_from_slice(&emb.pooled);
        }
    }
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn candle_err(e: candle_core::Error) -> ModelError {
    ModelError::Runtime(format!("mention training: {e}"))
}

/// Trains a tagger on `train` with `enc`'s token embeddings; returns it with its threshold
/// chosen on the held-out postings.
pub fn train(
    enc: &mut Encoder,
    train: &[TaggedSentence],
    opts: &TrainOptions,
) -> Result<(MentionHead, TrainReport)> {
    let started = std::time::Instant::now();
    let dim = enc.manifest().dim;
    // The encoder hands out the layers this tagger reads (and keeps doing so for the
    // measuring that follows).
    enc.set_feature_layers(&opts.layers)?;
    let n_layers = opts.layers.len();
    let (hold, fit): (Vec<&TaggedSentence>, Vec<&TaggedSentence>) = train
        .iter()
        .partition(|s| holdout_fold(&s.source, s.idx) == opts.holdout_fold);
    let encode = |enc: &mut Encoder, ss: &[&TaggedSentence]| {
        let texts: Vec<String> = ss.iter().map(|s| s.text().0).collect();
        enc.encode(&texts)
    };
    eprintln!("mentions: encoding {} training sentences", fit.len());
    let fit_embs = encode(enc, &fit)?;
    let mut feats: Vec<f32> = Vec::new();
    let mut ys: Vec<u32> = Vec::new();
    let mut yk: Vec<u32> = Vec::new();
    for (s, e) in fit.iter().zip(&fit_embs) {
        if e.n_tokens == 0 {
            continue;
        }
        let words = s.text().1;
        push_features(
            e,
            dim,
            n_layers,
            opts.context,
            opts.sentence_context,
            &mut feats,
        );
        ys.extend(piece_labels(s, &words, e, MentionKind::Skill));
        yk.extend(piece_labels(s, &words, e, MentionKind::Knowledge));
    }
    let n = ys.len();
    let width = MentionHead::feature_width(dim, n_layers, opts.context, opts.sentence_context);
    let dev = Device::Cpu;
    let ce = candle_err;
    let x_all = Tensor::from_vec(feats, (n, width), &dev).map_err(ce)?;
    let ys_all = Tensor::from_vec(ys, n, &dev).map_err(ce)?;
    let yk_all = Tensor::from_vec(yk, n, &dev).map_err(ce)?;
    let h = opts.hidden;
    // candle's CPU device cannot be seeded: the initial weights come from our own generator.
    let mut rng = opts.seed | 1;
    let mut normal = |n: usize, std: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1 = (xorshift(&mut rng) >> 11) as f32 / (1u64 << 53) as f32 + 1e-9;
                let u2 = (xorshift(&mut rng) >> 11) as f32 / (1u64 << 53) as f32;
                std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect()
    };
    let init = |v: Vec<f32>, shape: (usize, usize)| {
        Tensor::from_vec(v, shape, &dev).and_then(|t| Var::from_tensor(&t))
    };
    let w1 = init(normal(width * h, (2.0 / width as f32).sqrt()), (width, h)).map_err(ce)?;
    let b1 = Var::zeros(h, DType::F32, &dev).map_err(ce)?;
    let w2 = init(normal(h * N_LOGITS, (1.0 / h as f32).sqrt()), (h, N_LOGITS)).map_err(ce)?;
    let b2 = Var::zeros(N_LOGITS, DType::F32, &dev).map_err(ce)?;
    let mut opt = AdamW::new(
        vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()],
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.01,
            ..Default::default()
        },
    )
    .map_err(ce)?;
    let steps_per_epoch = n.div_ceil(opts.batch);
    let total = steps_per_epoch * opts.epochs;
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut final_loss = 0f32;
    let mut step = 0usize;
    for epoch in 0..opts.epochs {
        // Fisher-Yates with xorshift: reproducible without another dependency.
        for i in (1..order.len()).rev() {
            order.swap(i, (xorshift(&mut rng) % (i as u64 + 1)) as usize);
        }
        let mut sum = 0f32;
        for chunk in order.chunks(opts.batch) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &dev).map_err(ce)?;
            let x = x_all.index_select(&idx, 0).map_err(ce)?;
            let logits = x
                .matmul(w1.as_tensor())
                .and_then(|t| t.broadcast_add(b1.as_tensor()))
                .and_then(|t| t.relu())
                .and_then(|t| t.matmul(w2.as_tensor()))
                .and_then(|t| t.broadcast_add(b2.as_tensor()))
                .map_err(ce)?;
            let ls = candle_nn::loss::cross_entropy(
                &logits.narrow(1, 0, 3).map_err(ce)?,
                &ys_all.index_select(&idx, 0).map_err(ce)?,
            )
            .map_err(ce)?;
            let lk = candle_nn::loss::cross_entropy(
                &logits.narrow(1, 3, 3).map_err(ce)?,
                &yk_all.index_select(&idx, 0).map_err(ce)?,
            )
            .map_err(ce)?;
            let loss = (ls + lk).map_err(ce)?;
            let lr = opts.lr * (1.0 - step as f64 / total as f64).max(0.05);
            opt.set_learning_rate(lr);
            opt.backward_step(&loss).map_err(ce)?;
            sum += loss.to_scalar::<f32>().map_err(ce)?;
            step += 1;
        }
        final_loss = sum / steps_per_epoch as f32;
        eprintln!(
            "mentions: epoch {}/{} loss {final_loss:.4} ({:.0} s)",
            epoch + 1,
            opts.epochs,
            started.elapsed().as_secs_f64()
        );
    }
    let flat = |v: &Var| -> Result<Vec<f32>> {
        v.as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(ce)
    };
    let mut head = MentionHead::new(
        dim,
        n_layers,
        h,
        flat(&w1)?,
        flat(&b1)?,
        flat(&w2)?,
        flat(&b2)?,
    )?;
    // The inside threshold with the best exact F1 on the held-out postings.
    let hold_owned: Vec<TaggedSentence> = hold.iter().map(|s| (*s).clone()).collect();
    let hold_embs = encode(enc, &hold)?;
    let mut best = (0.5f32, SpanScores::default());
    for t in [0.3f32, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6] {
        head.threshold = t;
        head.knowledge_threshold = t;
        let sc = evaluate(&head, &hold_owned, &hold_embs);
        if sc.exact.f1 > best.1.exact.f1 {
            best = (t, sc);
        }
    }
    head.threshold = best.0;
    head.knowledge_threshold = best.0;
    // The sentence gate: "does this line name a span at all?", on the pooled embedding.
    let has_span = |s: &TaggedSentence| !gold_mentions(s).is_empty();
    let xs: Vec<&[f32]> = fit_embs.iter().map(|e| &e.pooled[..]).collect();
    let ys: Vec<bool> = fit.iter().map(|s| has_span(s)).collect();
    head.gate = Some(fit_gate(&xs, &ys, dim));
    let gate_auc = auc(&hold_embs
        .iter()
        .zip(&hold)
        .map(|(e, s)| (head.gate_probability(&e.pooled), has_span(s)))
        .collect::<Vec<_>>());
    Ok((
        head,
        TrainReport {
            train_sentences: fit.len(),
            train_tokens: n,
            holdout_sentences: hold.len(),
            holdout_fold: opts.holdout_fold,
            threshold: best.0,
            holdout: best.1,
            final_loss,
            gate_holdout_auc: (gate_auc * 10000.0).round() / 100.0,
            seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(tokens: &[&str], skill: &[&str], know: &[&str]) -> TaggedSentence {
        TaggedSentence {
            idx: 1,
            source: "tech".into(),
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
            tags_skill: skill.iter().map(|s| s.to_string()).collect(),
            tags_knowledge: know.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn postings_fall_into_ten_stable_folds_fold_zero_being_the_shipped_holdout() {
        let mut sizes = [0usize; HOLDOUT_FOLDS as usize];
        for source in ["tech", "house"] {
            for idx in 0..70 {
                let f = holdout_fold(source, idx);
                assert_eq!(f, holdout_fold(source, idx), "stable");
                assert_eq!(f == 0, is_holdout_posting(source, idx));
                sizes[f as usize] += 1;
            }
        }
        assert!(
            sizes.iter().all(|&n| n > 0),
            "every fold holds postings: {sizes:?}"
        );
        let spec = |report| MentionSpec {
            file: "m".into(),
            hidden: 1,
            threshold: 0.5,
            knowledge_threshold: None,
            sentence_context: false,
            context: 1,
            layers: vec![],
            sentence_gate: None,
            label_threshold: 0.5,
            report,
        };
        assert_eq!(holdout_fold_of(&spec(serde_json::json!({}))), 0);
        let r = serde_json::json!({"training": {"holdout_fold": 7}});
        assert_eq!(holdout_fold_of(&spec(r)), 7);
    }

    #[test]
    fn gold_spans_follow_bio_and_pool_both_kinds() {
        let s = sent(
            &["Build", "APIs", "in", "Rust", "and", "Go", "fast"],
            &["B", "I", "I", "I", "O", "I", "B"],
            &["O", "O", "O", "B", "O", "B", "O"],
        );
        assert_eq!(s.spans(MentionKind::Skill), vec![(0, 4), (5, 6), (6, 7)]);
        assert_eq!(s.spans(MentionKind::Knowledge), vec![(3, 4), (5, 6)]);
        assert_eq!(gold_mentions(&s), vec![(0, 4), (3, 4), (5, 6), (6, 7)]);
        let (text, words) = s.text();
        assert_eq!(&text[words[3].0..words[3].1], "Rust");
    }

    #[test]
    fn span_counter_scores_exact_and_overlap() {
        let mut c = SpanCounter::default();
        c.add(&[(0, 2), (5, 6), (8, 9)], &[(0, 2), (4, 7)]);
        let s = c.scores();
        assert_eq!((s.exact.predicted, s.exact.gold), (3, 2));
        assert_eq!(s.exact.precision, 33.33);
        assert_eq!(s.exact.recall, 50.0);
        assert_eq!(s.overlap.precision, 66.67);
        assert_eq!(s.overlap.recall, 100.0);
        assert_eq!(Prf::new(0, 0, 0, 0).f1, 0.0);
    }

    #[test]
    fn word_pieces_take_their_words_tags() {
        let s = sent(&["use", "Kubernetes"], &["O", "O"], &["O", "B"]);
        let (_, words) = s.text();
        let emb = TextEmbedding {
            pooled: vec![1.0],
            tokens: vec![1.0; 4],
            n_tokens: 4,
            n_windows: 1,
            offsets: vec![(0, 3), (4, 8), (8, 12), (12, 14)],
            layer_rows: vec![],
        };
        assert_eq!(
            piece_labels(&s, &words, &emb, MentionKind::Knowledge),
            vec![0, 1, 2, 2]
        );
        assert_eq!(
            piece_labels(&s, &words, &emb, MentionKind::Skill),
            vec![0, 0, 0, 0]
        );
    }
}

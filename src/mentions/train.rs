//! Training and measuring the mention tagger on SkillSpan's BIO-tagged sentences.
//!
//! The encoder is frozen: each sentence is encoded once, its word pieces take the tag of the
//! word they belong to (a word's first piece its own tag, the others `I` inside a span), and
//! the two-layer tagger is trained on candle with cross-entropy. Training postings are split
//! by posting (one in ten held out) so the inside threshold is chosen on postings the tagger
//! never saw; the dev sentences only measure.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::{MentionHead, MentionKind, CONTEXT, N_LOGITS};
use crate::encoder::{Encoder, TextEmbedding};
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

fn split_key(s: &TaggedSentence) -> bool {
    is_holdout_posting(&s.source, s.idx)
}

/// Whether the tagger's training holds this posting out (to choose its threshold): a
/// stable FNV-1a of (source, idx), one posting in ten, whole. Thresholds downstream of the
/// tagger are calibrated on these postings too, never on the dev sets.
pub fn is_holdout_posting(source: &str, idx: u64) -> bool {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in source.bytes().chain(idx.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h.is_multiple_of(10)
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

/// Feature rows `[e_{i-1}, e_i, e_{i+1}]` (and the pooled sentence when `sentence`) of every
/// token of `emb`, appended to `out`.
fn push_features(emb: &TextEmbedding, dim: usize, sentence: bool, out: &mut Vec<f32>) {
    let n = emb.n_tokens;
    for i in 0..n {
        for off in -(CONTEXT as isize)..=CONTEXT as isize {
            let j = i as isize + off;
            if j < 0 || j >= n as isize {
                out.extend(std::iter::repeat_n(0.0, dim));
            } else {
                let j = j as usize;
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
    let (hold, fit): (Vec<&TaggedSentence>, Vec<&TaggedSentence>) =
        train.iter().partition(|s| split_key(s));
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
        push_features(e, dim, opts.sentence_context, &mut feats);
        ys.extend(piece_labels(s, &words, e, MentionKind::Skill));
        yk.extend(piece_labels(s, &words, e, MentionKind::Knowledge));
    }
    let n = ys.len();
    let width = MentionHead::feature_width(dim, opts.sentence_context);
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
    let mut head = MentionHead::new(dim, h, flat(&w1)?, flat(&b1)?, flat(&w2)?, flat(&b2)?)?;
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
            threshold: best.0,
            holdout: best.1,
            final_loss,
            gate_holdout_auc: (gate_auc * 10000.0).round() / 100.0,
            seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        },
    ))
}

/// Logistic regression of `ys` on `xs` (full-batch Adam, 800 steps, small L2): the
/// sentence gate's weights and bias.
fn fit_gate(xs: &[&[f32]], ys: &[bool], dim: usize) -> (Vec<f32>, f32) {
    let n = xs.len().max(1) as f32;
    let pos = ys.iter().filter(|&&y| y).count() as f32;
    let prior = ((pos + 1.0) / (n - pos + 1.0)).ln();
    let mut w = vec![0f32; dim + 1];
    w[dim] = prior;
    let (mut m, mut v) = (vec![0f32; dim + 1], vec![0f32; dim + 1]);
    let (lr, b1, b2, l2) = (0.05f32, 0.9f32, 0.999f32, 1e-4f32);
    for step in 1..=800 {
        let mut g = vec![0f32; dim + 1];
        for (x, &y) in xs.iter().zip(ys) {
            if x.len() != dim {
                continue;
            }
            let z: f32 = w[..dim].iter().zip(*x).map(|(a, b)| a * b).sum::<f32>() + w[dim];
            let err = 1.0 / (1.0 + (-z).exp()) - y as u8 as f32;
            g[..dim]
                .iter_mut()
                .zip(*x)
                .for_each(|(gi, xi)| *gi += err * xi);
            g[dim] += err;
        }
        for i in 0..=dim {
            let gi = g[i] / n + if i < dim { l2 * w[i] } else { 0.0 };
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let mh = m[i] / (1.0 - b1.powi(step));
            let vh = v[i] / (1.0 - b2.powi(step));
            w[i] -= lr * mh / (vh.sqrt() + 1e-8);
        }
    }
    let b = w.pop().unwrap_or(0.0);
    (w, b)
}

/// Area under the ROC curve of `(score, positive)` pairs (ties count half).
fn auc(pairs: &[(f32, bool)]) -> f64 {
    let mut v = pairs.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut n_pos) = (0f64, 0f64);
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        for p in &v[i..j] {
            if p.1 {
                rank_sum += mid;
                n_pos += 1.0;
            }
        }
        i = j;
    }
    let n_neg = v.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return 0.5;
    }
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Which thresholds a newly trained tagger ships with.
#[derive(Debug, Clone, Copy)]
pub enum Thresholds<'a> {
    /// The inside threshold chosen on the held-out postings, and this label threshold.
    Fresh {
        /// See [`super::MentionSpec::label_threshold`].
        label_threshold: f32,
    },
    /// Those of a calibrated tagger it replaces (with its calibration record).
    Keep(&'a super::MentionSpec),
}

/// Trains a tagger on `model_dir`'s token embeddings, measures it on `dev`, and attaches it
/// to `model_dir` and to each of `also` (directories whose manifest names the same graph).
/// Returns the manifest's `report` value.
pub fn train_and_attach(
    model_dir: &Path,
    also: &[std::path::PathBuf],
    train_path: &Path,
    dev_path: &Path,
    opts: &TrainOptions,
    thresholds: Thresholds<'_>,
    cfg: &crate::encoder::EncoderConfig,
) -> Result<serde_json::Value> {
    let (label_threshold, keep_thresholds) = match thresholds {
        Thresholds::Fresh { label_threshold } => (label_threshold, None),
        Thresholds::Keep(spec) => (spec.label_threshold, Some(spec)),
    };
    let dir = crate::model::ModelDir::open(model_dir)?;
    for a in also {
        let m = a.join(crate::model::MANIFEST_FILE);
        let text = std::fs::read_to_string(&m).map_err(ModelError::io(&m))?;
        let other: crate::model::Manifest =
            serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
                path: m.clone(),
                msg: e.to_string(),
            })?;
        let graph = crate::model::ONNX_FILE;
        if other.files.get(graph) != dir.manifest.files.get(graph) {
            return Err(ModelError::Manifest {
                path: m,
                msg: format!(
                    "names another {graph} than {}: a tagger only fits the graph it was trained on",
                    model_dir.display()
                ),
            });
        }
    }
    let mut enc = Encoder::load(&dir, cfg)?;
    let train_set = read_sentences(train_path)?;
    let dev_set = read_sentences(dev_path)?;
    let (mut head, report) = train(&mut enc, &train_set, opts)?;
    head.label_threshold = label_threshold;
    // A retrained tagger keeps the operating point the current one was calibrated at.
    if let Some(k) = keep_thresholds {
        head.threshold = k.threshold;
        head.knowledge_threshold = k.knowledge_threshold.unwrap_or(k.threshold);
        head.label_threshold = k.label_threshold;
        head.gate_threshold = k.sentence_gate.unwrap_or(0.0);
    }
    let dev_texts: Vec<String> = dev_set.iter().map(|s| s.text().0).collect();
    let dev_embs = enc.encode(&dev_texts)?;
    let dev_scores = evaluate(&head, &dev_set, &dev_embs);
    let mut value = serde_json::json!({
        "train": train_path.display().to_string(),
        "dev": dev_path.display().to_string(),
        "hidden": opts.hidden,
        "epochs": opts.epochs,
        "lr": opts.lr,
        "batch": opts.batch,
        "seed": opts.seed,
        "sentence_context": opts.sentence_context,
        "training": report,
        "dev_sentences": dev_set.len(),
        "dev_spans": dev_scores,
    });
    if let Some(c) = keep_thresholds.and_then(|k| k.report.get("calibration")) {
        value["calibration"] = c.clone();
    }
    let spec = super::MentionSpec {
        file: super::MENTION_FILE.into(),
        hidden: opts.hidden,
        sentence_context: head.sentence_context(),
        sentence_gate: (head.gate.is_some() && head.gate_threshold > 0.0)
            .then_some(head.gate_threshold),
        threshold: head.threshold,
        knowledge_threshold: (head.knowledge_threshold != head.threshold)
            .then_some(head.knowledge_threshold),
        label_threshold: head.label_threshold,
        report: value.clone(),
    };
    let bytes = to_safetensors(&head)?;
    for d in std::iter::once(&model_dir.to_path_buf()).chain(also) {
        crate::model::attach_mentions(d, &spec, &bytes)?;
    }
    // Reopening checks the sha256 just written and that the head loads.
    crate::model::ModelDir::open(model_dir)?
        .mention_head()?
        .ok_or_else(|| ModelError::Weights("the tagger was not attached".into()))?;
    Ok(value)
}

/// Writes `head` as safetensors bytes.
pub fn to_safetensors(head: &MentionHead) -> Result<Vec<u8>> {
    let tensors = head.tensors();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let bytes: &[u8] = bytemuck::cast_slice(data);
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.to_string(), v))
                .map_err(|e| ModelError::Weights(format!("{name}: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| ModelError::Weights(e.to_string()))
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
    fn gate_separates_and_auc_ranks() {
        let xs: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![if i % 2 == 0 { 1.0 } else { -1.0 }, 0.5])
            .collect();
        let refs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
        let ys: Vec<bool> = (0..40).map(|i| i % 2 == 0).collect();
        let (w, b) = fit_gate(&refs, &ys, 2);
        let p = |x: &[f32]| 1.0 / (1.0 + (-(w[0] * x[0] + w[1] * x[1] + b)).exp());
        assert!(p(&[1.0, 0.5]) > 0.9 && p(&[-1.0, 0.5]) < 0.1);
        assert_eq!(auc(&[(0.9, true), (0.1, false)]), 1.0);
        assert_eq!(auc(&[(0.1, true), (0.9, false)]), 0.0);
        assert_eq!(auc(&[(0.5, true), (0.5, false)]), 0.5);
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

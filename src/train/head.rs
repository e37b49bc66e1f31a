//! The projection head and its training objective, on candle.
//!
//! The head is `W = I + A` applied to the encoder's last hidden states; `A` starts at zero,
//! so training starts from the base model. The loss is UWE's many-to-many, symmetric
//! InfoNCE: in-batch negatives, a query's other positives in the batch masked (not counted
//! as negatives), both directions, with scores from the soft late interaction the runtime
//! uses, plus the same loss on pooled cosines (the runtime's first-stage ranker).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use half::f16;

/// Hidden states of one text: `rows × dim`, `[CLS] … [SEP]`, f16 to halve memory.
#[derive(Debug, Clone)]
pub struct Hidden {
    /// Row-major states.
    pub rows: Vec<f16>,
    /// Number of rows (word pieces + 2).
    pub n: usize,
}

/// Objective settings.
#[derive(Debug, Clone, Copy)]
pub struct Objective {
    /// Softmax temperature of the soft late interaction (the manifest's τ).
    pub late_temperature: f32,
    /// Temperature of the InfoNCE logits.
    pub nce_temperature: f32,
}

/// What a training run changes: a function from the frozen encoder's token states to the
/// final token states, with its variables and the named weights it exports.
pub trait Trainable {
    /// Token states `[b, l, d]` from input states `[b, l, d]` and the row mask `[b, l]`.
    fn forward(&self, x: &Tensor, mask_all: &Tensor) -> candle_core::Result<Tensor>;
    /// The variables the optimiser updates.
    fn vars(&self) -> Vec<Var>;
    /// Named f32 weights for the graph builder (Hugging Face names, or [`crate::model::graph::HEAD_WEIGHT`]).
    fn export(&self) -> candle_core::Result<Vec<(String, Tensor)>>;
    /// Sets the variables from weights named as [`Trainable::export`] names them (resume).
    fn restore(&self, named: &HashMap<String, Tensor>) -> candle_core::Result<()> {
        for (name, var) in self.export()?.iter().map(|(n, _)| n).zip(self.vars()) {
            let t = named
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {name}")))?;
            var.set(t)?;
        }
        Ok(())
    }
    /// Width of the token states.
    fn dim(&self) -> usize;
}

/// The trainable head.
pub struct Head {
    /// The learned residual `A`.
    pub a: Var,
    /// Width.
    pub dim: usize,
}

fn cpu() -> Device {
    Device::Cpu
}

impl Head {
    /// A zero residual (the identity head).
    pub fn new(dim: usize) -> candle_core::Result<Self> {
        Ok(Head {
            a: Var::zeros((dim, dim), DType::F32, &cpu())?,
            dim,
        })
    }

    /// `W = I + A`.
    pub fn weight(&self) -> candle_core::Result<Tensor> {
        Tensor::eye(self.dim, DType::F32, &cpu())?.add(self.a.as_tensor())
    }
}

impl Trainable for Head {
    fn forward(&self, x: &Tensor, _mask_all: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        x.reshape((b * l, d))?
            .matmul(&self.weight()?.t()?)?
            .reshape((b, l, d))
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.a.clone()]
    }

    fn export(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        Ok(vec![(
            crate::model::graph::HEAD_WEIGHT.to_string(),
            self.weight()?,
        )])
    }

    fn restore(&self, named: &HashMap<String, Tensor>) -> candle_core::Result<()> {
        let w = named
            .get(crate::model::graph::HEAD_WEIGHT)
            .ok_or_else(|| candle_core::Error::Msg("checkpoint lacks head.weight".into()))?;
        self.a
            .set(&w.sub(&Tensor::eye(self.dim, DType::F32, &cpu())?)?)
    }

    fn dim(&self) -> usize {
        self.dim
    }
}

/// Padded batch of hidden states: `[b, l, d]` plus masks `[b, l]` over all rows (pooling)
/// and over word pieces only (late interaction).
fn pad(items: &[&Hidden], dim: usize) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let l = items.iter().map(|h| h.n).max().unwrap_or(2);
    let b = items.len();
    let mut x = vec![0f32; b * l * dim];
    let mut all = vec![0f32; b * l];
    let mut words = vec![0f32; b * l];
    for (i, h) in items.iter().enumerate() {
        for r in 0..h.n {
            for k in 0..dim {
                x[(i * l + r) * dim + k] = h.rows[r * dim + k].to_f32();
            }
            all[i * l + r] = 1.0;
            if r > 0 && r + 1 < h.n {
                words[i * l + r] = 1.0;
            }
        }
        if h.n <= 2 {
            // No word pieces: let [CLS] stand in, so the row is not empty.
            words[i * l] = 1.0;
        }
    }
    Ok((
        Tensor::from_vec(x, (b, l, dim), &cpu())?,
        Tensor::from_vec(all, (b, l), &cpu())?,
        Tensor::from_vec(words, (b, l), &cpu())?,
    ))
}

fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    // Clamp before the square root: padded rows are zero, and sqrt's gradient at 0 is infinite.
    let n = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .clamp(1e-24, f64::MAX)?
        .sqrt()?;
    x.broadcast_div(&n)
}

/// Normalised pooled embeddings `[b, d]` and token rows `[b, l, d]` of final token states,
/// as the runtime computes them (masked mean, then L2).
pub fn pool(y: &Tensor, mask_all: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let m = mask_all.unsqueeze(2)?;
    let sum = y.broadcast_mul(&m)?.sum(1)?;
    let cnt = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let pooled = l2_normalize(&sum.broadcast_div(&cnt)?)?;
    Ok((pooled, l2_normalize(y)?))
}

/// Soft late-interaction scores `[bq, bt]` between every query and every target.
pub fn late_scores(
    q: &Tensor,
    q_words: &Tensor,
    t: &Tensor,
    t_words: &Tensor,
    tau: f32,
) -> candle_core::Result<Tensor> {
    let (bq, lq, d) = q.dims3()?;
    let (bt, lt, _) = t.dims3()?;
    let sims = q
        .reshape((bq * lq, d))?
        .matmul(&t.reshape((bt * lt, d))?.t()?)?
        .reshape((bq, lq, bt, lt))?;
    // Padding and special tokens of the target get no attention.
    let neg = ((t_words.reshape((1, 1, bt, lt))? - 1.0)? * 1e4)?;
    let z = (sims.broadcast_add(&neg)? / tau as f64)?;
    let max = z.max_keepdim(D::Minus1)?.detach();
    let e = z.broadcast_sub(&max)?.exp()?;
    let attn = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    let per_token = attn.mul(&sims)?.sum(D::Minus1)?; // [bq, lq, bt]
    let qm = q_words.unsqueeze(2)?; // [bq, lq, 1]
    let total = per_token.broadcast_mul(&qm)?.sum(1)?; // [bq, bt]
    total.broadcast_div(&q_words.sum_keepdim(1)?.clamp(1.0, f64::MAX)?)
}

/// Symmetric InfoNCE over `scores [b, b]` where `same[i][j]` marks pairs sharing a target.
fn info_nce(scores: &Tensor, same: &Tensor, temp: f32) -> candle_core::Result<Tensor> {
    let b = scores.dim(0)?;
    let eye = Tensor::eye(b, DType::F32, &cpu())?;
    // Other positives are masked out of the denominators, not counted as negatives.
    let mask = ((same - &eye)? * -1e4)?;
    let logits = ((scores / temp as f64)? + mask)?;
    let ce = |l: &Tensor| -> candle_core::Result<Tensor> {
        let max = l.max_keepdim(1)?.detach();
        let lse = l
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(1)?
            .log()?
            .add(&max)?;
        let diag = l.mul(&eye)?.sum_keepdim(1)?;
        lse.sub(&diag)?.mean_all()
    };
    (ce(&logits)? + ce(&logits.t()?)?)? * 0.5
}

/// One batch's loss. Pairs `i` and `j` are positives of each other when they share their
/// target (`target_ids`) or their query text (`query_ids`: a sentence naming several skills).
pub fn batch_loss(
    model: &dyn Trainable,
    queries: &[&Hidden],
    targets: &[&Hidden],
    query_ids: &[usize],
    target_ids: &[usize],
    obj: Objective,
) -> candle_core::Result<Tensor> {
    let (qx, qa, qw) = pad(queries, model.dim())?;
    let (tx, ta, tw) = pad(targets, model.dim())?;
    let (qp, qt) = pool(&model.forward(&qx, &qa)?, &qa)?;
    let (tp, tt) = pool(&model.forward(&tx, &ta)?, &ta)?;
    let b = queries.len();
    let same: Vec<f32> = (0..b * b)
        .map(|k| {
            let (i, j) = (k / b, k % b);
            if target_ids[i] == target_ids[j] || query_ids[i] == query_ids[j] {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let same = Tensor::from_vec(same, (b, b), &cpu())?;
    let pooled = qp.matmul(&tp.t()?)?;
    let late = late_scores(&qt, &qw, &tt, &tw, obj.late_temperature)?;
    info_nce(&late, &same, obj.nce_temperature)? + info_nce(&pooled, &same, obj.nce_temperature)?
}

/// AdamW with linear warm-up and linear decay.
pub struct Trainer {
    /// The optimiser.
    pub opt: AdamW,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
}

impl Trainer {
    /// AdamW over the model's variables.
    pub fn new(
        model: &dyn Trainable,
        lr: f64,
        warmup: usize,
        total: usize,
    ) -> candle_core::Result<Self> {
        let opt = AdamW::new(
            model.vars(),
            ParamsAdamW {
                lr,
                weight_decay: 0.01,
                ..Default::default()
            },
        )?;
        Ok(Trainer {
            opt,
            lr,
            warmup,
            total,
        })
    }

    /// One optimisation step at `step` (0-based).
    pub fn step(&mut self, loss: &Tensor, step: usize) -> candle_core::Result<()> {
        let lr = if step < self.warmup {
            self.lr * (step + 1) as f64 / self.warmup as f64
        } else {
            self.lr
                * (1.0 - (step - self.warmup) as f64 / (self.total - self.warmup).max(1) as f64)
                    .max(0.05)
        };
        self.opt.set_learning_rate(lr);
        self.opt.backward_step(loss)
    }
}

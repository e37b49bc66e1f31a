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

/// Objective settings: the InfoNCE is summed over the scorers the runtime may serve with.
/// The pooled term is always there (pooled cosines rank first in every scorer).
#[derive(Debug, Clone, Copy)]
pub struct Objective {
    /// Softmax temperature of the soft late interaction (the manifest's τ).
    pub late_temperature: f32,
    /// Temperature of the InfoNCE logits.
    pub nce_temperature: f32,
    /// Whether the loss has a term on soft late-interaction scores.
    pub late: bool,
    /// A term on the attend scorer's scores ([`crate::model::ScorerSpec::Attend`]), with
    /// the temperature and blend it is served with: training with the objective a space is
    /// ranked by (ConTeXT-match trains its token attention so).
    pub attend: Option<AttendTerm>,
}

impl Objective {
    /// The shipped recipe's objective: pooled and late terms.
    pub fn late_and_pooled(late_temperature: f32, nce_temperature: f32) -> Self {
        Objective {
            late_temperature,
            nce_temperature,
            late: true,
            attend: None,
        }
    }

    /// The objective of a model served as `m` says, so that a retrain (the trainer
    /// service's feedback runs) trains what is served: the pooled term always, the late
    /// term when the default scorer is late, and the attend term with the served
    /// temperature and blend when a space is ranked with attend (on skill batches only,
    /// unless attend is the default scorer, as `--objective attend-skills` does).
    pub fn served(m: &crate::model::Manifest, late_temperature: f32, nce_temperature: f32) -> Self {
        use crate::model::ScorerSpec;
        let attend_of = |s: &ScorerSpec| match *s {
            ScorerSpec::Attend {
                temperature,
                pooled_weight,
                ..
            } => Some((temperature, pooled_weight)),
            _ => None,
        };
        let by_default = attend_of(&m.scorer);
        let attend = by_default
            .or_else(|| m.target_scorers.values().find_map(attend_of))
            .map(|(temperature, pooled_weight)| AttendTerm {
                temperature,
                pooled_weight,
                skills_only: by_default.is_none(),
            });
        Objective {
            late_temperature,
            nce_temperature,
            late: matches!(m.scorer, ScorerSpec::Late { .. }),
            attend,
        }
    }
}

/// The attend scorer's settings, as in [`crate::model::ScorerSpec::Attend`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttendTerm {
    /// Softmax temperature over the query's tokens.
    pub temperature: f32,
    /// Weight of the pooled cosine in the blend.
    pub pooled_weight: f32,
    /// Only on batches whose targets are all skills, the space served with attend (job
    /// titles and occupation names are ranked pooled, and keep the pooled term only).
    pub skills_only: bool,
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
    /// Sets the variables from `named`, which may hold fewer of them where the part allows
    /// it (see [`crate::train::bert::TopLayers`]); returns how many it set. By default the
    /// whole part is wanted, as [`Trainable::restore`].
    fn restore_part(&self, named: &HashMap<String, Tensor>) -> candle_core::Result<usize> {
        self.restore(named)?;
        Ok(self.vars().len())
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

/// Normalised pooled embeddings `[b, d]` of `items` through `model`, as the runtime pools them.
pub fn pooled(model: &dyn Trainable, items: &[&Hidden]) -> candle_core::Result<Tensor> {
    let (x, all, _) = pad(items, model.dim())?;
    Ok(pool(&model.forward(&x, &all)?, &all)?.0)
}

/// Anchor term: the mean cosine distance `1 − cos` between the pooled embeddings `rows`
/// the model gives the anchored texts now ([`pooled`]) and `teacher` `[b, d]` (both
/// normalised; the teacher's from the weights training started at, or another model's).
/// It holds texts of one kind (job titles, occupation names) where they were while other
/// batches move the shared layers: a distillation term, as in learning without forgetting
/// (Li & Hoiem 2017).
pub fn anchor_loss(rows: &Tensor, teacher: &Tensor) -> candle_core::Result<Tensor> {
    (rows.mul(teacher)?.sum(1)?.neg()? + 1.0)?.mean_all()
}

/// Ranking anchor: the mean KL divergence `KL(p_teacher ‖ p_student)` between the two
/// softmax distributions (temperature `tau`) each title gives over the fixed `targets`
/// `[n, d]` (the teacher's rows of the occupation names): `student` `[b, d]` are the
/// title rows the model gives now, `teacher` `[b, d]` where the teacher has them (both
/// normalised). Job normalisation ranks occupations for a title; a cosine anchor holds a
/// title's whole row, and its residual drift (1 − cos ≈ 5e-5, about 0.01 rad) is the size
/// of the gaps between close occupations. This term weighs exactly the moves that reorder
/// them (relational distillation, Park et al. 2019).
pub fn rank_anchor_loss(
    student: &Tensor,
    teacher: &Tensor,
    targets: &Tensor,
    tau: f64,
) -> candle_core::Result<Tensor> {
    let log_p = |rows: &Tensor| -> candle_core::Result<Tensor> {
        candle_nn::ops::log_softmax(&(rows.matmul(&targets.t()?)? / tau)?, D::Minus1)
    };
    mean_kl(&log_p(teacher)?, &log_p(student)?)
}

/// The mean over rows of `KL(p_t ‖ p_s)` from log-probabilities `[b, n]`; no gradient
/// flows into the teacher's side.
fn mean_kl(log_t: &Tensor, log_s: &Tensor) -> candle_core::Result<Tensor> {
    let log_t = log_t.detach();
    log_t.exp()?.mul(&(log_t - log_s)?)?.sum(1)?.mean_all()
}

/// For each row of `rows` `[b, d]`, the `k` columns of `targets` `[n, d]` it scores
/// highest (all of them where `n <= k`), best first and ties by index, as
/// [`crate::rank::top_k`] ranks them: a title's closest occupations, where the teacher has
/// them.
pub fn top_k_columns(
    rows: &Tensor,
    targets: &Tensor,
    k: usize,
) -> candle_core::Result<Vec<Vec<u32>>> {
    let scores = rows.matmul(&targets.t()?)?.to_vec2::<f32>()?;
    Ok(scores
        .into_iter()
        .map(|row| {
            crate::rank::top_k(&row, k)
                .into_iter()
                .map(|h| h.index as u32)
                .collect()
        })
        .collect())
}

/// The ranking anchor as the model serves it ([`rank_anchor_loss`] otherwise): the
/// occupations at `cols` of `targets` (sorted, without repeats: the titles' closest,
/// [`top_k_columns`]) are scored with the rows the model gives them now, `served`
/// `[cols, d]`, on the student's side (the teacher keeps its own rows for them), the rest
/// with the teacher's fixed rows. At serving time both sides of job normalisation are
/// encoded by the new model: a fine-tune that holds every title where the teacher ranks it
/// can still reorder a title's occupations by moving the occupations' own rows, which
/// fixed target rows cannot see.
pub fn rank_anchor_loss_served(
    student: &Tensor,
    teacher: &Tensor,
    targets: &Tensor,
    cols: &[u32],
    served: &Tensor,
    tau: f64,
) -> candle_core::Result<Tensor> {
    if cols.is_empty() {
        return rank_anchor_loss(student, teacher, targets, tau);
    }
    let dev = targets.device();
    // The chosen columns leave the fixed block (a large negative logit, so that each
    // occupation is counted once) and come back as a block of their own.
    let mut mask = vec![0f32; targets.dim(0)?];
    for &c in cols {
        mask[c as usize] = -1e4;
    }
    let mask = Tensor::from_vec(mask, (1, targets.dim(0)?), dev)?;
    let fixed = targets.index_select(&Tensor::new(cols, dev)?, 0)?;
    let log_p = |rows: &Tensor, near: &Tensor| -> candle_core::Result<Tensor> {
        let far = rows.matmul(&targets.t()?)?.broadcast_add(&mask)?;
        let logits = Tensor::cat(&[far, rows.matmul(&near.t()?)?], 1)?;
        candle_nn::ops::log_softmax(&(logits / tau)?, D::Minus1)
    };
    mean_kl(&log_p(teacher, &fixed)?, &log_p(student, served)?)
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

/// Attend scores `[bq, bt]`: each target's pooled vector `t` attends over the query's word
/// rows, `Σᵢ softmax_i(qᵢ·t / τ) · qᵢ·t`, blended with the pooled cosine `qp·t` as the
/// runtime's [`crate::rank::attend_score`] does.
pub fn attend_scores(
    q: &Tensor,
    q_words: &Tensor,
    q_pooled: &Tensor,
    t_pooled: &Tensor,
    term: AttendTerm,
) -> candle_core::Result<Tensor> {
    let (bq, lq, d) = q.dims3()?;
    let bt = t_pooled.dim(0)?;
    let sims = q
        .reshape((bq * lq, d))?
        .matmul(&t_pooled.t()?)?
        .reshape((bq, lq, bt))?;
    // Padding and special tokens of the query get no attention.
    let neg = ((q_words.unsqueeze(2)? - 1.0)? * 1e4)?;
    let z = (sims.broadcast_add(&neg)? / term.temperature as f64)?;
    let max = z.max_keepdim(1)?.detach();
    let e = z.broadcast_sub(&max)?.exp()?;
    let attn = e.broadcast_div(&e.sum_keepdim(1)?)?;
    let attend = attn.mul(&sims)?.sum(1)?; // [bq, bt]
    let pooled = q_pooled.matmul(&t_pooled.t()?)?;
    (pooled * term.pooled_weight as f64)? + (attend * (1.0 - term.pooled_weight) as f64)?
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
    let rows = Rows {
        queries,
        query_ids,
        target_ids,
        positives: targets.len(),
    };
    batch_loss_with_negatives(model, &rows, targets, &[], obj)
}

/// The query side of a batch: `positives` rows with a target (the first ones, matching
/// `targets`), then rows known only by what they are not (a rejected label, no confirmed one).
pub struct Rows<'a> {
    /// Query states, one per row.
    pub queries: &'a [&'a Hidden],
    /// Query text ids (rows with the same text are positives of each other's targets).
    pub query_ids: &'a [usize],
    /// Target concept ids of the first `positives` rows.
    pub target_ids: &'a [usize],
    /// Rows with a target.
    pub positives: usize,
}

/// A hard negative: a label analysts rejected for the text of row `row`.
pub struct HardNegative<'a> {
    /// The row whose text it is wrong for.
    pub row: usize,
    /// The label's states.
    pub target: &'a Hidden,
    /// Its concept id (a row whose target shares it keeps it as a positive, masked).
    pub target_id: usize,
}

/// [`batch_loss`] with hard negatives as extra target columns. Rows with a target get the
/// symmetric InfoNCE, their rejected labels among the negatives of the query → target side
/// (another row that has the label as its target masks it instead); rows with only a
/// rejected label get an unlikelihood term, `-log(1 - p)` for the rejected label's softmax
/// share among every column of the batch (Welleck et al. 2019), pushing it below labels the
/// text was not judged against.
pub fn batch_loss_with_negatives(
    model: &dyn Trainable,
    rows: &Rows<'_>,
    targets: &[&Hidden],
    negatives: &[HardNegative<'_>],
    obj: Objective,
) -> candle_core::Result<Tensor> {
    let b = rows.positives;
    let r = rows.queries.len();
    let mut columns: Vec<&Hidden> = targets.to_vec();
    columns.extend(negatives.iter().map(|n| n.target));
    let c = columns.len();
    let (qx, qa, qw) = pad(rows.queries, model.dim())?;
    let (tx, ta, tw) = pad(&columns, model.dim())?;
    let (qp, qt) = pool(&model.forward(&qx, &qa)?, &qa)?;
    let (tp, tt) = pool(&model.forward(&tx, &ta)?, &ta)?;
    let pooled = qp.matmul(&tp.t()?)?; // [r, c]

    // Masks over the positive rows: other positives of a row are left out of its softmax.
    let mut mask = vec![0f32; b * c];
    let mut eye = vec![0f32; b * c];
    for i in 0..b {
        eye[i * c + i] = 1.0;
        for j in 0..b {
            let same =
                rows.target_ids[i] == rows.target_ids[j] || rows.query_ids[i] == rows.query_ids[j];
            if same && i != j {
                mask[i * c + j] = -1e4;
            }
        }
        for (k, n) in negatives.iter().enumerate() {
            if n.row != i && n.target_id == rows.target_ids[i] {
                mask[i * c + b + k] = -1e4;
            }
        }
    }
    let mask = Tensor::from_vec(mask, (b, c), &cpu())?;
    let eye = Tensor::from_vec(eye, (b, c), &cpu())?;
    // Unlikelihood terms: one per hard negative of a row without a target.
    let ul: Vec<(u32, usize)> = negatives
        .iter()
        .enumerate()
        .filter(|(_, n)| n.row >= b)
        .map(|(k, n)| (n.row as u32, b + k))
        .collect();
    let ul_rows = Tensor::from_vec(
        ul.iter().map(|u| u.0).collect::<Vec<u32>>(),
        ul.len(),
        &cpu(),
    )?;
    let mut ul_pick = vec![0f32; ul.len() * c];
    for (i, (_, col)) in ul.iter().enumerate() {
        ul_pick[i * c + col] = 1.0;
    }
    let ul_pick = Tensor::from_vec(ul_pick, (ul.len(), c), &cpu())?;
    debug_assert!(negatives.iter().all(|n| n.row < r));

    let term = |scores: &Tensor| -> candle_core::Result<Tensor> {
        let logits = (scores / obj.nce_temperature as f64)?;
        let mut loss = Tensor::zeros((), DType::F32, &cpu())?;
        if b > 0 {
            let pos = logits.narrow(0, 0, b)?;
            let q2t = ce(&(&pos + &mask)?, &eye)?;
            let square = pos.narrow(1, 0, b)?.t()?;
            let sq_mask = mask.narrow(1, 0, b)?.t()?;
            let sq_eye = eye.narrow(1, 0, b)?;
            let t2q = ce(&(&square + &sq_mask)?, &sq_eye)?;
            loss = ((q2t + t2q)? * 0.5)?;
        }
        if !ul.is_empty() {
            // -log(1 - p) = lse(all columns) - lse(all but the rejected one): stable where
            // p is close to 1, which is exactly when the term matters.
            let l = logits.index_select(&ul_rows, 0)?;
            let others = (&l + (&ul_pick * -1e4)?)?;
            let un = lse(&l)?.sub(&lse(&others)?)?.mean_all()?;
            loss = (loss + un)?;
        }
        Ok(loss)
    };
    let mut loss = term(&pooled)?;
    if obj.late {
        loss = (loss + term(&late_scores(&qt, &qw, &tt, &tw, obj.late_temperature)?)?)?;
    }
    if let Some(a) = obj.attend {
        loss = (loss + term(&attend_scores(&qt, &qw, &qp, &tp, a)?)?)?;
    }
    Ok(loss)
}

/// Row-wise log-sum-exp `[n, 1]` of logits `[n, c]`.
fn lse(l: &Tensor) -> candle_core::Result<Tensor> {
    let max = l.max_keepdim(1)?.detach();
    l.broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(1)?
        .log()?
        .add(&max)
}

/// Mean cross-entropy of logits `[n, c]` against one-hot rows `target [n, c]`.
fn ce(l: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let picked = l.mul(target)?.sum_keepdim(1)?;
    lse(l)?.sub(&picked)?.mean_all()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_restores_in_part_as_in_whole() {
        let h = Head::new(2).unwrap();
        let w = Tensor::new(&[[2f32, 0.0], [0.0, 1.0]], &cpu()).unwrap();
        let named = HashMap::from([(crate::model::graph::HEAD_WEIGHT.to_string(), w)]);
        assert_eq!(h.restore_part(&named).unwrap(), 1);
        let a: Vec<Vec<f32>> = h.a.as_tensor().to_vec2().unwrap();
        assert_eq!(a, vec![vec![1.0, 0.0], vec![0.0, 0.0]]);
    }

    #[test]
    fn a_retrain_trains_the_scorers_the_model_is_served_with() {
        use crate::model::{Manifest, ScorerSpec};
        let mut m: Manifest =
            serde_json::from_str(include_str!("../../trained/uwe-minilm-l6/manifest.json"))
                .unwrap();
        // Shipped: pooled by default, esco-skills with attend.
        let ScorerSpec::Attend {
            temperature,
            pooled_weight,
            ..
        } = m.scorer_for("esco-skills")
        else {
            panic!("the shipped model serves skills with attend");
        };
        let o = Objective::served(&m, 0.05, 0.05);
        assert!(!o.late);
        assert_eq!(
            o.attend,
            Some(AttendTerm {
                temperature,
                pooled_weight,
                skills_only: true
            })
        );
        m.target_scorers.clear();
        m.scorer = ScorerSpec::Late {
            temperature: 0.05,
            rerank_top: 100,
        };
        let o = Objective::served(&m, 0.05, 0.05);
        assert!(o.late && o.attend.is_none());
        m.scorer = ScorerSpec::Attend {
            temperature: 0.1,
            pooled_weight: 0.3,
            rerank_top: 100,
        };
        let o = Objective::served(&m, 0.05, 0.05);
        assert_eq!(o.attend.map(|a| a.skills_only), Some(false));
        assert!(!o.late);
    }

    /// A text of `n` word pieces from a seeded generator.
    fn hidden(seed: u64, n: usize, dim: usize) -> Hidden {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let rows = (0..(n + 2) * dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                f16::from_f32((x % 2000) as f32 / 1000.0 - 1.0)
            })
            .collect();
        Hidden { rows, n: n + 2 }
    }

    fn pooled_cos(head: &Head, a: &Hidden, b: &Hidden) -> f32 {
        let v: Vec<Vec<f32>> = pooled(head, &[a, b]).unwrap().to_vec2().unwrap();
        v[0].iter().zip(&v[1]).map(|(x, y)| x * y).sum()
    }

    /// `h` plus a little of another seeded text: a near-duplicate (a hard negative).
    fn near(h: &Hidden, seed: u64, dim: usize) -> Hidden {
        let noise = hidden(seed, h.n - 2, dim);
        let rows = h
            .rows
            .iter()
            .zip(&noise.rows)
            .map(|(a, b)| f16::from_f32(a.to_f32() + 0.3 * b.to_f32()))
            .collect();
        Hidden { rows, n: h.n }
    }

    #[test]
    fn rejected_labels_are_pushed_away_and_shared_ones_stay_masked() {
        let dim = 16;
        let obj = Objective::late_and_pooled(0.05, 0.05);
        let q: Vec<Hidden> = (0..4).map(|i| hidden(i, 3, dim)).collect();
        let t: Vec<Hidden> = (10..14).map(|i| hidden(i, 2, dim)).collect();
        // Row 0's rejected label is a near-duplicate of its right one; a text with only a
        // rejection (`lonely`) rejected a label close to itself (`wrong`).
        let bad = near(&t[0], 20, dim);
        let lonely = hidden(21, 3, dim);
        let wrong = near(&lonely, 22, dim);
        let mut queries: Vec<&Hidden> = q.iter().collect();
        queries.push(&lonely);
        let targets: Vec<&Hidden> = t.iter().collect();
        let negatives = [
            HardNegative {
                row: 0,
                target: &bad,
                target_id: 5,
            },
            HardNegative {
                row: 4,
                target: &wrong,
                target_id: 6,
            },
        ];
        // The same run with and without each kind of rejection.
        let run = |negs: &[&HardNegative<'_>]| -> (f32, f32) {
            let negs: Vec<HardNegative<'_>> = negs
                .iter()
                .map(|n| HardNegative {
                    row: n.row,
                    target: n.target,
                    target_id: n.target_id,
                })
                .collect();
            let head = Head::new(dim).unwrap();
            let rows = Rows {
                queries: &queries,
                query_ids: &[0, 1, 2, 3, 4],
                target_ids: &[0, 1, 2, 3],
                positives: 4,
            };
            let mut tr = Trainer::new(&head, 5e-3, 1, 80).unwrap();
            for step in 0..80 {
                let loss = batch_loss_with_negatives(&head, &rows, &targets, &negs, obj).unwrap();
                tr.step(&loss, step).unwrap();
            }
            // Row 0: the right label's lead over the rejected one. The lonely text: the
            // rejected label's lead over the other labels (what its rank depends on).
            let others = t.iter().map(|x| pooled_cos(&head, &lonely, x)).sum::<f32>() / 4.0;
            (
                pooled_cos(&head, &q[0], &t[0]) - pooled_cos(&head, &q[0], &bad),
                pooled_cos(&head, &lonely, &wrong) - others,
            )
        };
        let without = run(&[]);
        let attached = run(&[&negatives[0]]);
        assert!(
            attached.0 > without.0 + 0.02,
            "right label's lead over the rejected one: {attached:?} vs {without:?}"
        );
        let alone = run(&[&negatives[1]]);
        assert!(
            alone.1 < without.1 - 0.02,
            "rejected label's lead for a text without a positive: {alone:?} vs {without:?}"
        );
        let head = Head::new(dim).unwrap();

        // A label rejected for row 0 that is row 1's right label: a negative for row 0 only
        // (row 1 masks it), so the loss rises, but by less than a duplicate positive would
        // cost row 1 unmasked.
        let shared = [HardNegative {
            row: 0,
            target: &t[1],
            target_id: 1,
        }];
        let masked_rows = Rows {
            queries: &queries[..2],
            query_ids: &[0, 1],
            target_ids: &[0, 1],
            positives: 2,
        };
        let with = batch_loss_with_negatives(&head, &masked_rows, &targets[..2], &shared, obj)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let without = batch_loss_with_negatives(&head, &masked_rows, &targets[..2], &[], obj)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let unmasked = [HardNegative {
            row: 0,
            target: &t[1],
            target_id: 9,
        }];
        let unmasked =
            batch_loss_with_negatives(&head, &masked_rows, &targets[..2], &unmasked, obj)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        assert!(
            unmasked > with && with > without,
            "{unmasked} > {with} > {without}: a negative for row 0, masked for row 1"
        );
    }

    #[test]
    fn attend_scores_are_the_runtimes_and_training_on_them_raises_them() {
        let dim = 16;
        let term = AttendTerm {
            temperature: 0.02,
            pooled_weight: 0.5,
            skills_only: false,
        };
        // Queries of different lengths (padding must get no attention).
        let q: Vec<Hidden> = [5, 2, 7, 3]
            .iter()
            .enumerate()
            .map(|(i, &n)| hidden(i as u64, n, dim))
            .collect();
        let t: Vec<Hidden> = (10..14).map(|i| hidden(i, 2, dim)).collect();
        let qr: Vec<&Hidden> = q.iter().collect();
        let tr: Vec<&Hidden> = t.iter().collect();
        let head = Head::new(dim).unwrap();
        let scores = |head: &Head| -> (Vec<Vec<f32>>, Tensor, Tensor, Tensor, Tensor) {
            let (qx, qa, qw) = pad(&qr, dim).unwrap();
            let (tx, ta, _) = pad(&tr, dim).unwrap();
            let (qp, qt) = pool(&head.forward(&qx, &qa).unwrap(), &qa).unwrap();
            let (tp, _) = pool(&head.forward(&tx, &ta).unwrap(), &ta).unwrap();
            let s = attend_scores(&qt, &qw, &qp, &tp, term).unwrap();
            (s.to_vec2().unwrap(), qt, qp, tp, qw)
        };
        let (s, qt, qp, tp, _) = scores(&head);
        let qt: Vec<Vec<Vec<f32>>> = qt.to_vec3().unwrap();
        let qp: Vec<Vec<f32>> = qp.to_vec2().unwrap();
        let tp: Vec<Vec<f32>> = tp.to_vec2().unwrap();
        let mut scratch = Vec::new();
        for (i, h) in q.iter().enumerate() {
            // The runtime's rows: the word pieces only, without [CLS], [SEP] and padding.
            let words: Vec<f32> = qt[i][1..h.n - 1].concat();
            for (j, c) in tp.iter().enumerate() {
                let cos: f32 = qp[i].iter().zip(c).map(|(a, b)| a * b).sum();
                let want = term.pooled_weight * cos
                    + (1.0 - term.pooled_weight)
                        * crate::rank::attend_score(&words, c, term.temperature, &mut scratch);
                assert!(
                    (s[i][j] - want).abs() < 1e-4,
                    "query {i}, target {j}: {} vs the runtime's {want}",
                    s[i][j]
                );
            }
        }
        // The attend term alone (no late term) trains the diagonal up against the rest.
        let obj = Objective {
            late: false,
            attend: Some(term),
            ..Objective::late_and_pooled(0.05, 0.05)
        };
        let margin = |s: &[Vec<f32>]| -> f32 {
            (0..4)
                .map(|i| s[i][i] - (0..4).filter(|&j| j != i).map(|j| s[i][j]).sum::<f32>() / 3.0)
                .sum::<f32>()
        };
        let before = margin(&s);
        let mut opt = Trainer::new(&head, 5e-3, 1, 60).unwrap();
        for step in 0..60 {
            let loss = batch_loss(&head, &qr, &tr, &[0, 1, 2, 3], &[0, 1, 2, 3], obj).unwrap();
            opt.step(&loss, step).unwrap();
        }
        let after = margin(&scores(&head).0);
        assert!(after > before + 0.1, "diagonal margin {before} -> {after}");
    }

    #[test]
    fn the_anchor_holds_texts_the_batches_would_move() {
        let dim = 16;
        let obj = Objective::late_and_pooled(0.05, 0.05);
        let q: Vec<Hidden> = (0..4).map(|i| hidden(i, 3, dim)).collect();
        let t: Vec<Hidden> = (10..14).map(|i| hidden(i, 2, dim)).collect();
        // Titles no batch trains on: their place is what the anchor keeps.
        let titles: Vec<Hidden> = (30..36).map(|i| hidden(i, 2, dim)).collect();
        let (qr, tr): (Vec<&Hidden>, Vec<&Hidden>) = (q.iter().collect(), t.iter().collect());
        let title_refs: Vec<&Hidden> = titles.iter().collect();
        let drift = |weight: Option<f64>| -> f32 {
            let head = Head::new(dim).unwrap();
            let teacher = pooled(&head, &title_refs).unwrap().detach();
            assert!(
                anchor_loss(&pooled(&head, &title_refs).unwrap(), &teacher)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    < 1e-6
            );
            let mut opt = Trainer::new(&head, 2e-2, 1, 80).unwrap();
            for step in 0..80 {
                let mut loss =
                    batch_loss(&head, &qr, &tr, &[0, 1, 2, 3], &[0, 1, 2, 3], obj).unwrap();
                if let Some(w) = weight {
                    let a = anchor_loss(&pooled(&head, &title_refs).unwrap(), &teacher).unwrap();
                    loss = (loss + (a * w).unwrap()).unwrap();
                }
                opt.step(&loss, step).unwrap();
            }
            anchor_loss(&pooled(&head, &title_refs).unwrap(), &teacher)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let free = drift(None);
        let held = drift(Some(10.0));
        assert!(
            free > 1e-3,
            "the batches alone should move the titles (drift {free})"
        );
        assert!(
            held < free / 4.0,
            "anchored drift {held} vs {free} without the anchor"
        );
    }

    #[test]
    fn the_rank_anchor_is_zero_in_place_and_pulls_a_reordered_title_back() {
        let dev = Device::Cpu;
        let unit = |v: &[f32]| -> Tensor {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            Tensor::new(v.iter().map(|x| x / n).collect::<Vec<f32>>(), &dev)
                .unwrap()
                .reshape((1, v.len()))
                .unwrap()
        };
        // Two close occupations and a far one; the title sits nearer the first.
        let targets = Tensor::cat(
            &[
                unit(&[1.0, 0.0, 0.0]),
                unit(&[0.98, 0.2, 0.0]),
                unit(&[0.0, 0.0, 1.0]),
            ],
            0,
        )
        .unwrap();
        let teacher = unit(&[1.0, -0.05, 0.1]);
        let kl = |s: &Tensor| -> f32 {
            rank_anchor_loss(s, &teacher, &targets, 0.05)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(kl(&teacher).abs() < 1e-6, "in place: {}", kl(&teacher));
        // A move of about 0.2 rad towards the second occupation reorders the two close ones;
        // one of about 0.15 rad away from both keeps their order and costs far less.
        let reordered = unit(&[1.0, 0.15, 0.1]);
        let aside = unit(&[1.0, -0.05, 0.25]);
        assert!(
            kl(&reordered) > 4.0 * kl(&aside),
            "{} vs {}",
            kl(&reordered),
            kl(&aside)
        );
        // Its gradient pulls the reordered title back towards its first occupation.
        let v = Var::from_tensor(&reordered).unwrap();
        let g = rank_anchor_loss(v.as_tensor(), &teacher, &targets, 0.05)
            .unwrap()
            .backward()
            .unwrap();
        let grad: Vec<f32> = g.get(&v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            grad[1] > 0.0,
            "descent lowers the second coordinate: {grad:?}"
        );
    }

    #[test]
    fn top_k_columns_finds_each_rows_highest_and_the_served_form_matches_at_the_teachers_rows() {
        let dev = Device::Cpu;
        let targets =
            Tensor::new(&[[1.0f32, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], &dev).unwrap();
        let rows = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let top = |k: usize| top_k_columns(&rows, &targets, k).unwrap();
        // Best first: row 1 scores column 2 (1.0) above column 1 (0.6).
        assert_eq!(top(2), [vec![0, 1], vec![2, 1]]);
        assert_eq!(top(1), [vec![0], vec![2]]);
        assert_eq!(top(0), [Vec::<u32>::new(), Vec::new()]);
        // k past the columns: all of them; row 1's tie at 0.0 (columns 0 and 3) by index.
        assert_eq!(top(9), [vec![0, 1, 2, 3], vec![2, 1, 0, 3]]);
        // Served at the teacher's own rows, the chosen columns change nothing: the same
        // distribution, so the same (zero, then positive) divergence as the fixed form.
        let student = Tensor::new(&[[0.96f32, 0.28], [0.0, 1.0]], &dev).unwrap();
        let loss = |s: &Tensor, cols: &[u32]| -> f32 {
            let at = Tensor::new(cols, &dev).unwrap();
            let served = targets.index_select(&at, 0).unwrap();
            rank_anchor_loss_served(s, &rows, &targets, cols, &served, 0.05)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let cols = [0u32, 1, 2];
        let fixed = rank_anchor_loss(&student, &rows, &targets, 0.05)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(loss(&rows, &cols).abs() < 1e-6);
        assert!(fixed > 1e-3);
        assert!((loss(&student, &cols) - fixed).abs() < 1e-4 * fixed.max(1.0));
        assert!((loss(&student, &[]) - fixed).abs() < 1e-6);
    }
}

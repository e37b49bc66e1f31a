//! `uwe-trainer`: retrains the model on the structure of work data, gates the candidate on
//! the dev tasks with the same code as `uwe-connect eval`, and publishes it into a model
//! registry folder.
//!
//! What is trained ([`Trained`]): the top N transformer layers ([`bert::TopLayers`]) or a
//! residual projection head ([`head::Head`]), both behind [`head::Trainable`]. The frozen
//! part below runs once per distinct text in ONNX Runtime ([`prepare`] cuts the base graph
//! after layer L − N), so a step costs only the trained part. Measured on 2 cores
//! (`BENCHMARKS.md`): the head is the fastest, but on frozen states it never moved job
//! normalisation; the top two layers moved every dev task and a third gained on each again,
//! so the top three are the default.
//! Training starts at the base model either way (the base's own layer weights, or `A = 0`).

pub mod bert;
pub mod data;
mod gate;
pub mod head;
pub mod mine;
pub mod pseudo;

pub use gate::{build_candidate, default_dev_tasks, dev_scores, paired_deltas, reports, DevTask};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use half::f16;
use serde::{Deserialize, Serialize};

use crate::encoder::{Encoder, EncoderConfig};
use crate::error::{ModelError, Result};
use crate::eval::{self, Report};
use crate::model::{self, BuildSpec, ModelDir, ScorerSpec, TargetText};
use crate::space::cache;
use data::Pair;
use head::{Hidden, Objective, Trainable, Trainer};

/// A pair as indices: (query state, target state, target id).
pub type PairRef = (usize, usize, usize);

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    /// Pairs per batch.
    pub batch: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Objective temperatures.
    pub objective: Objective,
    /// Seed of the batch order.
    pub seed: u64,
    /// Checkpoint folder (head + step), written every `checkpoint_every` steps.
    pub checkpoint_dir: Option<PathBuf>,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Continue from the checkpoint in `checkpoint_dir`.
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Longest text in word pieces a step sees (0: the model's `max_seq_len`). A batch is
    /// padded to its longest text, and the trained layers keep every attention map for the
    /// backward pass: 64 rows of 256 word pieces through three layers reach about 10 GB.
    pub max_text_tokens: usize,
    /// Hold job titles and occupation names in place while skills train ([`Anchor`]).
    pub anchor: Option<Anchor>,
    /// Trained weights (of the same part) whose embeddings the anchor holds the titles at;
    /// `None`: the starting weights'. A fine-tune that starts from an older model but must
    /// not lose titles against the serving one holds them where the serving model has them.
    pub anchor_teacher: Option<PathBuf>,
}

/// The anchor term of a run: each step, `per_step` texts drawn from the occupation side of
/// the training pairs (job titles, occupation names: every pair whose target is not a
/// skill) are pulled towards the pooled embeddings the starting weights gave them, with
/// weight `weight` ([`head::anchor_loss`]). Skill batches move the layers titles share: a
/// fine-tune of the shipped model on skills gained tech but lost job normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    /// Anchor texts per step.
    pub per_step: usize,
    /// Weight of the term beside the InfoNCE.
    pub weight: f32,
    /// The occupation-side pairs are anchored only: their InfoNCE batches are left out, so
    /// that a fine-tune trains skills and holds titles where the starting weights had them.
    pub only: bool,
    /// Share of each step's anchor texts drawn from the real job titles (the query side of
    /// `job_title` pairs), the rest uniformly from all occupation-side texts; 0: all uniform.
    /// Job titles are a tenth of those texts, ESCO names the rest, yet job normalisation
    /// ranks real titles: a uniform anchor holds mostly what the title task does not ask.
    pub title_share: f32,
    /// Weight of the ranking term ([`head::rank_anchor_loss`]) on the step's job titles: the
    /// KL divergence between the teacher's and the model's softmax over the teacher's rows
    /// of the other anchor texts (occupation names and aliases); 0: off.
    pub rank_weight: f32,
    /// With a ranking term: how many of each title's closest occupations (the teacher's
    /// top ones) are scored with the rows the model gives them now rather than the
    /// teacher's fixed rows ([`head::rank_anchor_loss_served`]), so that the term also holds
    /// the occupations' own moves; 0: every occupation at the teacher's rows.
    pub rank_neighbours: usize,
}

/// Temperature of the ranking anchor's softmax: the InfoNCE's, so that the few
/// occupations close to a title carry the term.
pub const RANK_ANCHOR_TAU: f64 = 0.05;

/// Why anchor settings were refused; the caller names its own flag or key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnchorError {
    /// The weight is not a positive finite number.
    #[error("the anchor weight {0} is not positive: give a positive weight (10 holds titles), or 0 anchor texts to turn the anchor off")]
    Weight(f32),
    /// Anchor-only without anchor texts: nothing would hold the titles it stops training.
    #[error("anchor-only needs at least one anchor text per step: without an anchor, nothing would hold the titles it stops training")]
    OnlyWithoutTexts,
    /// The share of job titles is not in [0, 1].
    #[error("the share of job titles among the anchor texts is {0}: give a number from 0 (drawn uniformly) to 1 (job titles only)")]
    TitleShare(f32),
    /// The ranking weight is negative or not finite.
    #[error(
        "the ranking anchor weight {0} is not a number ≥ 0: give 0 (off) or a positive weight"
    )]
    RankWeight(f32),
    /// Neighbours asked for without a ranking term to use them.
    #[error("{0} neighbours per title were asked for a ranking term of weight 0: give the ranking term a positive weight, or 0 neighbours")]
    NeighboursWithoutRank(usize),
}

impl Anchor {
    /// The anchor of `per_step` texts a step at `weight`, checked; `None` (no anchor) when
    /// `per_step` is 0.
    pub fn from_settings(
        per_step: usize,
        weight: f32,
        only: bool,
    ) -> Result<Option<Anchor>, AnchorError> {
        if per_step == 0 {
            return if only {
                Err(AnchorError::OnlyWithoutTexts)
            } else {
                Ok(None)
            };
        }
        if !(weight.is_finite() && weight > 0.0) {
            return Err(AnchorError::Weight(weight));
        }
        Ok(Some(Anchor {
            per_step,
            weight,
            only,
            title_share: 0.0,
            rank_weight: 0.0,
            rank_neighbours: 0,
        }))
    }

    /// This anchor with `share` of each step's texts drawn from the real job titles, checked.
    pub fn with_title_share(self, share: f32) -> Result<Anchor, AnchorError> {
        if !(0.0..=1.0).contains(&share) {
            return Err(AnchorError::TitleShare(share));
        }
        Ok(Anchor {
            title_share: share,
            ..self
        })
    }

    /// This anchor with a ranking term of `weight` on its job titles, checked.
    pub fn with_rank_weight(self, weight: f32) -> Result<Anchor, AnchorError> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(AnchorError::RankWeight(weight));
        }
        Ok(Anchor {
            rank_weight: weight,
            ..self
        })
    }

    /// This anchor with `k` of each title's closest occupations scored at the model's own
    /// rows in the ranking term, checked: they need a ranking term (set its weight first).
    pub fn with_rank_neighbours(self, k: usize) -> Result<Anchor, AnchorError> {
        if k > 0 && self.rank_weight == 0.0 {
            return Err(AnchorError::NeighboursWithoutRank(k));
        }
        Ok(Anchor {
            rank_neighbours: k,
            ..self
        })
    }

    /// Positions into the anchor texts (`len` of them; `titles`: the positions of the job
    /// titles among them) of one step's anchor texts: the title share from `titles`, the
    /// rest from all.
    fn pick(&self, len: usize, titles: &[usize], rng: &mut Rng) -> Vec<usize> {
        let n = self.per_step.min(len);
        let from_titles = if titles.is_empty() {
            0
        } else {
            (n as f32 * self.title_share).round() as usize
        };
        (0..n)
            .map(|i| {
                if i < from_titles {
                    titles[(rng.next() % titles.len() as u64) as usize]
                } else {
                    (rng.next() % len as u64) as usize
                }
            })
            .collect()
    }
}

/// What a training run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Pairs trained on.
    pub pairs: usize,
    /// Pairs held out.
    pub dev_pairs: usize,
    /// Steps run (this run).
    pub steps: usize,
    /// Mean loss of the first and last tenth of the run.
    pub loss_start: f32,
    /// See `loss_start`.
    pub loss_end: f32,
    /// Held-out loss before and after.
    pub dev_loss_before: f32,
    /// See `dev_loss_before`.
    pub dev_loss_after: f32,
    /// Seconds spent encoding hidden states (and the anchor's starting embeddings).
    pub encode_seconds: f64,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// Optimiser steps per second.
    pub steps_per_second: f64,
    /// With an anchor: the mean cosine distance of the anchor texts' pooled embeddings
    /// from where training started, after training (0 before), on up to 2,048 of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_drift_after: Option<f32>,
    /// With a ranking anchor: the mean KL divergence of up to 2,048 job titles' softmax over
    /// the occupation names from the teacher's, after training (0 before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_rank_after: Option<f32>,
}

fn cerr(e: candle_core::Error) -> ModelError {
    ModelError::Runtime(format!("candle: {e}"))
}

/// Encodes every distinct text once; returns the states and each pair's (query, target) index.
pub fn hidden_states(
    enc: &mut Encoder,
    pairs: &[Pair],
    progress: bool,
) -> Result<(Vec<Hidden>, Vec<PairRef>)> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut texts: Vec<&str> = Vec::new();
    let mut target_ids: HashMap<&str, usize> = HashMap::new();
    let mut refs = Vec::with_capacity(pairs.len());
    for p in pairs {
        let q = *index.entry(p.query.as_str()).or_insert_with(|| {
            texts.push(p.query.as_str());
            texts.len() - 1
        });
        let t = *index.entry(p.target.as_str()).or_insert_with(|| {
            texts.push(p.target.as_str());
            texts.len() - 1
        });
        let n = target_ids.len();
        let tid = *target_ids.entry(p.target_id.as_str()).or_insert(n);
        refs.push((q, t, tid));
    }
    let bar = if progress {
        indicatif::ProgressBar::new(texts.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "encoding training texts {bar:40} {pos}/{len} [{elapsed_precise}, eta {eta}]",
        )
        .expect("template"),
    );
    let dim = enc.manifest().dim;
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(1024) {
        for rows in enc.hidden_states(chunk)? {
            let n = rows.len() / dim;
            out.push(Hidden {
                rows: rows.iter().map(|&x| f16::from_f32(x)).collect(),
                n,
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((out, refs))
}

/// Cuts texts longer than `max` word pieces to `[CLS]`, their first `max` word pieces and
/// `[SEP]`. The frozen layers below saw the whole text, so the kept rows still carry its
/// context.
fn cap_states(states: &mut [Hidden], max: usize, dim: usize) {
    let keep = max + 2;
    for h in states.iter_mut().filter(|h| h.n > keep) {
        let sep = h.rows[(h.n - 1) * dim..h.n * dim].to_vec();
        h.rows.truncate((keep - 1) * dim);
        h.rows.extend(sep);
        h.n = keep;
    }
}

/// A small deterministic generator for batch order (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

/// A batch: rows with their positive, and rows known only by a rejected label.
#[derive(Clone, Default)]
struct Batch {
    pairs: Vec<PairRef>,
    rejected_only: Vec<PairRef>,
    /// Every target is a skill (for [`head::AttendTerm::skills_only`]).
    skills: bool,
}

impl Batch {
    /// A batch of `pairs`, marked as a skill batch when every target is in `skill_concepts`.
    fn new(pairs: Vec<PairRef>, skill_concepts: &HashSet<usize>) -> Self {
        let skills = pairs.iter().all(|r| skill_concepts.contains(&r.2));
        Batch {
            pairs,
            rejected_only: vec![],
            skills,
        }
    }
}

/// Hard negatives by query state (analysts' rejected labels).
type Negatives = HashMap<usize, Vec<PairRef>>;

fn loss_of(
    model: &dyn Trainable,
    states: &[Hidden],
    batch: &Batch,
    negatives: &Negatives,
    obj: Objective,
) -> candle_core::Result<candle_core::Tensor> {
    let pairs = &batch.pairs;
    let mut q: Vec<&Hidden> = pairs.iter().map(|r| &states[r.0]).collect();
    let t: Vec<&Hidden> = pairs.iter().map(|r| &states[r.1]).collect();
    let mut query_ids: Vec<usize> = pairs.iter().map(|r| r.0).collect();
    let target_ids: Vec<usize> = pairs.iter().map(|r| r.2).collect();
    let mut negs = Vec::new();
    for (row, r) in pairs.iter().enumerate() {
        for n in negatives.get(&r.0).into_iter().flatten() {
            // Once per text: a sentence with two positives in the batch has two rows.
            if query_ids[..row].contains(&r.0) {
                continue;
            }
            negs.push(head::HardNegative {
                row,
                target: &states[n.1],
                target_id: n.2,
            });
        }
    }
    for n in &batch.rejected_only {
        negs.push(head::HardNegative {
            row: q.len(),
            target: &states[n.1],
            target_id: n.2,
        });
        q.push(&states[n.0]);
        query_ids.push(n.0);
    }
    let rows = head::Rows {
        queries: &q,
        query_ids: &query_ids,
        target_ids: &target_ids,
        positives: pairs.len(),
    };
    let obj = match obj.attend {
        Some(a) if a.skills_only && !batch.skills => Objective {
            attend: None,
            ..obj
        },
        _ => obj,
    };
    head::batch_loss_with_negatives(model, &rows, &t, &negs, obj)
}

/// The pairs the InfoNCE batches are drawn from, by source; occupation-side pairs are left
/// out when they are anchored only ([`Anchor::only`]).
fn trained_by_source(
    pairs: &[Pair],
    refs: &[PairRef],
    anchored_only: bool,
) -> BTreeMap<&'static str, Vec<PairRef>> {
    let mut by_source: BTreeMap<&'static str, Vec<PairRef>> = BTreeMap::new();
    for (p, r) in pairs.iter().zip(refs) {
        if anchored_only && !targets_skill(p) {
            continue;
        }
        by_source.entry(p.source).or_default().push(*r);
    }
    by_source
}

/// Whether a pair's target is an ESCO skill (by its concept URI).
fn targets_skill(p: &Pair) -> bool {
    p.target_id.contains("/skill/")
}

fn mean_loss(
    model: &dyn Trainable,
    states: &[Hidden],
    refs: &[PairRef],
    skill_concepts: &HashSet<usize>,
    batch: usize,
    obj: Objective,
) -> Result<f32> {
    let mut total = 0f32;
    let mut n = 0;
    for chunk in refs.chunks(batch).filter(|c| c.len() > 1).take(20) {
        let b = Batch::new(chunk.to_vec(), skill_concepts);
        total += loss_of(model, states, &b, &HashMap::new(), obj)
            .and_then(|l| l.to_scalar::<f32>())
            .map_err(cerr)?;
        n += 1;
    }
    Ok(if n == 0 { f32::NAN } else { total / n as f32 })
}

/// Pooled embeddings (`texts.len() × dim`, row-major) of `texts` (indices into `states`).
fn pooled_rows(
    model: &dyn Trainable,
    states: &[Hidden],
    texts: &[usize],
    progress: bool,
) -> Result<Vec<f32>> {
    let bar = if progress {
        indicatif::ProgressBar::new(texts.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    // Sorted by length, so that a chunk pads little.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| states[texts[i]].n);
    let mut out = vec![0f32; texts.len() * model.dim()];
    for chunk in order.chunks(128) {
        let items: Vec<&Hidden> = chunk.iter().map(|&i| &states[texts[i]]).collect();
        let p = head::pooled(model, &items)
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(cerr)?;
        for (&i, row) in chunk.iter().zip(p) {
            out[i * model.dim()..(i + 1) * model.dim()].copy_from_slice(&row);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The pooled rows the anchor holds `texts` at: the model's own, or with `teacher` (trained
/// weights of the same part), that model's; the model's weights are as they were afterwards.
fn teacher_rows(
    model: &dyn Trainable,
    states: &[Hidden],
    texts: &[usize],
    teacher: Option<&Path>,
    progress: bool,
) -> Result<Vec<f32>> {
    let Some(path) = teacher else {
        return pooled_rows(model, states, texts, progress);
    };
    // A deep copy: exported tensors share the variables' storage.
    let start = model
        .export()
        .and_then(|w| {
            w.into_iter()
                .map(|(n, t)| Ok((n, t.copy()?)))
                .collect::<candle_core::Result<HashMap<_, _>>>()
        })
        .map_err(cerr)?;
    model.restore_part(&read_trained(path)?).map_err(|e| {
        ModelError::Weights(format!(
            "anchor teacher {}: {e}; give trained weights of the part this run trains, or of fewer top layers (the others keep the starting weights)",
            path.display()
        ))
    })?;
    let rows = pooled_rows(model, states, texts, progress);
    model.restore(&start).map_err(cerr)?;
    rows
}

/// What the anchor holds: the occupation-side texts (positions into the states), where
/// the job titles sit among them, the teacher's pooled rows of each, and for a ranking
/// anchor the teacher's rows of the texts that are not job titles (`[n, d]`, row `j` the
/// text at position `others[j]`) and, for its served form, each title's closest of them
/// (`near[j]` for `titles[j]`, rows of `targets`).
struct Held {
    texts: Vec<usize>,
    titles: Vec<usize>,
    teacher: Vec<f32>,
    targets: Option<candle_core::Tensor>,
    others: Vec<usize>,
    near: Vec<Vec<u32>>,
}

impl Held {
    /// Held texts with no ranking targets yet ([`Held::set_targets`]).
    fn new(texts: Vec<usize>, titles: Vec<usize>, teacher: Vec<f32>) -> Held {
        Held {
            texts,
            titles,
            teacher,
            targets: None,
            others: Vec::new(),
            near: Vec::new(),
        }
    }

    /// The teacher's rows of the texts at positions `picked`, `[len, d]`.
    fn teacher_of(&self, picked: &[usize], d: usize) -> candle_core::Result<candle_core::Tensor> {
        let rows: Vec<f32> = picked
            .iter()
            .flat_map(|&i| self.teacher[i * d..(i + 1) * d].iter().copied())
            .collect();
        candle_core::Tensor::from_vec(rows, (picked.len(), d), &candle_core::Device::Cpu)
    }

    /// Sets the ranking term's targets: the teacher's rows of every text that is not a job
    /// title, what titles are ranked against; and with `neighbours > 0` each title's
    /// `neighbours` closest of them at the teacher's rows. Both sides are the teacher's,
    /// fixed for the run, so they are found once here rather than at every step.
    fn set_targets(&mut self, d: usize, neighbours: usize) -> candle_core::Result<()> {
        self.others = (0..self.texts.len())
            .filter(|i| self.titles.binary_search(i).is_err())
            .collect();
        let targets = self.teacher_of(&self.others, d)?;
        self.near = Vec::new();
        if neighbours > 0 {
            // In chunks: a chunk's score matrix is `[512, n]`, not `[titles, n]`.
            for chunk in self.titles.chunks(512) {
                let rows = self.teacher_of(chunk, d)?;
                self.near
                    .extend(head::top_k_columns(&rows, &targets, neighbours)?);
            }
        }
        self.targets = Some(targets);
        Ok(())
    }
}

/// The anchor terms of the texts at positions `picked` of `held.texts`: the cosine term
/// ([`head::anchor_loss`]) on all of them, and with `held.targets` and `with_rank` the
/// ranking term ([`head::rank_anchor_loss`]) on the job titles among them (`None` when none
/// was picked); where `held.near` is set, with each picked title's closest occupations at
/// the model's own rows ([`head::rank_anchor_loss_served`]). `with_rank` is off where only
/// the drift is read: the ranking term scores each title against every occupation name
/// (tens of thousands of rows), work wasted there.
fn anchor_term(
    model: &dyn Trainable,
    states: &[Hidden],
    held: &Held,
    picked: &[usize],
    with_rank: bool,
) -> candle_core::Result<(candle_core::Tensor, Option<candle_core::Tensor>)> {
    let d = model.dim();
    let items: Vec<&Hidden> = picked.iter().map(|&i| &states[held.texts[i]]).collect();
    let t = held.teacher_of(picked, d)?;
    let rows = head::pooled(model, &items)?;
    let cos = head::anchor_loss(&rows, &t)?;
    let Some(targets) = held.targets.as_ref().filter(|_| with_rank) else {
        return Ok((cos, None));
    };
    // (row in `picked`, index in `held.titles`) of each picked title.
    let at: Vec<(u32, usize)> = (0..picked.len())
        .filter_map(|k| {
            let j = held.titles.binary_search(&picked[k]).ok()?;
            Some((k as u32, j))
        })
        .collect();
    if at.is_empty() {
        return Ok((cos, None));
    }
    let rows_at: Vec<u32> = at.iter().map(|&(k, _)| k).collect();
    let rows_at = candle_core::Tensor::new(rows_at.as_slice(), &candle_core::Device::Cpu)?;
    let (student, teacher) = (
        rows.index_select(&rows_at, 0)?,
        t.index_select(&rows_at, 0)?,
    );
    let rank = if held.near.is_empty() {
        head::rank_anchor_loss(&student, &teacher, targets, RANK_ANCHOR_TAU)?
    } else {
        let cols: std::collections::BTreeSet<u32> = at
            .iter()
            .flat_map(|&(_, j)| held.near[j].iter().copied())
            .collect();
        let cols: Vec<u32> = cols.into_iter().collect();
        let near: Vec<&Hidden> = cols
            .iter()
            .map(|&c| &states[held.texts[held.others[c as usize]]])
            .collect();
        let served = head::pooled(model, &near)?;
        head::rank_anchor_loss_served(&student, &teacher, targets, &cols, &served, RANK_ANCHOR_TAU)?
    };
    Ok((cos, Some(rank)))
}

/// Writes trained weights as safetensors (f32, by name): a file the graph builder reads in
/// place of the base weights of the same names ([`model::BuildSpec::trained`]).
pub fn write_trained(path: &Path, named: &[(String, candle_core::Tensor)]) -> Result<()> {
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (name, t) in named {
        let v: Vec<f32> = t.flatten_all().and_then(|f| f.to_vec1()).map_err(cerr)?;
        data.push((
            name.clone(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            t.dims().to_vec(),
        ));
    }
    let mut views = Vec::new();
    for (name, bytes, shape) in &data {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| ModelError::Weights(e.to_string()))?;
        views.push((name.as_str(), view));
    }
    let bytes =
        safetensors::serialize(views, None).map_err(|e| ModelError::Weights(e.to_string()))?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(ModelError::io(d))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(ModelError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(ModelError::io(path))
}

/// Reads a file written by [`write_trained`].
pub fn read_trained(path: &Path) -> Result<HashMap<String, candle_core::Tensor>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))
}

/// What to train on top of the frozen encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trained {
    /// A residual projection head on the last hidden states.
    Head,
    /// The top `n` transformer layers.
    TopLayers(usize),
}

impl Trained {
    /// Parses `head` or `layers:N`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "head" => Some(Trained::Head),
            _ => s
                .strip_prefix("layers:")
                .and_then(|n| n.parse().ok())
                .filter(|&n| n > 0)
                .map(Trained::TopLayers),
        }
    }
}

/// The frozen encoder whose states the trained part starts from, and the trained part at its
/// starting point (the base model's own weights, or an identity head). For the top `n` layers,
/// the frozen encoder is the base graph cut after layer `L - n`, written into `scratch`.
pub fn prepare(
    base: &ModelDir,
    base_files: &Path,
    what: Trained,
    cfg: &EncoderConfig,
    scratch: &Path,
) -> Result<(Encoder, Box<dyn Trainable>)> {
    match what {
        Trained::Head => Ok((
            Encoder::load(base, cfg)?,
            Box::new(head::Head::new(base.manifest.dim).map_err(cerr)?),
        )),
        Trained::TopLayers(n) => {
            let bert = &base.manifest.bert;
            let top = bert::TopLayers::load(bert, &base_files.join("model.safetensors"), n)
                .map_err(cerr)?;
            let mut cut = bert.clone();
            cut.num_hidden_layers -= n;
            std::fs::create_dir_all(scratch).map_err(ModelError::io(scratch))?;
            let config = scratch.join("config.json");
            std::fs::write(
                &config,
                serde_json::to_vec(&cut).expect("config serialises"),
            )
            .map_err(ModelError::io(&config))?;
            let spec = BuildSpec {
                config,
                weights: base_files.join("model.safetensors"),
                tokenizer: base.tokenizer_path(),
                trained: None,
                name: "frozen-bottom".into(),
                version: format!("frozen-bottom-{}", cut.num_hidden_layers),
                base_model: base.manifest.base_model.clone(),
                max_seq_len: base.manifest.max_seq_len,
                scorer: ScorerSpec::Pooled,
                target_scorers: Default::default(),
                target_text: TargetText::Label,
                training_data: vec![],
                dev_scores: BTreeMap::new(),
                mentions: None,
                int8: false,
            };
            let dir = model::build_model_dir(&spec, &scratch.join("model"))?;
            Ok((Encoder::load(&dir, cfg)?, Box::new(top)))
        }
    }
}

/// Name of the trained weights in a model directory, a checkpoint folder and `trained/`.
pub const TRAINED_FILE: &str = "trained.safetensors";
const CHECKPOINT_FILE: &str = TRAINED_FILE;

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    step: usize,
    /// [`data_fingerprint`] of the run that wrote it; absent in checkpoints written before
    /// it was recorded, which resume unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

/// sha256 over what a run trains on (pairs, held-out pairs, negatives, batch size), so that a
/// resumed run refuses a checkpoint written for other data: a rebuilt source or a changed
/// flag would otherwise continue silently on a different set, with a different held-out split.
fn data_fingerprint(pairs: &[Pair], dev: &[Pair], negatives: &[Pair], batch: usize) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(batch.to_le_bytes());
    for (tag, set) in [("pairs", pairs), ("dev", dev), ("negatives", negatives)] {
        h.update(tag.as_bytes());
        h.update(set.len().to_le_bytes());
        for p in set {
            for field in [p.query.as_str(), &p.target_id, p.source] {
                h.update(field.len().to_le_bytes());
                h.update(field.as_bytes());
            }
        }
    }
    hex::encode(&h.finalize()[..8])
}

/// The step a checkpoint in `dir` reached, after checking that it was written for the data
/// whose [`data_fingerprint`] is `fingerprint`.
fn checkpoint_step(dir: &Path, fingerprint: &str) -> Result<usize> {
    let state = dir.join("state.json");
    let c: Checkpoint =
        serde_json::from_str(&std::fs::read_to_string(&state).map_err(ModelError::io(&state))?)
            .map_err(|e| ModelError::Invalid(format!("{}: {e}", state.display())))?;
    if let Some(was) = c.data.as_deref().filter(|was| *was != fingerprint) {
        return Err(ModelError::Invalid(format!(
            "checkpoint {} was written for other training data (fingerprint {was}, now {fingerprint}): \
             resume with the same sources, flags and batch size, or start afresh without --resume",
            dir.display()
        )));
    }
    Ok(c.step)
}

/// Trains `model` on the states `enc` gives for `pairs` (dev pairs only measured), with
/// `negatives` (a text and a label it is not: analysts' rejections) as hard negatives: an
/// extra negative column for a text that has a positive, an unlikelihood row for one that
/// has none ([`head::batch_loss_with_negatives`]).
pub fn train(
    enc: &mut Encoder,
    model: &dyn Trainable,
    pairs: &[Pair],
    dev: &[Pair],
    negatives: &[Pair],
    spec: &TrainSpec,
) -> Result<TrainReport> {
    // The checkpoint is checked before the slow encoding, so that a mismatch fails at once.
    let fingerprint = data_fingerprint(pairs, dev, negatives, spec.batch);
    let mut start = 0;
    let resume_from = match (&spec.checkpoint_dir, spec.resume) {
        (Some(dir), true) => {
            start = checkpoint_step(dir, &fingerprint)?;
            Some(dir.join(CHECKPOINT_FILE))
        }
        _ => None,
    };
    let t0 = Instant::now();
    let all: Vec<Pair> = pairs.iter().chain(dev).chain(negatives).cloned().collect();
    let (mut states, refs) = hidden_states(enc, &all, spec.progress)?;
    if spec.max_text_tokens > 0 {
        cap_states(&mut states, spec.max_text_tokens, enc.manifest().dim);
    }
    let skill_concepts: HashSet<usize> = all
        .iter()
        .zip(&refs)
        .filter(|(p, _)| targets_skill(p))
        .map(|(_, r)| r.2)
        .collect();
    let (train_refs, rest) = refs.split_at(pairs.len());
    let (dev_refs, neg_refs) = rest.split_at(dev.len());
    let with_positive: HashSet<usize> = train_refs.iter().map(|r| r.0).collect();
    let mut attached: Negatives = HashMap::new();
    let mut rejected_only: Vec<PairRef> = Vec::new();
    for r in neg_refs {
        if with_positive.contains(&r.0) {
            attached.entry(r.0).or_default().push(*r);
        } else {
            rejected_only.push(*r);
        }
    }
    // The anchor's teacher is the model as training starts, or `anchor_teacher` (before a
    // checkpoint is restored: a resumed run is held to the same place as the run it continues).
    let anchors = match spec.anchor {
        Some(_) => {
            let texts: std::collections::BTreeSet<usize> = pairs
                .iter()
                .zip(train_refs)
                .filter(|(p, _)| !targets_skill(p))
                .flat_map(|(_, r)| [r.0, r.1])
                .collect();
            let texts: Vec<usize> = texts.into_iter().collect();
            // Where the real job titles (queries of `job_title` pairs) sit among them.
            let titles: Vec<usize> = pairs
                .iter()
                .zip(train_refs)
                .filter(|(p, _)| p.source == "job_title")
                .filter_map(|(_, r)| texts.binary_search(&r.0).ok())
                .collect::<std::collections::BTreeSet<usize>>()
                .into_iter()
                .collect();
            if texts.is_empty() {
                tracing::warn!("anchor: no training pair has an occupation-side target; nothing to hold, the anchor is off");
                None
            } else {
                if spec.anchor.is_some_and(|a| a.title_share > 0.0) && titles.is_empty() {
                    tracing::warn!("anchor: a share of job titles was asked, but no training pair is a job title; the anchor texts are drawn uniformly");
                }
                tracing::info!(
                    texts = texts.len(),
                    job_titles = titles.len(),
                    teacher = %spec
                        .anchor_teacher
                        .as_deref()
                        .map_or("the starting weights".into(), |p| p.display().to_string()),
                    "anchor: embedding the occupation-side texts"
                );
                let teacher = teacher_rows(
                    model,
                    &states,
                    &texts,
                    spec.anchor_teacher.as_deref(),
                    spec.progress,
                )?;
                let mut held = Held::new(texts, titles, teacher);
                if let Some(a) = spec.anchor.filter(|a| a.rank_weight > 0.0) {
                    held.set_targets(model.dim(), a.rank_neighbours)
                        .map_err(cerr)?;
                }
                Some(held)
            }
        }
        None => None,
    };
    if let Some(path) = &resume_from {
        model.restore(&read_trained(path)?).map_err(cerr)?;
    }
    let encode_seconds = t0.elapsed().as_secs_f64();

    let dev_loss = |states: &[Hidden]| {
        mean_loss(
            model,
            states,
            dev_refs,
            &skill_concepts,
            spec.batch,
            spec.objective,
        )
    };
    let dev_before = dev_loss(&states)?;
    let mut trainer = Trainer::new(model, spec.lr, spec.warmup, spec.steps).map_err(cerr)?;
    let mut rng = Rng(spec.seed.max(1));
    // Its own stream, so that an anchor leaves the batch order as it was without one.
    let mut anchor_rng = Rng((spec.seed ^ 0xA4C4_0B5E).max(1));
    // Batches are drawn from one source at a time: job titles and labels are a few tokens,
    // job-ad sentences tens, so mixed batches would pad short texts to the longest, and
    // in-batch negatives from the same kind of text are the harder ones.
    let mut by_source = trained_by_source(pairs, train_refs, spec.anchor.is_some_and(|a| a.only));
    let mut epoch = |rng: &mut Rng| -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut feedback = Vec::new();
        for (src, refs) in by_source.iter_mut() {
            rng.shuffle(refs);
            for c in refs.chunks(spec.batch).filter(|c| c.len() > 1) {
                if *src == "feedback" {
                    feedback.push(batches.len());
                }
                batches.push(Batch::new(c.to_vec(), &skill_concepts));
            }
        }
        // Texts with only a rejected label ride along with the feedback batches (else with
        // any), a few per batch, so each is pushed away from labels of the same kind.
        let hosts: Vec<usize> = if feedback.is_empty() {
            (0..batches.len()).collect()
        } else {
            feedback
        };
        rng.shuffle(&mut rejected_only);
        for (i, r) in rejected_only.iter().enumerate() {
            if let Some(&h) = hosts.get(i % hosts.len().max(1)) {
                batches[h].rejected_only.push(*r);
            }
        }
        rng.shuffle(&mut batches);
        batches
    };
    let mut batches = epoch(&mut rng);
    if batches.is_empty() {
        return Err(ModelError::Invalid(format!(
            "no training batch: {} pairs, {} per batch, need at least two pairs of one source",
            pairs.len(),
            spec.batch
        )));
    }
    let bar = if spec.progress {
        indicatif::ProgressBar::new((spec.steps - start.min(spec.steps)) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(indicatif::ProgressStyle::with_template("training {bar:40} {pos}/{len} steps, {per_sec}, loss {msg} [{elapsed_precise}, eta {eta}]").expect("template"));
    let mut losses = Vec::new();
    let t1 = Instant::now();
    // A resumed run starts where the checkpointed steps left off within an epoch; later
    // epochs are shuffled afresh, so it is close to, not identical with, an unbroken run.
    let mut cursor = start % batches.len().max(1);
    for step in start..spec.steps {
        if cursor >= batches.len() {
            batches = epoch(&mut rng);
            cursor = 0;
        }
        let batch = &batches[cursor];
        cursor += 1;
        let mut loss = loss_of(model, &states, batch, &attached, spec.objective).map_err(cerr)?;
        let l = loss.to_scalar::<f32>().map_err(cerr)?;
        let mut message = format!("{l:.3}");
        if let (Some(a), Some(held)) = (spec.anchor, &anchors) {
            let picked = a.pick(held.texts.len(), &held.titles, &mut anchor_rng);
            let (term, rank) = anchor_term(model, &states, held, &picked, true).map_err(cerr)?;
            message = format!(
                "{message}, anchor {:.4}",
                term.to_scalar::<f32>().map_err(cerr)?
            );
            loss = (loss + (term * a.weight as f64).map_err(cerr)?).map_err(cerr)?;
            if let Some(rank) = rank {
                message = format!(
                    "{message}, rank {:.4}",
                    rank.to_scalar::<f32>().map_err(cerr)?
                );
                loss = (loss + (rank * a.rank_weight as f64).map_err(cerr)?).map_err(cerr)?;
            }
        }
        trainer.step(&loss, step).map_err(cerr)?;
        // The InfoNCE alone, so that runs with and without an anchor compare.
        losses.push(l);
        bar.set_message(message);
        bar.inc(1);
        if let Some(dir) = &spec.checkpoint_dir {
            if spec.checkpoint_every > 0 && (step + 1) % spec.checkpoint_every == 0 {
                // Both files are replaced by rename, so a process killed mid-write leaves the
                // previous checkpoint whole; killed between the two, it resumes from the
                // older step count with the newer weights, a few steps' difference.
                write_trained(&dir.join(CHECKPOINT_FILE), &model.export().map_err(cerr)?)?;
                let state = dir.join("state.json");
                let tmp = state.with_extension("tmp");
                std::fs::write(
                    &tmp,
                    serde_json::to_string(&Checkpoint {
                        step: step + 1,
                        data: Some(fingerprint.clone()),
                    })
                    .unwrap(),
                )
                .and_then(|_| std::fs::rename(&tmp, &state))
                .map_err(ModelError::io(&state))?;
            }
        }
    }
    bar.finish_and_clear();
    let train_seconds = t1.elapsed().as_secs_f64();
    // Up to 2,048 of `among`, evenly spaced: the mean of each anchor term over them.
    let after = |held: &Held,
                 among: &[usize],
                 with_rank: bool|
     -> candle_core::Result<(f32, Option<f32>)> {
        let every = among.len().div_ceil(2048).max(1);
        let picked: Vec<usize> = among.iter().copied().step_by(every).collect();
        let (mut cos, mut rank) = (0.0, None::<f32>);
        for c in picked.chunks(256) {
            let (t, r) = anchor_term(model, &states, held, c, with_rank)?;
            cos += t.to_scalar::<f32>()? * c.len() as f32;
            if let Some(r) = r {
                *rank.get_or_insert(0.0) += r.to_scalar::<f32>()? * c.len() as f32;
            }
        }
        let n = picked.len().max(1) as f32;
        Ok((cos / n, rank.map(|r| r / n)))
    };
    let (anchor_drift_after, anchor_rank_after) = match &anchors {
        Some(held) => {
            let all: Vec<usize> = (0..held.texts.len()).collect();
            let (drift, _) = after(held, &all, false).map_err(cerr)?;
            let rank = match held.targets {
                Some(_) => after(held, &held.titles, true).map_err(cerr)?.1,
                None => None,
            };
            (Some(drift), rank)
        }
        None => (None, None),
    };
    let tenth = (losses.len() / 10).max(1);
    let avg = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    let report = TrainReport {
        pairs: pairs.len(),
        dev_pairs: dev.len(),
        steps: losses.len(),
        loss_start: avg(&losses[..tenth.min(losses.len())]),
        loss_end: avg(&losses[losses.len().saturating_sub(tenth)..]),
        dev_loss_before: dev_before,
        dev_loss_after: dev_loss(&states)?,
        encode_seconds,
        train_seconds,
        steps_per_second: losses.len() as f64 / train_seconds.max(1e-9),
        anchor_drift_after,
        anchor_rank_after,
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `texts` hidden states of `rows` rows each, deterministic and different per text.
    fn synthetic_states(texts: usize, rows: usize, dim: usize) -> Vec<Hidden> {
        (0..texts)
            .map(|i| Hidden {
                rows: (0..rows * dim)
                    .map(|j| f16::from_f32(((i * 31 + j * 7) % 13) as f32 / 6.0 - 1.0))
                    .collect(),
                n: rows,
            })
            .collect()
    }

    #[test]
    fn an_anchor_teacher_gives_its_rows_and_leaves_the_model_as_it_was() {
        let dim = 8;
        let states = synthetic_states(3, 4, dim);
        let texts = [0, 2];
        let model = head::Head::new(dim).unwrap();
        let own = teacher_rows(&model, &states, &texts, None, false).unwrap();
        // A teacher whose head doubles every state's first component.
        let mut w = vec![0f32; dim * dim];
        for i in 0..dim {
            w[i * dim + i] = if i == 0 { 2.0 } else { 1.0 };
        }
        let w = candle_core::Tensor::from_vec(w, (dim, dim), &candle_core::Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRAINED_FILE);
        write_trained(&path, &[(crate::model::graph::HEAD_WEIGHT.to_string(), w)]).unwrap();
        let taught = teacher_rows(&model, &states, &texts, Some(&path), false).unwrap();
        assert_eq!(taught.len(), own.len());
        assert!(
            own.iter().zip(&taught).any(|(a, b)| (a - b).abs() > 1e-3),
            "the teacher's rows should differ from the model's own"
        );
        // The model is back at its own weights.
        assert_eq!(
            teacher_rows(&model, &states, &texts, None, false).unwrap(),
            own
        );
        // Weights of another part are refused with the path named.
        write_trained(
            &path,
            &[(
                "encoder.layer.5.output.dense.weight".into(),
                candle_core::Tensor::zeros(
                    (dim, dim),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )
                .unwrap(),
            )],
        )
        .unwrap();
        let err = teacher_rows(&model, &states, &texts, Some(&path), false).unwrap_err();
        assert!(err.to_string().contains("anchor teacher"), "{err}");
    }

    #[test]
    fn anchor_settings_are_checked_and_zero_texts_turn_it_off() {
        assert_eq!(Anchor::from_settings(0, 10.0, false), Ok(None));
        assert_eq!(
            Anchor::from_settings(64, 30.0, true),
            Ok(Some(Anchor {
                per_step: 64,
                weight: 30.0,
                only: true,
                title_share: 0.0,
                rank_weight: 0.0,
                rank_neighbours: 0,
            }))
        );
        for w in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                Anchor::from_settings(64, w, false),
                Err(AnchorError::Weight(_))
            ));
        }
        assert_eq!(
            Anchor::from_settings(0, 10.0, true),
            Err(AnchorError::OnlyWithoutTexts)
        );
        let a = Anchor::from_settings(64, 30.0, false).unwrap().unwrap();
        for bad in [-0.1, 1.5, f32::NAN] {
            assert!(matches!(
                a.with_title_share(bad),
                Err(AnchorError::TitleShare(_))
            ));
        }
        assert_eq!(a.with_title_share(0.5).unwrap().title_share, 0.5);
        for bad in [-1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                a.with_rank_weight(bad),
                Err(AnchorError::RankWeight(_))
            ));
        }
        assert_eq!(a.with_rank_weight(0.0).unwrap().rank_weight, 0.0);
        assert_eq!(a.with_rank_weight(2.0).unwrap().rank_weight, 2.0);
        assert_eq!(
            a.with_rank_neighbours(8),
            Err(AnchorError::NeighboursWithoutRank(8))
        );
        let ranked = a.with_rank_weight(2.0).unwrap();
        assert_eq!(ranked.with_rank_neighbours(8).unwrap().rank_neighbours, 8);
    }

    /// Six held texts, of which positions 1 and 4 are job titles, at `model`'s own rows of
    /// `states`, with ranking targets (each title's `neighbours` closest served).
    fn six_held(model: &head::Head, states: &[Hidden], neighbours: usize) -> Held {
        let texts: Vec<usize> = (0..6).collect();
        let teacher = teacher_rows(model, states, &texts, None, false).unwrap();
        let mut held = Held::new(texts, vec![1, 4], teacher);
        held.set_targets(model.dim(), neighbours).unwrap();
        held
    }

    #[test]
    fn the_ranking_term_ranks_the_picked_job_titles_against_the_other_texts() {
        let dim = 8;
        let states = synthetic_states(6, 3, dim);
        let model = head::Head::new(dim).unwrap();
        let mut held = six_held(&model, &states, 0);
        assert!(held.near.is_empty(), "no served form asked");
        assert_eq!(
            held.targets.as_ref().unwrap().dims(),
            &[4, dim],
            "the four texts that are not titles"
        );
        assert_eq!(held.others, [0, 2, 3, 5]);
        let scalar = |t: &candle_core::Tensor| t.to_scalar::<f32>().unwrap();
        // At the teacher's own rows both terms are zero; no title picked, no ranking term.
        let (cos, rank) = anchor_term(&model, &states, &held, &[0, 1, 4], true).unwrap();
        assert!(scalar(&cos).abs() < 1e-5 && scalar(&rank.unwrap()).abs() < 1e-5);
        assert!(anchor_term(&model, &states, &held, &[0, 2, 3], true)
            .unwrap()
            .1
            .is_none());
        // Asked for the cosine term only, a picked title gives no ranking term.
        assert!(anchor_term(&model, &states, &held, &[0, 1, 4], false)
            .unwrap()
            .1
            .is_none());
        // Held away from the teacher (another title's rows), the title is ranked otherwise.
        for k in 0..dim {
            held.teacher.swap(dim + k, 4 * dim + k);
        }
        let (_, rank) = anchor_term(&model, &states, &held, &[1], true).unwrap();
        assert!(scalar(&rank.unwrap()) > 1e-3);
    }

    #[test]
    fn the_served_ranking_term_sees_an_occupation_move_that_fixed_rows_miss() {
        let dim = 8;
        let mut states = synthetic_states(6, 3, dim);
        let model = head::Head::new(dim).unwrap();
        let fixed = six_held(&model, &states, 0);
        let served = six_held(&model, &states, 4);
        // Each title's four closest of the four other texts: all of them, found once.
        assert_eq!(served.near.len(), 2);
        for near in &served.near {
            let mut near = near.clone();
            near.sort();
            assert_eq!(near, [0, 1, 2, 3]);
        }
        assert_eq!(six_held(&model, &states, 2).near[0].len(), 2);
        let rank = |states: &[Hidden], held: &Held| {
            anchor_term(&model, states, held, &[1, 4], true)
                .unwrap()
                .1
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        // Where the teacher has everything, both forms are zero.
        assert!(rank(&states, &fixed).abs() < 1e-5 && rank(&states, &served).abs() < 1e-5);
        // The titles stay, but every occupation now reads as the first one: the titles' own
        // rows are where the teacher has them, so the term on fixed rows sees nothing,
        // while the served form, which scores the titles' closest occupations at the
        // model's rows, sees their order change.
        for t in [2, 3, 5] {
            states[t] = states[0].clone();
        }
        assert!(rank(&states, &fixed).abs() < 1e-5);
        assert!(rank(&states, &served) > 1e-3, "{}", rank(&states, &served));
    }

    #[test]
    fn a_title_share_draws_that_share_of_the_anchor_texts_from_the_job_titles() {
        let a = Anchor::from_settings(100, 10.0, false).unwrap().unwrap();
        // 1,000 texts, of which the job titles are 10.
        let titles: Vec<usize> = (0..10).map(|i| i * 100).collect();
        let share = |a: Anchor, titles: &[usize]| {
            let mut rng = Rng(7);
            let picked = a.pick(1000, titles, &mut rng);
            assert_eq!(picked.len(), 100);
            assert!(picked.iter().all(|&i| i < 1000));
            picked.iter().filter(|&&i| i % 100 == 0).count()
        };
        // Uniform: about one in a hundred is a title.
        assert!(share(a, &titles) < 10);
        // Half: the first 50 are titles, and a few of the rest may be too.
        let half = a.with_title_share(0.5).unwrap();
        assert!((50..60).contains(&share(half, &titles)));
        // All titles.
        assert_eq!(share(a.with_title_share(1.0).unwrap(), &titles), 100);
        // No titles among the texts: drawn uniformly.
        assert!(share(half, &[]) < 10);
    }

    #[test]
    fn a_checkpoint_resumes_only_on_the_data_it_was_written_for() {
        let pair = |q: &str, id: &str| Pair {
            query: q.into(),
            target: "t".into(),
            target_id: id.into(),
            source: "job_title",
        };
        let pairs = [pair("welder", "occ:1"), pair("barista", "occ:2")];
        let fp = data_fingerprint(&pairs, &[], &[], 32);
        assert_eq!(fp, data_fingerprint(&pairs, &[], &[], 32));
        // Another label, a pair moved to the held-out side, another batch size: all differ.
        let relabelled = [pair("welder", "occ:1"), pair("barista", "occ:3")];
        assert_ne!(fp, data_fingerprint(&relabelled, &[], &[], 32));
        assert_ne!(fp, data_fingerprint(&pairs[..1], &pairs[1..], &[], 32));
        assert_ne!(fp, data_fingerprint(&pairs, &[], &[], 16));

        let dir = tempfile::tempdir().unwrap();
        let write = |c: &Checkpoint| {
            std::fs::write(
                dir.path().join("state.json"),
                serde_json::to_string(c).unwrap(),
            )
            .unwrap()
        };
        write(&Checkpoint {
            step: 200,
            data: Some(fp.clone()),
        });
        assert_eq!(checkpoint_step(dir.path(), &fp).unwrap(), 200);
        let other = data_fingerprint(&relabelled, &[], &[], 32);
        let err = checkpoint_step(dir.path(), &other).unwrap_err().to_string();
        assert!(
            err.contains("other training data") && err.contains(&fp),
            "{err}"
        );
        // A checkpoint from before fingerprints were recorded resumes unchecked.
        std::fs::write(dir.path().join("state.json"), r#"{"step":1400}"#).unwrap();
        assert_eq!(checkpoint_step(dir.path(), &other).unwrap(), 1400);
    }

    #[test]
    fn anchored_only_occupation_pairs_are_not_trained() {
        let pair = |target_id: &str, source: &'static str| Pair {
            query: "q".into(),
            target: "t".into(),
            target_id: target_id.into(),
            source,
        };
        let pairs = [
            pair("http://data.europa.eu/esco/skill/1", "skill_sentence"),
            pair("http://data.europa.eu/esco/occupation/2", "job_title"),
            pair("http://data.europa.eu/esco/skill/3", "skillskape"),
        ];
        let refs = [(0, 1, 0), (2, 3, 1), (4, 5, 2)];
        let all = trained_by_source(&pairs, &refs, false);
        assert_eq!(all.values().map(Vec::len).sum::<usize>(), 3);
        let skills = trained_by_source(&pairs, &refs, true);
        assert_eq!(
            skills.into_iter().collect::<Vec<_>>(),
            vec![
                ("skill_sentence", vec![(0, 1, 0)]),
                ("skillskape", vec![(4, 5, 2)])
            ]
        );
    }

    #[test]
    fn the_skills_only_attend_term_leaves_occupation_batches_pooled() {
        let dim = 8;
        let text = |seed: usize, n: usize| Hidden {
            rows: (0..(n + 2) * dim)
                .map(|i| f16::from_f32(((i * 37 + seed * 101) % 19) as f32 / 9.0 - 1.0))
                .collect(),
            n: n + 2,
        };
        let states: Vec<Hidden> = (0..8).map(|i| text(i, 2 + i % 3)).collect();
        let batch = |skills| Batch {
            pairs: vec![(0, 4, 0), (1, 5, 1), (2, 6, 2), (3, 7, 3)],
            rejected_only: vec![],
            skills,
        };
        let head = head::Head::new(dim).unwrap();
        let term = head::AttendTerm {
            temperature: 0.02,
            pooled_weight: 0.5,
            skills_only: true,
        };
        let base = Objective {
            late: false,
            ..Objective::late_and_pooled(0.05, 0.05)
        };
        let with = Objective {
            attend: Some(term),
            ..base
        };
        let loss = |b: &Batch, o: Objective| {
            loss_of(&head, &states, b, &HashMap::new(), o)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(loss(&batch(false), with), loss(&batch(false), base));
        assert!(loss(&batch(true), with) > loss(&batch(true), base) + 1e-3);
        let everywhere = Objective {
            attend: Some(head::AttendTerm {
                skills_only: false,
                ..term
            }),
            ..base
        };
        assert!(loss(&batch(false), everywhere) > loss(&batch(false), base) + 1e-3);
    }

    #[test]
    fn capped_texts_keep_their_start_and_their_sep_row() {
        let dim = 2;
        let text = |n: usize| Hidden {
            rows: (0..n * dim).map(|i| f16::from_f32(i as f32)).collect(),
            n,
        };
        let mut states = vec![text(10), text(4)];
        cap_states(&mut states, 3, dim);
        let rows = |h: &Hidden| h.rows.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
        // [CLS], three word pieces, then the last row ([SEP]) of the ten.
        assert_eq!(states[0].n, 5);
        assert_eq!(rows(&states[0]), [0., 1., 2., 3., 4., 5., 6., 7., 18., 19.]);
        assert_eq!(states[1].n, 4, "a short text is left alone");
        assert_eq!(rows(&states[1]), rows(&text(4)));
    }
}

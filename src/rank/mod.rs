//! Scoring and ranking a text against an embedded target space.
//!
//! Pooled: cosine of pooled embeddings. Late: the soft late interaction of UWE. For query
//! tokens qᵢ and target tokens tⱼ (all unit length),
//! `aᵢⱼ = softmax_j(qᵢ·tⱼ / τ)` and `score = meanᵢ Σⱼ aᵢⱼ · cos(qᵢ, tⱼ)`; τ → 0 is MaxSim.
//! Attend (after ConTeXT-match): the concept's pooled vector `c` attends over the query
//! tokens, `aᵢ = softmax_i(qᵢ·c / τ)`, `attend = Σᵢ aᵢ · qᵢ·c`, blended as
//! `w · cos(q, c) + (1 − w) · attend`.
//! Exhaustive late interaction over 13,896 skills is too slow for a stream, so the default
//! ranks with pooled vectors first and reranks the top N with the token-level scorer.
//!
//! A space matched on its aliases too ([`AliasRows`]) scores each concept
//! `max(label score, weight × best alias score)` under any scorer.

use half::f16;
use serde::Serialize;

use crate::encoder::TextEmbedding;
use crate::model::ScorerSpec;
use crate::space::cache::{AliasRows, EncodedSpace};

/// One ranked concept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hit {
    /// Index into the space's concepts.
    pub index: usize,
    /// Score under the scorer used.
    pub score: f32,
    /// Row of the space's alias rows whose match earned the score, when an alias beat the
    /// preferred label (`None` in a pooled whole-space ranking, `k = 0`, and for the pooled
    /// tail of a reranked one).
    pub alias: Option<usize>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        static FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *FMA.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
        {
            // SAFETY: the CPU was just checked to have AVX2 and FMA.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    // Eight accumulators let the compiler vectorise without reassociating one sum.
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Dot product with 256-bit fused multiply-adds: ranking a sentence against 13,896 skills is
/// 5.3 M multiply-adds, and the portable loop, compiled for baseline x86-64, uses 128-bit
/// vectors without FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        i += 16;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s: f32 = lanes.iter().sum();
    while i < n {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}

/// Pooled cosine of the query against every concept (with aliases: see the module docs).
pub fn pooled_scores(space: &EncodedSpace, q: &TextEmbedding) -> Vec<f32> {
    let mut scores: Vec<f32> = space
        .pooled
        .chunks_exact(space.dim)
        .map(|p| dot(p, &q.pooled))
        .collect();
    if let Some(a) = &space.aliases {
        fold_aliases(a, &mut scores, &pooled_scores(&a.rows, q));
    }
    scores
}

/// Raises each concept's score to its weighted best alias score.
fn fold_aliases(a: &AliasRows, scores: &mut [f32], alias_scores: &[f32]) {
    for (i, s) in scores.iter_mut().enumerate() {
        for &x in &alias_scores[a.offsets[i]..a.offsets[i + 1]] {
            *s = s.max(a.weight * x);
        }
    }
}

/// Soft late-interaction score of query token rows against target token rows.
/// `scratch` is reused between calls to hold the target rows in f32.
pub fn late_score(q: &[f32], t: &[f16], dim: usize, tau: f32, scratch: &mut Vec<f32>) -> f32 {
    let nq = q.len() / dim;
    let nt = t.len() / dim;
    if nq == 0 || nt == 0 {
        return 0.0;
    }
    scratch.resize(t.len(), 0.0);
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(t, scratch);
    let mut sims = vec![0f32; nt];
    let mut total = 0f32;
    for qi in q.chunks_exact(dim) {
        let mut max = f32::MIN;
        for (j, tj) in scratch.chunks_exact(dim).enumerate() {
            sims[j] = dot(qi, tj);
            max = max.max(sims[j]);
        }
        total += softmax_mean(&sims, max, tau);
    }
    total / nq as f32
}

/// `Σ softmax(sims / τ) · sims`, given `max` of `sims`: the similarities' mean weighted
/// towards the largest (τ ≤ 0: the largest itself). Shared by the late and attend scorers.
fn softmax_mean(sims: &[f32], max: f32, tau: f32) -> f32 {
    if tau <= 0.0 {
        return max;
    }
    let (mut z, mut s) = (0f32, 0f32);
    for &c in sims {
        let w = ((c - max) / tau).exp();
        z += w;
        s += w * c;
    }
    s / z
}

/// Default temperature of [`ScorerSpec::Late`].
pub const LATE_TEMPERATURE: f32 = 0.05;
/// Default temperature of [`ScorerSpec::Attend`] (ConTeXT-match's attention is sharp).
pub const ATTEND_TEMPERATURE: f32 = 0.02;
/// Default weight of the pooled cosine in [`ScorerSpec::Attend`]'s blend.
pub const ATTEND_POOLED_WEIGHT: f32 = 0.5;

/// Token attention of the query rows `q` (unit length) to one concept's pooled vector `c`:
/// `Σᵢ softmax_i(qᵢ·c / τ) · qᵢ·c`, the similarity of the query's words that match `c` best
/// (τ → 0: the best single token; large τ: the mean token similarity). `scratch` is reused
/// across calls, as in [`late_score`]: this runs for every reranked concept.
pub fn attend_score(q: &[f32], c: &[f32], tau: f32, scratch: &mut Vec<f32>) -> f32 {
    let dim = c.len();
    if dim == 0 || q.len() < dim {
        return 0.0;
    }
    scratch.clear();
    scratch.extend(q.chunks_exact(dim).map(|qi| dot(qi, c)));
    let max = scratch.iter().copied().fold(f32::MIN, f32::max);
    softmax_mean(scratch, max, tau)
}

/// Indices of the `k` largest scores, best first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<Hit> {
    let k = k.min(scores.len());
    if k == 0 {
        return vec![];
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let cmp = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.into_iter()
        .map(|i| Hit {
            index: i,
            score: scores[i],
            alias: None,
        })
        .collect()
}

/// Pooled cosines of several queries at once: the space is walked in blocks that stay in
/// cache while every query is scored against them, so it is read from memory once per
/// call instead of once per query.
pub fn pooled_scores_many(space: &EncodedSpace, qs: &[&TextEmbedding]) -> Vec<Vec<f32>> {
    const BLOCK: usize = 128;
    let n = space.len();
    let mut out = vec![vec![0f32; n]; qs.len()];
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        for (q, row) in qs.iter().zip(out.iter_mut()) {
            for (i, r) in row[start..end].iter_mut().enumerate() {
                *r = dot(space.pooled_of(start + i), &q.pooled);
            }
        }
    }
    if let Some(a) = &space.aliases {
        for (row, alias_row) in out.iter_mut().zip(pooled_scores_many(&a.rows, qs)) {
            fold_aliases(a, row, &alias_row);
        }
    }
    out
}

/// [`rank`] for several queries, sharing one pass over the space.
pub fn rank_many(
    space: &EncodedSpace,
    qs: &[&TextEmbedding],
    k: usize,
    scorer: ScorerSpec,
) -> Vec<Vec<Hit>> {
    let live: Vec<&TextEmbedding> = qs.iter().copied().filter(|q| !q.is_empty()).collect();
    let mut scores = pooled_scores_many(space, &live).into_iter();
    qs.iter()
        .map(|q| {
            if q.is_empty() || space.is_empty() {
                return vec![];
            }
            rank_with_pooled(
                space,
                q,
                scores.next().expect("one row per live query"),
                k,
                scorer,
            )
        })
        .collect()
}

/// Ranks the space for `q` and returns the best `k` (k = 0: the whole space, for eval).
/// With a late scorer and `rerank_top > 0`, only the pooled top `rerank_top` are rescored
/// and placed first; the rest follow in pooled order with their pooled scores.
pub fn rank(space: &EncodedSpace, q: &TextEmbedding, k: usize, scorer: ScorerSpec) -> Vec<Hit> {
    if q.is_empty() || space.is_empty() {
        return vec![];
    }
    rank_with_pooled(space, q, pooled_scores(space, q), k, scorer)
}

/// Concept `i`'s score under `scorer`, and the alias row that earned it, if one did.
fn concept_score(
    space: &EncodedSpace,
    i: usize,
    q: &TextEmbedding,
    scorer: ScorerSpec,
    scratch: &mut Vec<f32>,
) -> (f32, Option<usize>) {
    let one = |s: &EncodedSpace, i: usize, scratch: &mut Vec<f32>| match scorer {
        ScorerSpec::Pooled => dot(s.pooled_of(i), &q.pooled),
        ScorerSpec::Late { temperature, .. } => {
            late_score(&q.tokens, s.tokens_of(i), s.dim, temperature, scratch)
        }
        ScorerSpec::Attend {
            temperature,
            pooled_weight,
            ..
        } => {
            let c = s.pooled_of(i);
            pooled_weight * dot(c, &q.pooled)
                + (1.0 - pooled_weight) * attend_score(&q.tokens, c, temperature, scratch)
        }
    };
    let mut best = (one(space, i, scratch), None);
    if let Some(a) = &space.aliases {
        for j in a.offsets[i]..a.offsets[i + 1] {
            let s = a.weight * one(&a.rows, j, scratch);
            if s > best.0 {
                best = (s, Some(j));
            }
        }
    }
    best
}

fn rank_with_pooled(
    space: &EncodedSpace,
    q: &TextEmbedding,
    pooled: Vec<f32>,
    k: usize,
    scorer: ScorerSpec,
) -> Vec<Hit> {
    let want = if k == 0 { space.len() } else { k };
    let mut scratch = Vec::new();
    match scorer {
        ScorerSpec::Pooled => {
            let mut hits = top_k(&pooled, want);
            if k > 0 && space.aliases.is_some() {
                // The pooled pass keeps each concept's best score only: name the alias behind
                // it for the k hits kept.
                for h in &mut hits {
                    h.alias = concept_score(space, h.index, q, scorer, &mut scratch).1;
                }
            }
            hits
        }
        ScorerSpec::Late { rerank_top, .. } | ScorerSpec::Attend { rerank_top, .. } => {
            let late = |i: usize, scratch: &mut Vec<f32>| {
                let (score, alias) = concept_score(space, i, q, scorer, scratch);
                Hit {
                    index: i,
                    score,
                    alias,
                }
            };
            if rerank_top == 0 || rerank_top >= space.len() {
                let all: Vec<Hit> = (0..space.len()).map(|i| late(i, &mut scratch)).collect();
                let scores: Vec<f32> = all.iter().map(|h| h.score).collect();
                return top_k(&scores, want)
                    .into_iter()
                    .map(|h| all[h.index])
                    .collect();
            }
            let cands = top_k(&pooled, rerank_top.max(if k == 0 { 0 } else { k }));
            let mut rescored: Vec<Hit> =
                cands.iter().map(|h| late(h.index, &mut scratch)).collect();
            rescored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
            if k == 0 {
                let mut seen = vec![false; space.len()];
                rescored.iter().for_each(|h| seen[h.index] = true);
                let rest = top_k(&pooled, space.len());
                rescored.extend(rest.into_iter().filter(|h| !seen[h.index]));
            }
            rescored.truncate(want);
            rescored
        }
    }
}

#[cfg(test)]
mod tests;

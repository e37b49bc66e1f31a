//! Scoring and ranking a text against an embedded target space.
//!
//! Pooled: cosine of pooled embeddings. Late: the soft late interaction of UWE. For query
//! tokens qᵢ and target tokens tⱼ (all unit length),
//! `aᵢⱼ = softmax_j(qᵢ·tⱼ / τ)` and `score = meanᵢ Σⱼ aᵢⱼ · cos(qᵢ, tⱼ)`; τ → 0 is MaxSim.
//! Exhaustive late interaction over 13,896 skills is too slow for a stream, so the default
//! ranks with pooled vectors first and reranks the top N with late interaction.

use half::f16;
use serde::Serialize;

use crate::encoder::TextEmbedding;
use crate::model::ScorerSpec;
use crate::space::cache::EncodedSpace;

/// One ranked concept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hit {
    /// Index into the space's concepts.
    pub index: usize,
    /// Score under the scorer used.
    pub score: f32,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// Pooled cosine of the query against every concept.
pub fn pooled_scores(space: &EncodedSpace, q: &TextEmbedding) -> Vec<f32> {
    space
        .pooled
        .chunks_exact(space.dim)
        .map(|p| dot(p, &q.pooled))
        .collect()
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
        if tau <= 0.0 {
            total += max;
            continue;
        }
        let (mut z, mut s) = (0f32, 0f32);
        for &c in &sims {
            let w = ((c - max) / tau).exp();
            z += w;
            s += w * c;
        }
        total += s / z;
    }
    total / nq as f32
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
    let want = if k == 0 { space.len() } else { k };
    let pooled = pooled_scores(space, q);
    match scorer {
        ScorerSpec::Pooled => top_k(&pooled, want),
        ScorerSpec::Late {
            temperature,
            rerank_top,
        } => {
            let mut scratch = Vec::new();
            let late = |i: usize, scratch: &mut Vec<f32>| {
                late_score(
                    &q.tokens,
                    space.tokens_of(i),
                    space.dim,
                    temperature,
                    scratch,
                )
            };
            if rerank_top == 0 || rerank_top >= space.len() {
                let all: Vec<f32> = (0..space.len()).map(|i| late(i, &mut scratch)).collect();
                return top_k(&all, want);
            }
            let cands = top_k(&pooled, rerank_top.max(if k == 0 { 0 } else { k }));
            let mut rescored: Vec<Hit> = cands
                .iter()
                .map(|h| Hit {
                    index: h.index,
                    score: late(h.index, &mut scratch),
                })
                .collect();
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
mod tests {
    use super::*;

    #[test]
    fn late_score_limits() {
        let dim = 2;
        let q = vec![1.0, 0.0];
        let t: Vec<f16> = [1.0, 0.0, 0.0, 1.0]
            .iter()
            .map(|&x| f16::from_f32(x))
            .collect();
        let mut s = Vec::new();
        // τ → 0: MaxSim picks the identical token.
        assert!((late_score(&q, &t, dim, 0.0, &mut s) - 1.0).abs() < 1e-6);
        assert!((late_score(&q, &t, dim, 1e-3, &mut s) - 1.0).abs() < 1e-4);
        // Large τ: uniform attention, the mean cosine (1 + 0) / 2.
        assert!((late_score(&q, &t, dim, 1e6, &mut s) - 0.5).abs() < 1e-4);
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let h = top_k(&[0.1, 0.9, 0.5, 0.9], 3);
        let idx: Vec<usize> = h.iter().map(|h| h.index).collect();
        assert_eq!(idx, vec![1, 3, 2]);
        assert_eq!(top_k(&[0.3], 5).len(), 1);
    }
}

//! Unit tests of the parent module.

use super::*;

#[test]
fn simd_dot_matches_portable() {
    for n in [0, 1, 7, 16, 17, 384, 385] {
        let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        assert!((dot(&a, &b) - dot_portable(&a, &b)).abs() < 1e-4, "n = {n}");
    }
}

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
fn attend_score_limits() {
    // Two query tokens, similarities 1 and 0 to the concept.
    let q = [1.0, 0.0, 0.0, 1.0];
    let c = [1.0, 0.0];
    let s = &mut Vec::new();
    assert!(
        (attend_score(&q, &c, 0.0, s) - 1.0).abs() < 1e-6,
        "τ = 0: best token"
    );
    assert!((attend_score(&q, &c, 1e-3, s) - 1.0).abs() < 1e-4);
    assert!(
        (attend_score(&q, &c, 1e6, s) - 0.5).abs() < 1e-4,
        "large τ: mean"
    );
    assert_eq!(attend_score(&[], &c, 0.02, s), 0.0, "no tokens");
}

/// A sentence naming two skills: its pooled vector lies between them and is closest to a
/// third concept that is neither; attention lets each named skill match its own token.
#[test]
fn attend_ranks_each_named_skill_above_their_blend() {
    let h = std::f32::consts::FRAC_1_SQRT_2;
    let mut s = space(3, 3);
    s.pooled = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, h, h, 0.0];
    let q = TextEmbedding {
        tokens: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        pooled: vec![h, h, 0.0],
        n_tokens: 2,
        n_windows: 1,
        offsets: vec![(0, 1), (2, 3)],
        layer_rows: vec![],
    };
    let pooled = rank(&s, &q, 3, ScorerSpec::Pooled);
    assert_eq!(pooled[0].index, 2, "pooled: the blend first");
    let attend = ScorerSpec::Attend {
        temperature: 0.02,
        pooled_weight: 0.25,
        rerank_top: 0,
    };
    let got: Vec<usize> = rank(&s, &q, 3, attend).iter().map(|h| h.index).collect();
    assert_eq!(got, vec![0, 1, 2], "attend: both named skills first");
}

fn space(n: usize, dim: usize) -> EncodedSpace {
    space_seeded(n, dim, 0)
}

fn space_seeded(n: usize, dim: usize, seed: usize) -> EncodedSpace {
    let concepts = (0..n)
        .map(|i| crate::space::Concept {
            id: i.to_string(),
            label: i.to_string(),
            aliases: vec![],
            description: None,
        })
        .collect();
    let space = std::sync::Arc::new(crate::space::TargetSpace {
        name: "t".into(),
        taxonomy_version: "t".into(),
        concepts,
        sha256: String::new(),
    });
    let mut pooled = Vec::new();
    let mut tokens = Vec::new();
    let mut offsets = vec![0];
    for i in 0..n {
        let mut v: Vec<f32> = (0..dim)
            .map(|d| {
                // Deterministic pseudo-random coordinates: no two rows alike.
                let x = ((i * dim + d) as f32 * 12.9898 + seed as f32 * 78.233).sin() * 43758.5;
                x - x.floor() - 0.5
            })
            .collect();
        crate::encoder::normalize(&mut v);
        pooled.extend_from_slice(&v);
        tokens.extend(v.iter().map(|&x| f16::from_f32(x)));
        tokens.extend(v.iter().rev().map(|&x| f16::from_f32(x)));
        offsets.push(offsets.last().unwrap() + 2);
    }
    EncodedSpace {
        space,
        dim,
        pooled,
        offsets,
        tokens,
        model_version: "m".into(),
        aliases: None,
    }
}

#[test]
fn rank_many_equals_rank_one_by_one() {
    let s = space(300, 16);
    let qs: Vec<TextEmbedding> = (0..5)
        .map(|j| {
            let mut v: Vec<f32> = (0..16).map(|d| ((j * 5 + d) % 7) as f32 - 3.0).collect();
            crate::encoder::normalize(&mut v);
            one_token(v)
        })
        .chain(std::iter::once(TextEmbedding::default()))
        .collect();
    for many in assert_rank_many_matches_rank(&s, &qs) {
        assert!(many.last().unwrap().is_empty(), "empty query, no labels");
    }
}

/// A one-token query whose token and pooled vectors are `v`.
fn one_token(v: Vec<f32>) -> TextEmbedding {
    TextEmbedding {
        tokens: v.clone(),
        pooled: v,
        n_tokens: 1,
        n_windows: 1,
        offsets: vec![(0, 1)],
        layer_rows: vec![],
    }
}

/// Ranks `qs` with `rank_many` and one by one, under every scorer, checks they agree, and
/// returns `rank_many`'s rankings for each scorer.
fn assert_rank_many_matches_rank(s: &EncodedSpace, qs: &[TextEmbedding]) -> Vec<Vec<Vec<Hit>>> {
    let refs: Vec<&TextEmbedding> = qs.iter().collect();
    [
        ScorerSpec::Pooled,
        ScorerSpec::Late {
            temperature: 0.1,
            rerank_top: 20,
        },
        ScorerSpec::Attend {
            temperature: 0.02,
            pooled_weight: 0.5,
            rerank_top: 20,
        },
    ]
    .into_iter()
    .map(|scorer| {
        let many = rank_many(s, &refs, 10, scorer);
        for (q, m) in qs.iter().zip(&many) {
            assert_eq!(&rank(s, q, 10, scorer), m, "{scorer:?}");
        }
        many
    })
    .collect()
}

fn with_aliases(mut s: EncodedSpace, per_concept: usize, weight: f32) -> EncodedSpace {
    let n = s.len();
    s.aliases = Some(Box::new(AliasRows {
        weight,
        offsets: (0..=n).map(|i| i * per_concept).collect(),
        rows: space_seeded(n * per_concept, s.dim, 5),
    }));
    s
}

#[test]
fn aliases_raise_a_concept_to_its_weighted_best_alias() {
    let s = with_aliases(space(40, 16), 2, 0.9);
    let a = s.aliases.as_ref().unwrap();
    // The query is alias 7 verbatim: its owner, concept 3, scores 0.9 at least.
    let q = one_token(a.rows.pooled_of(7).to_vec());
    let scores = pooled_scores(&s, &q);
    for (i, &got) in scores.iter().enumerate() {
        let label = dot(s.pooled_of(i), &q.pooled);
        let best_alias = (2 * i..2 * i + 2)
            .map(|j| dot(a.rows.pooled_of(j), &q.pooled))
            .fold(f32::MIN, f32::max);
        assert!(
            (got - label.max(0.9 * best_alias)).abs() < 1e-5,
            "concept {i}"
        );
    }
    assert!(scores[3] >= 0.9 - 1e-5);
    let top = rank(&s, &q, 1, ScorerSpec::Pooled);
    assert_eq!((top[0].index, top[0].alias), (3, Some(7)), "{top:?}");
    let plain = pooled_scores(&space(40, 16), &q);
    assert!(plain[3] < scores[3], "the alias lifted its concept");
    let late = rank(
        &s,
        &q,
        1,
        ScorerSpec::Late {
            temperature: 0.0,
            rerank_top: 0,
        },
    );
    assert!(late[0].score >= 0.9 - 1e-3, "{late:?}");
    assert_eq!((late[0].index, late[0].alias), (3, Some(7)), "{late:?}");
    // Without aliases, no hit names one.
    assert!(rank(&space(40, 16), &q, 5, ScorerSpec::Pooled)
        .iter()
        .all(|h| h.alias.is_none()));
}

#[test]
fn rank_many_equals_rank_one_by_one_with_aliases() {
    let s = with_aliases(space(100, 16), 3, 0.8);
    let qs: Vec<TextEmbedding> = (0..4)
        .map(|j| one_token(s.aliases.as_ref().unwrap().rows.pooled_of(j * 31).to_vec()))
        .collect();
    assert_rank_many_matches_rank(&s, &qs);
}

#[test]
fn top_k_orders_and_breaks_ties_by_index() {
    let h = top_k(&[0.1, 0.9, 0.5, 0.9], 3);
    let idx: Vec<usize> = h.iter().map(|h| h.index).collect();
    assert_eq!(idx, vec![1, 3, 2]);
    assert_eq!(top_k(&[0.3], 5).len(), 1);
}

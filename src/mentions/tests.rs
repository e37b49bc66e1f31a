//! Unit tests of the tagger head: decoding, window width, span embeddings.

use super::*;

fn head(dim: usize) -> MentionHead {
    // One hidden unit that fires on feature 0 of the token itself: skill B when it does.
    let width = (2 * CONTEXT + 1) * dim;
    let mut w1 = vec![0.0; width];
    w1[dim] = 10.0; // self block, feature 0
    let mut w2 = vec![0.0; N_LOGITS];
    w2[1] = 1.0; // skill B
    let b2 = vec![2.0, 0.0, 0.0, 2.0, 0.0, 0.0];
    MentionHead::new(dim, 0, 1, w1, vec![0.0], w2, b2).unwrap()
}

#[test]
fn detect_maps_tokens_to_words_and_bounds_the_count() {
    let dim = 2;
    let text = "Java and Rust";
    // Token rows: "Java" fires, "and" does not, "Ru" "##st" fire.
    let rows = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0];
    let emb = TextEmbedding {
        pooled: vec![1.0, 0.0],
        tokens: rows.to_vec(),
        n_tokens: 4,
        n_windows: 1,
        offsets: vec![(0, 4), (5, 8), (9, 11), (11, 13)],
        ..Default::default()
    };
    let h = head(dim);
    let m = h.detect(text, &emb, 10);
    let words: Vec<&str> = m.iter().map(|m| &text[m.start..m.end]).collect();
    // "Ru" and "##st" both lean B, so they are two spans snapped to the same word: one.
    assert_eq!(words, vec!["Java", "Rust"]);
    assert_eq!(m[1].tokens, (2, 4));
    assert_eq!(m[0].kind, MentionKind::Skill);
    assert_eq!(h.detect(text, &emb, 1).len(), 1);
    // A sentence the gate rules out has no mention; the gate is written with the head.
    let mut gated = h.clone();
    gated.gate = Some((vec![-10.0, 0.0], 0.0));
    assert_eq!(
        gated.detect(text, &emb, 10).len(),
        2,
        "gate off at threshold 0"
    );
    gated.gate_threshold = 0.5;
    assert!(gated.gate_probability(&emb.pooled) < 0.01);
    assert!(gated.detect(text, &emb, 10).is_empty());
    assert!(gated.tensors().iter().any(|(n, _, _)| *n == GATE_W));
    let wrong = MentionHead::new(3, 0, 1, vec![0.0; 9], vec![0.0], vec![0.0; 6], vec![0.0; 6]);
    assert!(wrong.is_ok());
    assert!(
        MentionHead::new(3, 0, 2, vec![0.0; 9], vec![0.0], vec![0.0; 6], vec![0.0; 6]).is_err()
    );
}

#[test]
fn the_window_width_follows_the_weights_and_reaches_far_neighbours() {
    let dim = 2;
    // context 2: five token blocks; the unit fires on feature 0 of the token two ahead.
    let mut w1 = vec![0.0; 5 * dim];
    w1[4 * dim] = 10.0;
    let (mut w2, b2) = (vec![0.0; N_LOGITS], vec![2.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
    w2[1] = 1.0;
    let h = MentionHead::new(dim, 0, 1, w1.clone(), vec![0.0], w2.clone(), b2.clone()).unwrap();
    assert_eq!((h.context(), h.sentence_context()), (2, false));
    // Only token 2 has feature 0 set, so only token 0 (two before it) leans to B.
    let rows = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
    let emb = TextEmbedding {
        pooled: vec![1.0, 0.0],
        tokens: rows.to_vec(),
        n_tokens: 4,
        ..Default::default()
    };
    let p = h.probabilities(&emb);
    let b: Vec<bool> = (0..4).map(|i| p[i * N_LOGITS + 1] > 0.5).collect();
    assert_eq!(b, vec![true, false, false, false]);
    // Six blocks: context 2 and the sentence; its file tensors keep that shape.
    w1.extend([0.0; 2]);
    let hs = MentionHead::new(dim, 0, 1, w1, vec![0.0], w2, b2).unwrap();
    assert_eq!((hs.context(), hs.sentence_context()), (2, true));
    assert_eq!(hs.tensors()[0].1, vec![6 * dim, 1]);
}

#[test]
fn a_head_reads_each_tokens_earlier_layers_before_its_final_row() {
    let dim = 2;
    // One earlier layer: token blocks of 2·dim, context 1. The unit fires on feature 0 of
    // the token's own earlier-layer row (self block starts at 2·dim).
    let td = 2 * dim;
    let mut w1 = vec![0.0; 3 * td];
    w1[td] = 10.0;
    let (mut w2, b2) = (vec![0.0; N_LOGITS], vec![2.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
    w2[1] = 1.0;
    let h = MentionHead::new(dim, 1, 1, w1.clone(), vec![0.0], w2.clone(), b2.clone()).unwrap();
    assert_eq!(
        (h.layers(), h.context(), h.sentence_context()),
        (1, 1, false)
    );
    assert_eq!(h.tensors()[0].1, vec![3 * td, 1]);
    // Final rows all fire feature 0; only token 1's earlier row does.
    let emb = TextEmbedding {
        pooled: vec![1.0, 0.0],
        tokens: vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0],
        n_tokens: 3,
        layer_rows: vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0],
        ..Default::default()
    };
    let p = h.probabilities(&emb);
    let b: Vec<bool> = (0..3).map(|i| p[i * N_LOGITS + 1] > 0.5).collect();
    assert_eq!(b, vec![false, true, false]);
    // An embedding without the earlier rows gives no probabilities rather than wrong ones.
    let bare = TextEmbedding {
        layer_rows: vec![],
        ..emb.clone()
    };
    assert!(h.probabilities(&bare).is_empty());
    // The same weights plus a sentence block read as context 1 with the sentence.
    w1.extend([0.0; 2]);
    let hs = MentionHead::new(dim, 1, 1, w1, vec![0.0], w2.clone(), b2.clone()).unwrap();
    assert_eq!((hs.context(), hs.sentence_context()), (1, true));
    // A width that is neither is refused.
    assert!(MentionHead::new(dim, 1, 1, vec![0.0; 2 * td], vec![0.0], w2, b2).is_err());
}

#[test]
fn span_embedding_is_the_normalised_mean_of_its_rows() {
    let emb = TextEmbedding {
        pooled: vec![0.0, 1.0],
        tokens: vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0],
        n_tokens: 3,
        n_windows: 1,
        offsets: vec![(0, 1), (2, 3), (4, 5)],
        ..Default::default()
    };
    let s = span_embedding(&emb, (0, 2));
    let r = std::f32::consts::FRAC_1_SQRT_2;
    assert!((s.pooled[0] - r).abs() < 1e-6 && (s.pooled[1] - r).abs() < 1e-6);
    assert_eq!(s.n_tokens, 2);
    assert!(span_embedding(&emb, (2, 2)).is_empty());
}

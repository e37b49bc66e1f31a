//! `mode = "mentions"`: the tagger's spans of a target's units, each ranked on its own
//! contextual token rows, and the event's labels built from them (each concept once).

use std::sync::Arc;

use super::{Evidence, Label, Target, Unit};
use crate::encoder::TextEmbedding;
use crate::mentions::{span_embedding, MentionHead};
use crate::rank::{rank_many, Hit};
use crate::text::char_offset;

/// A mention to rank: its embedding and the evidence it would give.
#[derive(Debug, Clone)]
pub struct FoundMention {
    /// The span's embedding (contextual token rows pooled), or the item's own.
    pub embedding: TextEmbedding,
    /// Field, the mention's words, their character span in the field, and the sentence.
    pub evidence: Evidence,
}

/// The mentions of a target's units, in text order, at most `max` (the most confident
/// kept when a long description has more).
pub fn find_mentions(
    units: &[&Unit],
    embeddings: &[Arc<TextEmbedding>],
    head: &MentionHead,
    max: usize,
) -> Vec<FoundMention> {
    let mut found: Vec<(f32, FoundMention)> = Vec::new();
    for u in units {
        let emb = embeddings[u.text].as_ref();
        if u.is_item {
            found.push((
                f32::INFINITY,
                FoundMention {
                    embedding: emb.clone(),
                    evidence: u.evidence.clone(),
                },
            ));
            continue;
        }
        let sentence = &u.evidence.text;
        for m in head.detect(sentence, emb, max) {
            let start = u.evidence.start + char_offset(sentence, m.start);
            let words = &sentence[m.start..m.end];
            found.push((
                m.confidence,
                FoundMention {
                    embedding: span_embedding(emb, m.tokens),
                    evidence: Evidence {
                        field: u.evidence.field.clone(),
                        text: words.to_string(),
                        start,
                        end: start + words.chars().count(),
                        sentence: Some(sentence.clone()),
                    },
                },
            ));
        }
    }
    if found.len() > max {
        // Keep the most confident, then restore text order.
        let mut order: Vec<usize> = (0..found.len()).collect();
        order.sort_by(|&a, &b| found[b].0.total_cmp(&found[a].0).then(a.cmp(&b)));
        order.truncate(max);
        order.sort_unstable();
        let mut keep = vec![false; found.len()];
        order.into_iter().for_each(|i| keep[i] = true);
        let mut i = 0;
        found.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }
    crate::telemetry::mentions_found(found.len());
    found.into_iter().map(|(_, m)| m).collect()
}

/// Labels of a `mentions` target: each mention's top concept when it clears the threshold
/// (the tagger's calibrated one, or the target's `min_score` when higher); each concept once,
/// with its best mention as evidence and how many mentions it had; the top k by score.
pub fn mention_labels(t: &Target, found: &[FoundMention], head: &MentionHead) -> Vec<Label> {
    let queries: Vec<&TextEmbedding> = found.iter().map(|m| &m.embedding).collect();
    let tops = top_concepts(t, &queries);
    labels_from_tops(t, found, &tops, head)
}

/// The top concept in `t`'s space of each mention embedding (one per mention: near-duplicate
/// concepts of one mention never crowd out others).
pub fn top_concepts(t: &Target, queries: &[&TextEmbedding]) -> Vec<Option<Hit>> {
    rank_many(&t.space, queries, 1, t.scorer)
        .into_iter()
        .map(|hits| hits.into_iter().next())
        .collect()
}

/// [`mention_labels`] from each mention's top concept, `tops[i]` being `found[i]`'s
/// (calibration sweeps rank a mention once for many operating points of `head`).
pub fn labels_from_tops(
    t: &Target,
    found: &[FoundMention],
    tops: &[Option<Hit>],
    head: &MentionHead,
) -> Vec<Label> {
    let threshold = t.cfg.min_score.max(head.label_threshold);
    let mut best: std::collections::HashMap<usize, (Hit, usize, usize)> = Default::default();
    for (mi, h) in tops.iter().enumerate() {
        let Some(h) = *h else {
            continue;
        };
        if h.score < threshold {
            continue;
        }
        let e = best.entry(h.index).or_insert((h, mi, 0));
        e.2 += 1;
        if h.score > e.0.score {
            (e.0, e.1) = (h, mi);
        }
    }
    let mut v: Vec<(Hit, usize, usize)> = best.into_values().collect();
    v.sort_by(|a, b| {
        b.0.score
            .total_cmp(&a.0.score)
            .then(a.0.index.cmp(&b.0.index))
    });
    v.truncate(t.cfg.k);
    let concepts = &t.space.space.concepts;
    v.into_iter()
        .enumerate()
        .map(|(r, (h, mi, n))| Label {
            id: concepts[h.index].id.clone(),
            label: concepts[h.index].label.clone(),
            score: h.score,
            rank: r + 1,
            matched: t.space.alias_text(h.alias).map(str::to_string),
            mentions: Some(n),
            evidence: found[mi].evidence.clone(),
        })
        .collect()
}

//! Hard negatives mined from a model's own confusions: for a skill-side training text, the
//! skills the model ranks above every one of the text's labels.
//!
//! In-batch negatives of a 64-pair batch are mostly easy: a random other skill. The skills
//! that cost ranking quality are the near misses, a neighbour of the right skill ranked
//! above it. Those come from ranking each text against the whole skill space with the model
//! training starts from.
//!
//! A confusion may be a skill the text does name but was not labelled with (SkillSkape
//! sentences name several skills; a label in a pattern sentence has near-duplicates in
//! ESCO). Such a false negative would teach the model the wrong thing, so a mined skill is
//! masked when it is any labelled positive of the same text, or when its label and a
//! positive's contain one another (*Python* / *Python (computer programming)*).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::data::Pair;
use super::targets_skill;
use crate::encoder::Encoder;
use crate::error::Result;
use crate::model::ScorerSpec;
use crate::rank;
use crate::space::cache::EncodedSpace;

/// How mining went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MineReport {
    /// Distinct skill-side texts ranked.
    pub texts: usize,
    /// Texts whose best-ranked label was not first (the model's confusions).
    pub confused: usize,
    /// Confusions masked as likely positives (a label containing, or contained in, a
    /// positive's).
    pub masked: usize,
    /// Hard negatives kept.
    pub negatives: usize,
    /// Seconds spent.
    pub seconds: f64,
}

/// `needle` occurs in `hay` as whole words (case-insensitive).
fn contains_words(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.to_lowercase(), needle.to_lowercase());
    if n.trim().is_empty() {
        return false;
    }
    h.match_indices(&n).any(|(i, _)| {
        let before = h[..i].chars().next_back();
        let after = h[i + n.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Whether a mined label is likely a positive under another name.
fn same_skill(mined: &str, positive: &str) -> bool {
    contains_words(mined, positive) || contains_words(positive, mined)
}

/// For each distinct skill-side text of `pairs` (its target a skill of `space`), ranks it
/// with `enc` and `scorer` and keeps up to `per_text` of the skills ranked above its
/// best-ranked label, not masked (module docs), as `(text, skill label, skill id)` pairs
/// whose source is `"hard_negative"`. Texts whose labels are not in `space` are skipped.
pub fn confusions(
    enc: &mut Encoder,
    space: &EncodedSpace,
    scorer: ScorerSpec,
    pairs: &[Pair],
    per_text: usize,
    progress: bool,
) -> Result<(Vec<Pair>, MineReport)> {
    let t0 = std::time::Instant::now();
    let index = space.space.index_by_id();
    // Positives by text, in first-seen order (a deterministic result).
    let mut order: Vec<&str> = Vec::new();
    let mut positives: HashMap<&str, HashSet<usize>> = HashMap::new();
    for p in pairs.iter().filter(|p| targets_skill(p)) {
        let Some(&i) = index.get(p.target_id.as_str()) else {
            continue;
        };
        let e = positives.entry(p.query.as_str()).or_default();
        if e.is_empty() {
            order.push(p.query.as_str());
        }
        e.insert(i);
    }
    let mut report = MineReport {
        texts: order.len(),
        ..Default::default()
    };
    let bar = if progress {
        indicatif::ProgressBar::new(order.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "mining hard negatives {bar:40} {pos}/{len} texts [{elapsed_precise}, eta {eta}]",
        )
        .expect("template"),
    );
    // Only the head of the ranking matters: a label further down than this is a miss the
    // text's in-batch negatives already see.
    let depth = (per_text * 8).max(20);
    let mut out = Vec::new();
    for chunk in order.chunks(256) {
        let embs = enc.encode(chunk)?;
        let refs: Vec<&crate::encoder::TextEmbedding> = embs.iter().map(|e| e.as_ref()).collect();
        for (text, hits) in chunk
            .iter()
            .zip(rank::rank_many(space, &refs, depth, scorer))
        {
            let pos = &positives[text];
            let above: Vec<usize> = hits
                .iter()
                .map(|h| h.index)
                .take_while(|i| !pos.contains(i))
                .collect();
            if above.is_empty() {
                continue;
            }
            report.confused += 1;
            let mut kept = 0;
            for i in above {
                if kept == per_text {
                    break;
                }
                let c = &space.space.concepts[i];
                if pos
                    .iter()
                    .any(|&p| same_skill(&c.label, &space.space.concepts[p].label))
                {
                    report.masked += 1;
                    continue;
                }
                out.push(Pair {
                    query: text.to_string(),
                    target: c.label.clone(),
                    target_id: c.id.clone(),
                    source: "hard_negative",
                });
                kept += 1;
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    report.negatives = out.len();
    report.seconds = t0.elapsed().as_secs_f64();
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_inside_another_is_masked_as_the_same_skill() {
        assert!(same_skill("Python (computer programming)", "python"));
        assert!(!same_skill("use Python", "Python (computer programming)"));
        assert!(!same_skill("Java", "JavaScript"), "words, not letters");
        assert!(same_skill("manage a team", "manage a team of nurses"));
        assert!(!same_skill("", "anything"));
    }
}

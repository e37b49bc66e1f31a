//! Hard negatives mined from a model's own confusions: for a skill-side training text, the
//! skills the model ranks above every one of the text's labels.
//!
//! In-batch negatives of a 64-pair batch are mostly easy: a random other skill. The skills
//! that cost ranking quality are the near misses, a neighbour of the right skill ranked
//! above it. Those come from ranking each text against the whole skill space with the model
//! training starts from.
//!
//! Confusions only teach where the model is already wrong. A text ranked right can still sit
//! a hair above its neighbours, and those neighbours are named by ESCO's skill hierarchy:
//! skills under the same broader concept (a skill group, or a broader skill) are the ones a
//! job-ad sentence is most easily mistaken for. With a [`Hierarchy`], the siblings of a
//! text's labels that the model ranks highest for it are mined as well, wherever they rank.
//!
//! A confusion may be a skill the text does name but was not labelled with (SkillSkape
//! sentences name several skills; a label in a pattern sentence has near-duplicates in
//! ESCO). Such a false negative would teach the model the wrong thing, so a mined skill is
//! masked when it is any labelled positive of the same text, or when its label and a
//! positive's contain one another (*Python* / *Python (computer programming)*), or when it is
//! a positive's broader or narrower skill (a sentence that names *Python* names
//! *computer programming* too).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::data::Pair;
use super::targets_skill;
use crate::encoder::Encoder;
use crate::error::Result;
use crate::model::ScorerSpec;
use crate::rank;
use crate::space::cache::EncodedSpace;
use crate::space::{Concept, TargetSpace};

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
    /// Hard negatives kept, confusions and siblings together.
    pub negatives: usize,
    /// Of those, siblings in the skill hierarchy (not counted as confusions).
    pub siblings: usize,
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

/// What to mine per skill-side text.
#[derive(Debug, Clone, Copy, Default)]
pub struct MineSpec<'h> {
    /// Up to this many skills ranked above every label of the text.
    pub confusions: usize,
    /// Up to this many siblings of the text's labels in `hierarchy`, the highest ranked
    /// first (none without a hierarchy).
    pub siblings: usize,
    /// ESCO's skill hierarchy over the mined space.
    pub hierarchy: Option<&'h Hierarchy>,
}

/// The broader concepts of each concept of a space, from ESCO's skill hierarchy
/// (`broaderRelationsSkillPillar.csv`): skill groups and broader skills.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// By concept index: interned ids of its broader concepts.
    broader: Vec<Vec<u32>>,
    /// By concept index: its own interned id (as another concept's broader one).
    own: Vec<u32>,
}

impl Hierarchy {
    /// From `(narrower URI, broader URI)` edges; edges of concepts not in `space` are ignored.
    pub fn from_edges<'a>(
        space: &TargetSpace,
        edges: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut intern = |uri: &str| {
            let n = ids.len() as u32;
            *ids.entry(uri.to_string()).or_insert(n)
        };
        let own: Vec<u32> = space.concepts.iter().map(|c| intern(&c.id)).collect();
        let index = space.index_by_id();
        let mut broader = vec![Vec::new(); space.concepts.len()];
        for (narrower, parent) in edges {
            if let Some(&i) = index.get(narrower) {
                broader[i].push(intern(parent));
            }
        }
        Hierarchy { broader, own }
    }

    /// ESCO v1.1.1's skill hierarchy over `space`, from the relations zip under `data_dir`.
    pub fn load(data_dir: &std::path::Path, space: &TargetSpace) -> Result<Self> {
        let member = "broaderRelationsSkillPillar.csv";
        let buf = crate::space::read_esco_relations(data_dir, member)?;
        let (mut rdr, [narrower, parent]) =
            crate::space::esco_columns(member, &buf, ["conceptUri", "broaderUri"])?;
        let rows: Vec<csv::StringRecord> = rdr.records().flatten().collect();
        Ok(Self::from_edges(
            space,
            rows.iter()
                .map(|r| (r.get(narrower).unwrap_or(""), r.get(parent).unwrap_or(""))),
        ))
    }

    /// `a` and `b` are distinct and share a broader concept.
    pub fn siblings(&self, a: usize, b: usize) -> bool {
        a != b && self.broader[a].iter().any(|p| self.broader[b].contains(p))
    }

    /// One of `a`, `b` is the other's broader concept.
    pub fn nested(&self, a: usize, b: usize) -> bool {
        self.broader[a].contains(&self.own[b]) || self.broader[b].contains(&self.own[a])
    }
}

/// The negatives of one text, by concept index, from its ranking `hits` (best first) and its
/// positives `pos` (module docs); counts into `report`.
fn pick(
    hits: &[usize],
    pos: &HashSet<usize>,
    concepts: &[Concept],
    spec: &MineSpec,
    report: &mut MineReport,
) -> Vec<usize> {
    let likely_positive = |i: usize| {
        pos.iter().any(|&p| {
            same_skill(&concepts[i].label, &concepts[p].label)
                || spec.hierarchy.is_some_and(|h| h.nested(i, p))
        })
    };
    let mut out = Vec::new();
    let above: Vec<usize> = hits
        .iter()
        .copied()
        .take_while(|i| !pos.contains(i))
        .collect();
    if !above.is_empty() {
        report.confused += 1;
    }
    for &i in &above {
        if out.len() == spec.confusions {
            break;
        }
        if likely_positive(i) {
            report.masked += 1;
            continue;
        }
        out.push(i);
    }
    if let Some(h) = spec.hierarchy {
        let mut kept = 0;
        for &i in hits {
            if kept == spec.siblings {
                break;
            }
            if pos.contains(&i) || out.contains(&i) || !pos.iter().any(|&p| h.siblings(i, p)) {
                continue;
            }
            if likely_positive(i) {
                report.masked += 1;
                continue;
            }
            out.push(i);
            kept += 1;
        }
        report.siblings += kept;
    }
    out
}

/// For each distinct skill-side text of `pairs` (its target a skill of `space`), ranks it
/// with `enc` and `scorer` and keeps the negatives `spec` asks for (module docs), as
/// `(text, skill label, skill id)` pairs whose source is `"hard_negative"`. Texts whose
/// labels are not in `space` are skipped.
pub fn negatives(
    enc: &mut Encoder,
    space: &EncodedSpace,
    scorer: ScorerSpec,
    pairs: &[Pair],
    spec: &MineSpec,
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
    // Only the head of the ranking matters: a skill further down is one the text's
    // in-batch negatives already tell apart. Siblings are looked for a little deeper.
    let mut depth = (spec.confusions * 8).max(20);
    if spec.hierarchy.is_some() && spec.siblings > 0 {
        depth = depth.max(100);
    }
    let concepts = &space.space.concepts;
    let mut out = Vec::new();
    for chunk in order.chunks(256) {
        let embs = enc.encode(chunk)?;
        let refs: Vec<&crate::encoder::TextEmbedding> = embs.iter().map(|e| e.as_ref()).collect();
        for (text, hits) in chunk
            .iter()
            .zip(rank::rank_many(space, &refs, depth, scorer))
        {
            let hits: Vec<usize> = hits.iter().map(|h| h.index).collect();
            for i in pick(&hits, &positives[text], concepts, spec, &mut report) {
                let c = &concepts[i];
                out.push(Pair {
                    query: text.to_string(),
                    target: c.label.clone(),
                    target_id: c.id.clone(),
                    source: "hard_negative",
                });
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

    fn space(labels: &[&str]) -> TargetSpace {
        let concepts = labels
            .iter()
            .map(|l| Concept {
                id: format!("s:{l}"),
                label: l.to_string(),
                aliases: vec![],
                description: None,
            })
            .collect();
        TargetSpace::new("t".into(), "t".into(), concepts)
    }

    #[test]
    fn siblings_share_a_broader_concept_and_nesting_is_one_way() {
        // 0 programming, 1 Python, 2 Java, 3 nursing; 1 and 2 under 0 and under group g.
        let sp = space(&["programming", "Python", "Java", "nursing"]);
        let h = Hierarchy::from_edges(
            &sp,
            [
                ("s:Python", "s:programming"),
                ("s:Java", "s:programming"),
                ("s:Java", "g"),
                ("s:nursing", "h"),
                ("s:unknown", "g"),
            ],
        );
        assert!(h.siblings(1, 2) && h.siblings(2, 1));
        assert!(!h.siblings(1, 1), "not its own sibling");
        assert!(!h.siblings(1, 3) && !h.siblings(0, 1));
        assert!(h.nested(0, 1) && h.nested(2, 0));
        assert!(!h.nested(1, 2) && !h.nested(3, 0));
    }

    #[test]
    fn pick_takes_confusions_above_the_label_then_the_best_ranked_siblings() {
        // 0 programming (broader), 1..=4 languages under it, 5 Python 3 (same skill as 1),
        // 6 nursing (unrelated).
        let sp = space(&[
            "programming",
            "Python",
            "Java",
            "Rust",
            "Go",
            "Python 3",
            "nursing",
        ]);
        let edges: Vec<(String, String)> = ["Python", "Java", "Rust", "Go", "Python 3"]
            .iter()
            .map(|l| (format!("s:{l}"), "s:programming".to_string()))
            .collect();
        let h = Hierarchy::from_edges(&sp, edges.iter().map(|(a, b)| (a.as_str(), b.as_str())));
        let pos: HashSet<usize> = [1].into();
        // Ranking: nursing, programming (broader: masked), Python 3 (same skill: masked),
        // Python (the label), Go, Java, Rust.
        let hits = [6, 0, 5, 1, 4, 2, 3];
        let mut r = MineReport::default();
        let only_confusions = MineSpec {
            confusions: 3,
            ..Default::default()
        };
        assert_eq!(
            pick(&hits, &pos, &sp.concepts, &only_confusions, &mut r),
            vec![6, 0],
            "without a hierarchy only label containment masks (Python 3), not the broader skill"
        );
        let mut r = MineReport::default();
        let spec = MineSpec {
            confusions: 3,
            siblings: 2,
            hierarchy: Some(&h),
        };
        assert_eq!(
            pick(&hits, &pos, &sp.concepts, &spec, &mut r),
            vec![6, 4, 2]
        );
        assert_eq!((r.confused, r.siblings), (1, 2), "{r:?}");
        // Python 3 is masked as a confusion and again as a sibling; programming once.
        assert_eq!(r.masked, 3, "{r:?}");
        // Ranked right: no confusion, siblings still mined.
        let mut r = MineReport::default();
        assert_eq!(
            pick(&[1, 3, 6, 2], &pos, &sp.concepts, &spec, &mut r),
            vec![3, 2]
        );
        assert_eq!((r.confused, r.siblings, r.masked), (0, 2, 0));
    }
}

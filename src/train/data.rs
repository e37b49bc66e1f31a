//! Training pairs from the structure of work data: ESCO v1.1.1 (labels, alternative labels,
//! descriptions, occupation → essential skills), SkillSkape job-ad sentences with their
//! skills, and analysts' feedback pairs.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::space::TargetSpace;

/// One positive pair: a text and the concept it names (`target` is the concept's text as
/// the runtime embeds it, its preferred label).
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// Query side: an alternative label, a sentence, a description, a title.
    pub query: String,
    /// Target side: the concept's preferred label.
    pub target: String,
    /// Concept id; pairs sharing it are positives of each other (masked, not negatives).
    pub target_id: String,
    /// Where the pair came from.
    pub source: &'static str,
}

/// The names of the sources, as `Pair::source` and the trainer's `--skip` and `--repeat`
/// spell them.
pub const SOURCES: [&str; 10] = [
    "occupation_alias",
    "occupation_title",
    "job_title",
    "skill_alias",
    "skill_description",
    "skill_sentence",
    "occupation_skill",
    "skillskape",
    "skillspan_pseudo",
    "feedback",
];

/// The sources the shipped model's recipe leaves out (`uwe-trainer train --skip`'s
/// default): skill aliases and descriptions cost job normalisation; skill sentences have not
/// passed the gate yet.
pub const SHIPPED_SKIP: [&str; 3] = ["skill_alias", "skill_description", "skill_sentence"];

/// Which sources to use, and how much of each.
#[derive(Debug, Clone)]
pub struct DataSpec {
    /// Occupation alternative labels → occupation.
    pub occupation_aliases: bool,
    /// Occupation labels dressed as vacancy titles ("Senior …", "… (m/f/d)", "… / …") →
    /// occupation.
    pub occupation_titles: bool,
    /// Skill alternative labels → skill.
    pub skill_aliases: bool,
    /// First sentence of a skill's description → skill.
    pub skill_descriptions: bool,
    /// Every skill's label or an alternative label placed in a job-ad sentence pattern
    /// (a duty, a requirement, a bullet, a skill list of two or three) → the skill(s).
    pub skill_sentences: bool,
    /// Occupation label → up to this many essential skills (0: none).
    pub occupation_skills: usize,
    /// SkillSkape sentences (CSV `,sentence,skills`).
    pub skillskape: Option<std::path::PathBuf>,
    /// Real vacancy titles labelled with their occupation, JSONL `{"text", "label_id"}`
    /// (the training share of the JobBERT titles, `uwe-connect convert --train-out`).
    pub job_titles: Option<std::path::PathBuf>,
    /// Real job-ad sentences with pseudo-labels, JSONL `{"text", "label_id", ...}`
    /// (`uwe-trainer pseudo-label`).
    pub pseudo_labels: Option<std::path::PathBuf>,
    /// Feedback JSONL `{"text", "label_id"}`.
    pub feedback: Option<std::path::PathBuf>,
}

#[derive(Deserialize)]
struct Feedback {
    text: String,
    label_id: String,
    /// Feedback events carry one; a rejection is not a positive pair.
    #[serde(default)]
    verdict: Option<String>,
}

impl DataSpec {
    /// Every source of `data_dir` but those named in `skip` (as [`SOURCES`] spells them),
    /// with no occupation → skill pairs, pseudo-labels or feedback.
    pub fn without(data_dir: &Path, skip: &[&str]) -> Self {
        let on = |s: &str| !skip.contains(&s);
        DataSpec {
            occupation_aliases: on("occupation_alias"),
            occupation_titles: on("occupation_title"),
            skill_aliases: on("skill_alias"),
            skill_descriptions: on("skill_description"),
            skill_sentences: on("skill_sentence"),
            occupation_skills: 0,
            skillskape: on("skillskape").then(|| data_dir.join("training/skillskape/train.csv")),
            job_titles: on("job_title").then(|| data_dir.join("training/job_titles/train.jsonl")),
            pseudo_labels: None,
            feedback: None,
        }
    }
}

/// At most `n` pairs (`n` ≥ 1), an even stride through the list so that every source stays
/// represented.
pub fn sample_evenly(pairs: Vec<Pair>, n: usize) -> Vec<Pair> {
    let stride = (pairs.len() / n.max(1)).max(1);
    pairs.into_iter().step_by(stride).take(n).collect()
}

/// What vacancy titles wrap around an occupation name without changing the occupation:
/// seniority, contract, schedule, gender notices, levels. Generic patterns of job boards, not
/// taken from any evaluation set.
const TITLE_PREFIXES: [&str; 12] = [
    "Senior ",
    "Junior ",
    "Lead ",
    "Trainee ",
    "Intern ",
    "Internship - ",
    "Graduate ",
    "Experienced ",
    "Apprentice ",
    "Entry level ",
    "Urgent: ",
    "Hiring: ",
];
const TITLE_SUFFIXES: [&str; 12] = [
    " (m/f/d)",
    " (m/w/d)",
    " - full time",
    " - part time",
    " (contract)",
    " (temporary)",
    " - immediate start",
    " (remote)",
    " - hybrid",
    " II",
    " - night shift",
    " (fresh graduates welcome)",
];

/// A vacancy-title version of `name`: a prefix, a suffix, both, or a second name of the same
/// occupation joined by " / ", chosen by `k`.
fn dress_title(name: &str, other: Option<&str>, k: usize) -> String {
    let p = TITLE_PREFIXES[k % TITLE_PREFIXES.len()];
    let s = TITLE_SUFFIXES[(k / 4) % TITLE_SUFFIXES.len()];
    match (k % 4, other) {
        (0, _) => format!("{p}{name}"),
        (1, _) => format!("{name}{s}"),
        (2, Some(o)) => format!("{name} / {o}"),
        _ => format!("{p}{name}{s}"),
    }
}

/// Job-ad patterns around a skill/competence label, a verb phrase ("manage budgets").
const DUTY_PATTERNS: [&str; 10] = [
    "You will {} as part of the team.",
    "Ability to {}.",
    "- {}",
    "Your tasks: {}.",
    "We expect you to {} independently.",
    "Nice to have: the ability to {}.",
    "In this role you {} every day.",
    "Must be able to {}.",
    "Responsibilities include the need to {}.",
    "{}",
];
/// Job-ad patterns around a knowledge label, a noun phrase ("Python", "food safety").
const KNOWLEDGE_PATTERNS: [&str; 10] = [
    "Experience with {}.",
    "Solid knowledge of {} is required.",
    "Familiarity with {} is a plus.",
    "Good understanding of {}",
    "- {}",
    "Background in {} preferred.",
    "Nice to have: {}.",
    "You have worked with {} before.",
    "Requirements: {}",
    "{}",
];

/// A label as a job ad writes it: ESCO's parenthesised qualifier dropped ("Python (computer
/// programming)" → "Python").
fn as_written(label: &str) -> &str {
    match label.find(" (") {
        Some(i) if label.ends_with(')') && i > 0 => &label[..i],
        _ => label,
    }
}

/// Skill/competence (`false`) or knowledge (`true`) of each ESCO skill, by URI, from the
/// `skillType` column of `skills_en.csv`.
fn skill_types(data_dir: &Path) -> Result<HashMap<String, bool>> {
    let buf = crate::space::read_esco_member(data_dir, "skills_en.csv")?;
    let (mut rdr, [uri, ty]) =
        crate::space::esco_columns("skills_en.csv", &buf, ["conceptUri", "skillType"])?;
    Ok(rdr
        .records()
        .flatten()
        .map(|r| {
            let knowledge = r.get(ty).unwrap_or("") == "knowledge";
            (r.get(uri).unwrap_or("").to_string(), knowledge)
        })
        .collect())
}

/// Job-ad sentences for every skill of `skills`: one sentence per skill (its preferred label or
/// an alternative label, in a pattern of its type), and for every second skill a list naming
/// it with one or two others of its type, whose pairs share the query (positives of each
/// other). Patterns and names rotate by a multiplicative hash, so the set is deterministic.
fn skill_sentences(skills: &TargetSpace, knowledge: &HashMap<String, bool>) -> Vec<Pair> {
    let mut out = Vec::new();
    let mut k = 0usize;
    let mut pools: [Vec<(usize, &str)>; 2] = [Vec::new(), Vec::new()];
    for (ci, c) in skills.concepts.iter().enumerate() {
        k = k.wrapping_mul(2654435761).wrapping_add(ci + 1) % 1_000_003;
        let is_k = knowledge.get(&c.id).copied().unwrap_or(false);
        let names: Vec<&str> = std::iter::once(c.label.as_str())
            .chain(c.aliases.iter().map(String::as_str))
            .collect();
        let name = as_written(names[k % names.len()]);
        let pat = if is_k {
            KNOWLEDGE_PATTERNS[(k / 7) % KNOWLEDGE_PATTERNS.len()]
        } else {
            DUTY_PATTERNS[(k / 7) % DUTY_PATTERNS.len()]
        };
        out.push(Pair {
            query: pat.replacen("{}", name, 1),
            target: c.label.clone(),
            target_id: c.id.clone(),
            source: "skill_sentence",
        });
        if ci % 2 == 0 {
            pools[is_k as usize].push((ci, as_written(&c.label)));
        }
    }
    for (is_k, pool) in pools.iter().enumerate() {
        // Consecutive entries of a hashed order make lists of 2 or 3 unrelated skills.
        let mut order: Vec<usize> = (0..pool.len()).collect();
        order.sort_by_key(|&i| (i.wrapping_mul(2654435761)) % 1_000_003);
        let (mut i, mut lists) = (0, 0usize);
        while i + 1 < order.len() {
            // Every second list names three skills, the others two.
            let n = (if lists % 2 == 0 { 3 } else { 2 }).min(order.len() - i);
            lists += 1;
            let items: Vec<(usize, &str)> = order[i..i + n].iter().map(|&j| pool[j]).collect();
            let names: Vec<&str> = items.iter().map(|x| x.1).collect();
            let list = match names.as_slice() {
                [a, b] => format!("{a} and {b}"),
                [a, b, c] => format!("{a}, {b} and {c}"),
                _ => names.join(", "),
            };
            let query = if is_k == 1 {
                format!("Requirements: experience with {list}.")
            } else {
                format!("You will {list}.")
            };
            for (ci, _) in items {
                let c = &skills.concepts[ci];
                out.push(Pair {
                    query: query.clone(),
                    target: c.label.clone(),
                    target_id: c.id.clone(),
                    source: "skill_sentence",
                });
            }
            i += n;
        }
    }
    out
}

fn first_sentence(d: &str) -> String {
    let end = d.find(". ").map(|i| i + 1).unwrap_or(d.len());
    d[..end].chars().take(300).collect()
}

/// Builds the pairs.
pub fn build_pairs(data_dir: &Path, spec: &DataSpec) -> Result<Vec<Pair>> {
    let skills = TargetSpace::resolve("esco-skills", data_dir)?;
    let occs = TargetSpace::resolve("esco-occupations", data_dir)?;
    let mut out = Vec::new();
    for (space, on, src) in [
        (&occs, spec.occupation_aliases, "occupation_alias"),
        (&skills, spec.skill_aliases, "skill_alias"),
    ] {
        if !on {
            continue;
        }
        for c in &space.concepts {
            for a in &c.aliases {
                if a != &c.label {
                    out.push(Pair {
                        query: a.clone(),
                        target: c.label.clone(),
                        target_id: c.id.clone(),
                        source: src,
                    });
                }
            }
        }
    }
    if spec.occupation_titles {
        // A multiplicative hash spreads the patterns over occupations and their names.
        let mut k = 0usize;
        for c in &occs.concepts {
            let names: Vec<&String> = std::iter::once(&c.label).chain(&c.aliases).collect();
            for (i, n) in names.iter().enumerate() {
                k = k.wrapping_mul(2654435761).wrapping_add(i + 1) % 1_000_003;
                let other = names.get((i + 1) % names.len()).filter(|o| *o != n);
                out.push(Pair {
                    query: dress_title(n, other.map(|o| o.as_str()), k),
                    target: c.label.clone(),
                    target_id: c.id.clone(),
                    source: "occupation_title",
                });
            }
        }
    }
    if spec.skill_descriptions {
        for c in &skills.concepts {
            if let Some(d) = &c.description {
                out.push(Pair {
                    query: first_sentence(d),
                    target: c.label.clone(),
                    target_id: c.id.clone(),
                    source: "skill_description",
                });
            }
        }
    }
    if spec.skill_sentences {
        out.extend(skill_sentences(&skills, &skill_types(data_dir)?));
    }
    let skill_by_uri: HashMap<&str, &str> = skills
        .concepts
        .iter()
        .map(|c| (c.id.as_str(), c.label.as_str()))
        .collect();
    let skill_by_label = skills.ids_by_label();
    if spec.occupation_skills > 0 {
        let occ_label: HashMap<&str, &str> = occs
            .concepts
            .iter()
            .map(|c| (c.id.as_str(), c.label.as_str()))
            .collect();
        let buf = crate::space::read_esco_relations(data_dir, "occupationSkillRelations.csv")?;
        let mut per_occ: HashMap<String, usize> = HashMap::new();
        let mut rdr = csv::Reader::from_reader(buf.as_slice());
        for rec in rdr.records().flatten() {
            let (occ, rel, skill) = (
                rec.get(0).unwrap_or(""),
                rec.get(1).unwrap_or(""),
                rec.get(3).unwrap_or(""),
            );
            if rel != "essential" {
                continue;
            }
            let (Some(ol), Some(sl)) = (occ_label.get(occ), skill_by_uri.get(skill)) else {
                continue;
            };
            let n = per_occ.entry(occ.to_string()).or_default();
            if *n < spec.occupation_skills {
                *n += 1;
                out.push(Pair {
                    query: ol.to_string(),
                    target: sl.to_string(),
                    target_id: skill.to_string(),
                    source: "occupation_skill",
                });
            }
        }
    }
    if let Some(p) = &spec.skillskape {
        let mut rdr = csv::Reader::from_path(p)
            .map_err(|e| ModelError::Invalid(format!("{}: {e}", p.display())))?;
        for rec in rdr.records().flatten() {
            let sentence = rec.get(1).unwrap_or("").trim();
            for label in skillskape_labels(rec.get(2).unwrap_or("")) {
                if let Some(id) = skill_by_label.get(&label.to_lowercase()) {
                    out.push(Pair {
                        query: sentence.to_string(),
                        target: skill_by_uri[id].to_string(),
                        target_id: id.to_string(),
                        source: "skillskape",
                    });
                }
            }
        }
    }
    let by_id: HashMap<&str, &str> = skills
        .concepts
        .iter()
        .chain(&occs.concepts)
        .map(|c| (c.id.as_str(), c.label.as_str()))
        .collect();
    for (path, source) in [
        (&spec.job_titles, "job_title"),
        (&spec.pseudo_labels, "skillspan_pseudo"),
        (&spec.feedback, "feedback"),
    ] {
        if let Some(p) = path {
            out.extend(read_labelled(p, &by_id, source)?);
        }
    }
    out.retain(|p| !p.query.trim().is_empty());
    if spec.pseudo_labels.is_some() {
        // Employers repeat boilerplate, so some SkillSpan training sentences recur word for
        // word among the gate's skill dev sentences (29 of the shipped pseudo-labels, one of
        // them without the dev sentence's bullet): trained on, they would inflate the gate's
        // figures.
        let dev = dev_skill_queries(data_dir)?;
        out.retain(|p| p.source != "skillspan_pseudo" || !dev.contains(&words_key(&p.query)));
    }
    Ok(out)
}

/// A sentence's words, lower-cased, without the punctuation and bullets around them: two
/// sentences with the same key are the same sentence to a dev set.
fn words_key(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The query texts of the gate's skill dev tasks that exist under `data_dir`, as
/// [`words_key`]s.
fn dev_skill_queries(data_dir: &Path) -> Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    for t in crate::train::default_dev_tasks(data_dir) {
        if t.space == "esco-skills" && t.tasks.is_file() {
            out.extend(
                crate::eval::read_tasks(&t.tasks)?
                    .into_iter()
                    .map(|q| words_key(&q.query)),
            );
        }
    }
    Ok(out)
}

/// The skill labels of a SkillSkape row's `skills` column, a Python list literal
/// (`['a', 'b']`; `['UNK']` when the sentence names no ESCO skill).
pub fn skillskape_labels(list: &str) -> impl Iterator<Item = &str> {
    list.trim_matches(['[', ']'])
        .split("', '")
        .map(|s| s.trim_matches(['\'', '"', ' ']))
        .filter(|s| !s.is_empty() && *s != "UNK")
}

/// Reads labelled texts (JSONL `{"text", "label_id"}`) as pairs; an id that is not an ESCO
/// concept is an error that names the line, since a silently dropped label would skew
/// training.
fn read_labelled(p: &Path, by_id: &HashMap<&str, &str>, source: &'static str) -> Result<Vec<Pair>> {
    crate::error::read_jsonl::<Feedback>(p, "{\"text\", \"label_id\"}")?
        .into_iter()
        .map(|(line, fb)| {
            if fb.verdict.as_deref() == Some("reject") {
                return Err(ModelError::BadLine {
                    path: p.to_path_buf(),
                    line,
                    msg: "a rejected label is not a positive pair; `uwe-trainer serve` trains on rejections as hard negatives".into(),
                });
            }
            let label = by_id
                .get(fb.label_id.as_str())
                .ok_or_else(|| ModelError::BadLine {
                    path: p.to_path_buf(),
                    line,
                    msg: format!("label_id {:?} is not an ESCO concept", fb.label_id),
                })?;
            Ok(Pair {
                query: fb.text,
                target: label.to_string(),
                target_id: fb.label_id,
                source,
            })
        })
        .collect()
}

/// Splits off a deterministic dev share (by query text), so that no query text is in both.
pub fn split_dev(pairs: Vec<Pair>, per_mille: u64) -> (Vec<Pair>, Vec<Pair>) {
    use std::hash::{Hash, Hasher};
    pairs.into_iter().partition(|p| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        p.query.hash(&mut h);
        h.finish() % 1000 >= per_mille
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Concept;
    use std::collections::HashSet;

    #[test]
    fn labelled_titles_become_pairs_and_an_unknown_id_names_its_line() {
        let by_id: HashMap<&str, &str> = [("occ:1", "welder"), ("occ:2", "barista")].into();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("titles.jsonl");
        std::fs::write(
            &p,
            "{\"text\":\"Welder (m/f/d)\",\"label_id\":\"occ:1\"}\n\n{\"text\":\"Barista\",\"label_id\":\"occ:2\"}\n",
        )
        .unwrap();
        let pairs = read_labelled(&p, &by_id, "job_title").unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(
            (
                pairs[0].query.as_str(),
                pairs[0].target.as_str(),
                pairs[0].target_id.as_str()
            ),
            ("Welder (m/f/d)", "welder", "occ:1")
        );
        assert!(pairs.iter().all(|p| p.source == "job_title"));

        std::fs::write(
            &p,
            "{\"text\":\"Welder\",\"label_id\":\"occ:1\"}\n{\"text\":\"Pilot\",\"label_id\":\"occ:9\"}\n",
        )
        .unwrap();
        let err = read_labelled(&p, &by_id, "job_title")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2") || err.contains("line 2"), "{err}");
        assert!(err.contains("occ:9"), "{err}");
        std::fs::write(&p, "{\"title\":\"Welder\"}\n").unwrap();
        let err = read_labelled(&p, &by_id, "job_title")
            .unwrap_err()
            .to_string();
        assert!(err.contains("label_id"), "{err}");
    }

    #[test]
    fn a_dev_sentence_behind_another_bullet_is_the_same_sentence() {
        let dev = words_key("* Advanced knowledge of Kubernetes/Helm.");
        assert_eq!(dev, "advanced knowledge of kubernetes helm");
        assert_eq!(words_key("• advanced knowledge of Kubernetes / Helm"), dev);
        assert_ne!(words_key("Advanced knowledge of Kubernetes"), dev);
    }

    #[test]
    fn titles_keep_the_name_and_vary_the_dressing() {
        let t: Vec<String> = (0..8)
            .map(|k| dress_title("welder", Some("welding operator"), k))
            .collect();
        assert!(t.iter().all(|x| x.contains("welder")), "{t:?}");
        assert_eq!(t[0], "Senior welder");
        assert!(t[1].starts_with("welder ("), "{t:?}");
        assert_eq!(t[2], "welder / welding operator");
        // Only the " / " form repeats (k = 2 and 6).
        let distinct: std::collections::HashSet<&String> = t.iter().collect();
        assert_eq!(distinct.len(), t.len() - 1, "{t:?}");
    }

    #[test]
    fn skill_sentences_name_every_skill_in_a_pattern_of_its_type() {
        let skills = TargetSpace::resolve("esco-skills", Path::new("data")).unwrap();
        let types = skill_types(Path::new("data")).unwrap();
        assert_eq!(types.len(), skills.concepts.len());
        let pairs = skill_sentences(&skills, &types);
        let ids: HashSet<&str> = pairs.iter().map(|p| p.target_id.as_str()).collect();
        assert_eq!(
            ids.len(),
            skills.concepts.len(),
            "every skill has a sentence"
        );
        let by_id: HashMap<&str, &Concept> =
            skills.concepts.iter().map(|c| (c.id.as_str(), c)).collect();
        for p in pairs.iter().step_by(997) {
            let c = by_id[p.target_id.as_str()];
            let named = std::iter::once(&c.label)
                .chain(&c.aliases)
                .any(|n| p.query.contains(as_written(n)));
            assert!(named, "{:?} does not name {:?}", p.query, c.label);
            assert_eq!(p.target, c.label);
        }
        // Lists: one query, two or three skills, each its own pair.
        let mut per_query: HashMap<&str, usize> = HashMap::new();
        pairs
            .iter()
            .for_each(|p| *per_query.entry(p.query.as_str()).or_default() += 1);
        assert!(per_query.values().any(|&n| n == 3));
        assert!(per_query.values().any(|&n| n == 2));
        let python = pairs
            .iter()
            .find(|p| p.target == "Python (computer programming)")
            .unwrap();
        assert!(
            !python.query.contains("(computer programming)"),
            "{python:?}"
        );
        assert_eq!(as_written("Python (computer programming)"), "Python");
        assert_eq!(as_written("manage budgets"), "manage budgets");
        // Deterministic.
        assert_eq!(pairs, skill_sentences(&skills, &types));
    }
}

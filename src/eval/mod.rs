//! Retrieval evaluation: MAP, RP@5, RP@10 and MRR of a model on task files, and the
//! converters that turn the public dev sets into task files.
//!
//! A task line is `{"query": "...", "relevant": ["id", ...]}`. Relevant ids absent from the
//! space are dropped; a query left with none is skipped and counted.

pub mod postings;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::encoder::Encoder;
use crate::error::{ModelError, Result};
use crate::model::ScorerSpec;
use crate::rank::rank;
use crate::space::cache::EncodedSpace;
use crate::space::TargetSpace;

/// One evaluation query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// The text to rank the space for.
    pub query: String,
    /// Ids of the relevant concepts.
    pub relevant: Vec<String>,
}

/// Scores of one evaluation, in percent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Queries evaluated.
    pub n: usize,
    /// Queries skipped: none of their relevant ids is in the space.
    pub skipped: usize,
    /// Mean average precision over the full ranking.
    #[serde(rename = "MAP")]
    pub map: f64,
    /// Hits in the top 5 / min(5, relevant).
    #[serde(rename = "RP@5")]
    pub rp5: f64,
    /// Hits in the top 10 / min(10, relevant).
    #[serde(rename = "RP@10")]
    pub rp10: f64,
    /// Mean reciprocal rank of the first relevant concept.
    #[serde(rename = "MRR")]
    pub mrr: f64,
}

/// Reads a task file, naming the file and line of any bad line.
pub fn read_tasks(path: &Path) -> Result<Vec<Task>> {
    Ok(
        crate::error::read_jsonl(path, "{\"query\": \"...\", \"relevant\": [...]}")?
            .into_iter()
            .map(|(_, t)| t)
            .collect(),
    )
}

/// Per-query metrics from the 0-based ranks of its relevant concepts in the full ranking.
fn query_metrics(mut ranks: Vec<usize>, n_relevant: usize) -> (f64, f64, f64, f64) {
    ranks.sort_unstable();
    let ap = ranks
        .iter()
        .enumerate()
        .map(|(i, &r)| (i + 1) as f64 / (r + 1) as f64)
        .sum::<f64>()
        / n_relevant as f64;
    let rp = |k: usize| ranks.iter().filter(|&&r| r < k).count() as f64 / k.min(n_relevant) as f64;
    let mrr = ranks.first().map(|&r| 1.0 / (r + 1) as f64).unwrap_or(0.0);
    (ap, rp(5), rp(10), mrr)
}

/// Evaluates `tasks` against `space` with `scorer`.
pub fn evaluate(
    encoder: &mut Encoder,
    space: &EncodedSpace,
    tasks: &[Task],
    scorer: ScorerSpec,
    progress: bool,
) -> Result<Report> {
    let q = score_queries(encoder, space, tasks, scorer, progress)?;
    Ok(q.report())
}

/// Per-query scores of one evaluation: the material of a [`Report`] and of paired
/// comparisons between two models on the same queries.
#[derive(Debug, Clone)]
pub struct QueryScores {
    /// AP, RP@5, RP@10 and reciprocal rank of each evaluated query, in task order.
    pub queries: Vec<[f64; 4]>,
    /// Queries skipped: none of their relevant ids is in the space.
    pub skipped: usize,
}

impl QueryScores {
    /// The means, in percent.
    pub fn report(&self) -> Report {
        let n = self.queries.len().max(1) as f64;
        let mean = |i: usize| {
            (self.queries.iter().map(|q| q[i]).sum::<f64>() / n * 10000.0).round() / 100.0
        };
        Report {
            n: self.queries.len(),
            skipped: self.skipped,
            map: mean(0),
            rp5: mean(1),
            rp10: mean(2),
            mrr: mean(3),
        }
    }
}

/// Scores every query of `tasks` against `space` with `scorer`.
pub fn score_queries(
    encoder: &mut Encoder,
    space: &EncodedSpace,
    tasks: &[Task],
    scorer: ScorerSpec,
    progress: bool,
) -> Result<QueryScores> {
    let index = space.space.index_by_id();
    let kept: Vec<(&Task, HashSet<usize>)> = tasks
        .iter()
        .filter_map(|t| {
            let rel: HashSet<usize> = t
                .relevant
                .iter()
                .filter_map(|r| index.get(r.as_str()).copied())
                .collect();
            (!rel.is_empty() && !t.query.trim().is_empty()).then_some((t, rel))
        })
        .collect();
    let skipped = tasks.len() - kept.len();
    let bar = if progress {
        indicatif::ProgressBar::new(kept.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut queries = Vec::with_capacity(kept.len());
    for chunk in kept.chunks(256) {
        let texts: Vec<&str> = chunk.iter().map(|(t, _)| t.query.as_str()).collect();
        let embs = encoder.encode(&texts)?;
        for ((_, rel), e) in chunk.iter().zip(embs) {
            let ranking = rank(space, &e, 0, scorer);
            let ranks: Vec<usize> = ranking
                .iter()
                .enumerate()
                .filter(|(_, h)| rel.contains(&h.index))
                .map(|(r, _)| r)
                .collect();
            let (a, b, c, d) = query_metrics(ranks, rel.len());
            queries.push([a, b, c, d]);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(QueryScores { queries, skipped })
}

/// MAP of `b` minus MAP of `a` on the same queries, in points, with its paired 95%
/// bootstrap interval (queries resampled together).
pub fn map_delta(a: &QueryScores, b: &QueryScores) -> (f64, [f64; 2]) {
    metric_delta(a, b, 0)
}

/// [`map_delta`] of metric `i` of [`QueryScores::queries`] (0 AP, 1 RP@5, 2 RP@10, 3 RR).
pub fn metric_delta(a: &QueryScores, b: &QueryScores, i: usize) -> (f64, [f64; 2]) {
    let d: Vec<f64> = a
        .queries
        .iter()
        .zip(&b.queries)
        .map(|(x, y)| (y[i] - x[i]) * 100.0)
        .collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let [lo, hi] = bootstrap(&d, mean);
    (r2(mean(&d)), [r2(lo), r2(hi)])
}

/// One paired comparison of two models on the same queries: the second's MAP and RP@5
/// minus the first's, in points, with paired 95% bootstrap intervals ([`metric_delta`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedDelta {
    /// Queries compared.
    pub n: usize,
    /// MAP change.
    pub map_delta: f64,
    /// Its 95% interval.
    pub map_delta_ci95: [f64; 2],
    /// RP@5 change.
    pub rp5_delta: f64,
    /// Its 95% interval.
    pub rp5_delta_ci95: [f64; 2],
}

impl PairedDelta {
    /// The changes from `a` to `b`, which must score the same queries in the same order.
    pub fn between(a: &QueryScores, b: &QueryScores) -> Self {
        let (map_delta, map_delta_ci95) = map_delta(a, b);
        let (rp5_delta, rp5_delta_ci95) = metric_delta(a, b, 1);
        Self {
            n: a.queries.len(),
            map_delta,
            map_delta_ci95,
            rp5_delta,
            rp5_delta_ci95,
        }
    }
}

/// 95% percentile-bootstrap interval of `stat` over `items` (1,000 resamples, fixed seed so
/// a report can be reproduced).
pub fn bootstrap<T: Copy>(items: &[T], stat: impl Fn(&[T]) -> f64) -> [f64; 2] {
    if items.is_empty() {
        return [0.0, 0.0];
    }
    let mut rng: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut stats: Vec<f64> = (0..1000)
        .map(|_| {
            let sample: Vec<T> = (0..items.len())
                .map(|_| items[(next() % items.len() as u64) as usize])
                .collect();
            stat(&sample)
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    [stats[24], stats[974]]
}

/// Converts SkillSkape CSVs (`,sentence,skills`, skills a list of ESCO preferred labels) into
/// tasks over `skills`: one task per sentence with at least one label in the space. Returns
/// the tasks and the number of labels that did not resolve.
pub fn convert_skillskape(paths: &[&Path], skills: &TargetSpace) -> Result<(Vec<Task>, usize)> {
    let by_label = skills.ids_by_label();
    let (mut tasks, mut unresolved) = (Vec::new(), 0);
    for p in paths {
        for (_, rec) in crate::error::read_csv(p)? {
            let mut relevant: Vec<String> = Vec::new();
            for l in crate::train::data::skillskape_labels(rec.get(2).unwrap_or("")) {
                match by_label.get(&l.to_lowercase()) {
                    Some(id) if !relevant.iter().any(|r| r == id) => relevant.push(id.to_string()),
                    Some(_) => {}
                    None => unresolved += 1,
                }
            }
            let query = rec.get(1).unwrap_or("").trim();
            if !relevant.is_empty() && !query.is_empty() {
                tasks.push(Task {
                    query: query.to_string(),
                    relevant,
                });
            }
        }
    }
    Ok((tasks, unresolved))
}

/// Converts skill-extraction annotation CSVs (`sentence,span,sub_span,label`, labels are
/// ESCO preferred labels) into tasks over `skills`: one task per sentence, relevant = the
/// URIs of its labels. `LABEL NOT PRESENT` / `UNDERSPECIFIED` and labels not in the space
/// are dropped. Returns the tasks and the number of labels that did not resolve.
pub fn convert_skill_extraction(
    paths: &[&Path],
    skills: &TargetSpace,
) -> Result<(Vec<Task>, usize)> {
    let by_label = skills.ids_by_label();
    let mut order: Vec<String> = Vec::new();
    let mut rel: HashMap<String, Vec<String>> = HashMap::new();
    let mut unresolved = 0;
    for path in paths {
        for (_, rec) in crate::error::read_csv(path)? {
            let (sentence, label) = (
                rec.get(0).unwrap_or("").trim(),
                rec.get(3).unwrap_or("").trim(),
            );
            if sentence.is_empty() {
                continue;
            }
            if !rel.contains_key(sentence) {
                order.push(sentence.to_string());
                rel.insert(sentence.to_string(), vec![]);
            }
            if label == "LABEL NOT PRESENT" || label == "UNDERSPECIFIED" || label.is_empty() {
                continue;
            }
            match by_label.get(&label.to_lowercase()) {
                Some(id) => {
                    let v = rel.get_mut(sentence).unwrap();
                    if !v.iter().any(|x| x == id) {
                        v.push(id.to_string());
                    }
                }
                None => unresolved += 1,
            }
        }
    }
    let tasks = order
        .into_iter()
        .filter_map(|s| {
            let r = rel.remove(&s).unwrap_or_default();
            (!r.is_empty()).then_some(Task {
                query: s,
                relevant: r,
            })
        })
        .collect();
    Ok((tasks, unresolved))
}

/// Converts a job-normalisation CSV (`,vacancyTitle,conceptUri`) into tasks.
pub fn convert_job_normalization(path: &Path) -> Result<Vec<Task>> {
    let mut rdr = csv::Reader::from_path(path).map_err(|e| ModelError::BadLine {
        path: path.to_path_buf(),
        line: 0,
        msg: e.to_string(),
    })?;
    let headers = rdr.headers().map_err(|e| ModelError::BadLine {
        path: path.to_path_buf(),
        line: 1,
        msg: e.to_string(),
    })?;
    let col = |n: &str| {
        headers
            .iter()
            .position(|h| h == n)
            .ok_or_else(|| ModelError::BadLine {
                path: path.to_path_buf(),
                line: 1,
                msg: format!("no column {n}"),
            })
    };
    let (t, u) = (col("vacancyTitle")?, col("conceptUri")?);
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| ModelError::BadLine {
            path: path.to_path_buf(),
            line: i + 2,
            msg: e.to_string(),
        })?;
        let (q, id) = (
            rec.get(t).unwrap_or("").trim(),
            rec.get(u).unwrap_or("").trim(),
        );
        if !q.is_empty() && !id.is_empty() {
            out.push(Task {
                query: q.into(),
                relevant: vec![id.into()],
            });
        }
    }
    Ok(out)
}

/// The key a title is split by: lower case, runs of white space as one space, so that
/// "Sales Executive" and "sales  executive" always fall on the same side.
fn title_key(title: &str) -> String {
    title
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// 64-bit FNV-1a: a hash that is the same on every platform and Rust release, so the split
/// of a file never changes (std's `DefaultHasher` makes no such promise).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Splits labelled titles into a training share (about `train_percent` %) and the rest, kept
/// for evaluation. The split goes by title, normalised (`title_key`), so no title is on
/// both sides; it is deterministic, so the same file always splits the same way.
pub fn split_by_title(tasks: Vec<Task>, train_percent: u64) -> (Vec<Task>, Vec<Task>) {
    tasks
        .into_iter()
        .partition(|t| fnv1a(title_key(&t.query).as_bytes()) % 100 < train_percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        // Relevant at ranks 1 and 3 (0-based 0 and 2) of 2 relevant.
        let (ap, rp5, rp10, mrr) = query_metrics(vec![2, 0], 2);
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(rp5, 1.0);
        assert_eq!(rp10, 1.0);
        assert_eq!(mrr, 1.0);
        // One relevant at rank 7: RP@5 0, RP@10 1, MRR 1/7.
        let (ap, rp5, rp10, mrr) = query_metrics(vec![6], 1);
        assert!((ap - 1.0 / 7.0).abs() < 1e-12);
        assert_eq!((rp5, rp10), (0.0, 1.0));
        assert!((mrr - 1.0 / 7.0).abs() < 1e-12);
        // 12 relevant, 5 in the top 5: RP@5 = 5/5; 6 in the top 10: RP@10 = 6/10.
        let (_, rp5, rp10, _) = query_metrics(vec![0, 1, 2, 3, 4, 9, 20, 30, 40, 50, 60, 70], 12);
        assert_eq!((rp5, rp10), (1.0, 0.6));
    }

    fn task(q: &str, id: &str) -> Task {
        Task {
            query: q.into(),
            relevant: vec![id.into()],
        }
    }

    #[test]
    fn split_by_title_keeps_each_title_on_one_side() {
        let titles = [
            "Sales Executive",
            "sales  executive",
            " SALES EXECUTIVE ",
            "Barista",
            "Welder (m/f/d)",
            "Data engineer",
            "Nurse",
            "Chef de partie",
        ];
        let tasks: Vec<Task> = (0..400)
            .map(|i| task(&format!("{} {}", titles[i % titles.len()], i / 8), "occ"))
            .chain(titles.iter().map(|t| task(t, "occ")))
            .collect();
        let (train, dev) = split_by_title(tasks.clone(), 50);
        assert_eq!(train.len() + dev.len(), tasks.len());
        let keys =
            |v: &[Task]| -> HashSet<String> { v.iter().map(|t| title_key(&t.query)).collect() };
        assert!(keys(&train).is_disjoint(&keys(&dev)));
        // The three spellings of "sales executive" land together.
        let side = |q: &str| train.iter().any(|t| t.query == q);
        assert_eq!(side("Sales Executive"), side("sales  executive"));
        assert_eq!(side("Sales Executive"), side(" SALES EXECUTIVE "));
        // About half on each side, and the same split every time.
        assert!((150..=258).contains(&train.len()), "{}", train.len());
        assert_eq!(split_by_title(tasks.clone(), 50), (train, dev));
        assert!(split_by_title(tasks.clone(), 0).0.is_empty());
        assert!(split_by_title(tasks, 100).1.is_empty());
    }

    #[test]
    fn fnv1a_matches_its_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn skillskape_rows_become_tasks_of_their_esco_skills() {
        let dir = tempfile::tempdir().unwrap();
        let space = dir.path().join("skills.jsonl");
        std::fs::write(
            &space,
            "{\"id\":\"s:1\",\"label\":\"Java (computer programming)\"}\n{\"id\":\"s:2\",\"label\":\"C#\"}\n",
        )
        .unwrap();
        let skills = crate::space::load_jsonl(&space).unwrap();
        let csv = dir.path().join("dev.csv");
        std::fs::write(
            &csv,
            ",sentence,skills\n\
             0,Proficient in an object-oriented language.,\"['C#', 'Java (computer programming)', 'c#']\"\n\
             1,A global leader in cars.,['UNK']\n\
             2,You juggle.,\"['juggling', 'C#']\"\n\
             3,  ,['C#']\n",
        )
        .unwrap();
        let (tasks, unresolved) = convert_skillskape(&[csv.as_path()], &skills).unwrap();
        assert_eq!(unresolved, 1, "'juggling' is not in the space");
        assert_eq!(
            tasks,
            vec![
                Task {
                    query: "Proficient in an object-oriented language.".into(),
                    relevant: vec!["s:2".into(), "s:1".into()],
                },
                Task {
                    query: "You juggle.".into(),
                    relevant: vec!["s:2".into()],
                },
            ]
        );
    }

    #[test]
    fn paired_deltas_follow_the_metric_asked_for() {
        let a = QueryScores {
            queries: vec![[0.5, 0.2, 1.0, 1.0]; 4],
            skipped: 0,
        };
        let b = QueryScores {
            queries: vec![[0.75, 0.2, 1.0, 0.5]; 4],
            skipped: 0,
        };
        assert_eq!(map_delta(&a, &b), (25.0, [25.0, 25.0]));
        assert_eq!(metric_delta(&a, &b, 1).0, 0.0);
        assert_eq!(metric_delta(&a, &b, 3).0, -50.0);
    }
}

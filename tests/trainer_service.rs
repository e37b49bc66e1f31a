//! `uwe-trainer serve` on the real broker with the real model: analysts' feedback (poison
//! included) in, a retrained version published and swapped into a running connector, records
//! after the swap carrying it, nothing lost; a SIGKILL mid-run publishes nothing partial and
//! the restarted service resumes the run from its checkpoint.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use common::*;
use uwe_connect::connector::swap;

/// Registry entries other than the feedback log and run state.
fn versions(registry: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(registry)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.') && n != "feedback" && n != "current")
        .collect();
    v.sort();
    v
}

#[test]
fn feedback_in_model_out_swapped_live_and_a_killed_run_resumes_without_partial_versions() {
    let reg = tempfile::tempdir().unwrap();
    let registry = reg.path();
    copy_model(&base_model_dir(), &registry.join("base-1"), "base-1");
    // A per-space scorer on the serving model, which a published candidate must keep.
    let attend = serde_json::json!({
        "esco-skills": {"kind": "attend", "temperature": 0.0625, "pooled_weight": 0.5, "rerank_top": 100}
    });
    let base_manifest = registry.join("base-1/manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&base_manifest).unwrap()).unwrap();
    m["target_scorers"] = attend.clone();
    std::fs::write(&base_manifest, m.to_string()).unwrap();
    swap::set_current(registry, "base-1").unwrap();

    // The connector follows the registry and the control topic.
    let t = topics("svc", 2);
    let feedback_topic = unique("svc-feedback");
    let feedback_dlq = unique("svc-feedback-dlq");
    let control = unique("svc-control");
    create_topics(&[&feedback_topic, &feedback_dlq, &control], 2);
    let conn_http = free_addr();
    let tiny = root().join("tests/data/tiny_space.jsonl");
    let toml = t
        .pipeline("svc", "vacancy", "json", "at-least-once", &conn_http)
        .replace(
            "[model]\n",
            &format!(
                "[model]\nregistry = \"{}\"\nwatch_interval_ms = 300\ncontrol_topic = \"{control}\"\n",
                registry.display()
            ),
        )
        .replace("\"esco-skills\"", &format!("\"{}\"", tiny.display()))
        .replace("\"esco-occupations\"", &format!("\"{}\"", tiny.display()))
        .replace("min_score = 0.3", "min_score = -1.0");
    let mut conn = Connector::start(&toml);
    let events = json_events(vacancy_events(60, 200));
    produce(&t.input, 2, &events[..20]);

    // Feedback: real ESCO skills, every verdict, and poison.
    let skill = |id: &str| format!("http://data.europa.eu/esco/skill/{id}");
    let python = skill("ccd0a1d9-afda-43d9-b901-96344886e14d");
    let sql = skill("598de5b0-5b58-4ea7-8058-a4bc4d18c742");
    let dock = skill("367165b1-fb00-4e55-a8ba-99b2510718b6");
    let job_desc = skill("b3d9442d-1fb8-46cd-a947-154a42221f28");
    let dates = skill("3506d31c-3bb0-4a6d-90bb-aff03bca01b5");
    let customer = skill("15a33d76-4640-438d-ae64-fdc0c1d3eebc");
    let fb = |text: &str, id: &str, verdict: &str| {
        serde_json::json!({"text": text, "label_id": id, "verdict": verdict,
            "target": "esco-skills", "analyst": "a1", "at": "2026-12-03T10:00:00Z",
            "source": {"topic": t.output, "partition": 0, "offset": 3}})
        .to_string()
        .into_bytes()
    };
    let mut good: Vec<Vec<u8>> = vec![
        fb(
            "Experience with Docker and Python scripting",
            &python,
            "confirm",
        ),
        fb(
            "Experience with Docker and Python scripting",
            &dock,
            "reject",
        ),
        fb(
            "You write complex SQL queries against our data warehouse",
            &sql,
            "add",
        ),
        fb("Job description", &job_desc, "reject"),
        fb("Start date: as soon as possible", &dates, "reject"),
        fb(
            "You help our customers on the phone and by e-mail",
            &customer,
            "confirm",
        ),
        fb("Strong Python skills are a must", &python, "add"),
        fb("Data analysis in SQL and Python", &sql, "confirm"),
    ];
    // A byte-order mark is not malformed.
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend(fb("Tuning SQL for reporting", &sql, "confirm"));
    good.push(bom);
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "malformed_json"),
        (
            fb("Python", "http://data.europa.eu/esco/skill/nope", "confirm"),
            "unknown_label",
        ),
        (fb("Python", &python, "maybe"), "schema"),
        (fb("   ", &python, "confirm"), "empty_text"),
        (
            retarget(fb("Python", &python, "confirm"), "/etc/passwd"),
            "unknown_target",
        ),
    ];
    let mut all: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, g) in good.iter().enumerate() {
        all.push((format!("g{i}"), g.clone()));
        if let Some((p, _)) = poison.get(i) {
            all.push((format!("p{i}"), p.clone()));
        }
    }
    produce(&feedback_topic, 2, &all);

    let dir = tempfile::tempdir().unwrap();
    let http = free_addr();
    let config = dir.path().join("trainer.toml");
    std::fs::write(
        &config,
        trainer_toml(
            registry,
            [&feedback_topic, &feedback_dlq, &control],
            good.len(),
            400,
            &http,
        ),
    )
    .unwrap();
    let log = dir.path().join("trainer.log");

    // First instance: stores the feedback, dead-letters the poison, starts a run; killed
    // after its first checkpoint.
    let mut tr = Trainer::start(&config, &log);
    let state = registry.join(".serve-checkpoint/state.json");
    wait_for(
        "the first checkpoint",
        Duration::from_secs(300),
        || state.is_file(),
        || tr.log(),
    );
    // Polled, not read once: on two busy cores a single probe failed once in CI (the log is
    // printed if it never answers).
    wait_for(
        "/ready to answer 200",
        Duration::from_secs(60),
        || http_status(&http, "/ready") == Some(200),
        || tr.log(),
    );
    assert_eq!(
        metric(&http, "uwe_trainer_feedback_stored_total").map(|_| ()),
        Some(()),
        "stored feedback is counted"
    );
    assert_eq!(metric(&http, "uwe_trainer_run_in_progress"), Some(1.0));
    tr.child.kill().unwrap();
    tr.child.wait().unwrap();
    assert_eq!(
        versions(registry),
        ["base-1"],
        "a killed run published nothing"
    );
    assert_eq!(
        std::fs::read_link(registry.join("current")).unwrap(),
        Path::new("base-1")
    );

    // The store holds every good event once.
    let stored =
        uwe_connect::sidecar::store::read_store(&registry.join("feedback/feedback.jsonl")).unwrap();
    assert_eq!(stored.len(), good.len(), "log:\n{}", tr.log());
    let dead = consume_until(&feedback_dlq, Duration::from_secs(60), |g| {
        g.len() >= poison.len()
    });
    let reasons: HashSet<String> = dead
        .iter()
        .map(|d| d.headers["uwe.error.reason"].clone())
        .collect();
    let expected: HashSet<String> = poison.iter().map(|p| p.1.to_string()).collect();
    assert_eq!(reasons, expected);
    assert!(dead
        .iter()
        .all(|d| d.headers["uwe.source.topic"] == feedback_topic));

    // Second instance: resumes the run, gates and publishes it; the connector swaps.
    let tr = Trainer::start(&config, &log);
    wait_for(
        "a published version",
        Duration::from_secs(900),
        || {
            versions(registry).len() == 2
                && std::fs::read_link(registry.join("current"))
                    .is_ok_and(|l| l != Path::new("base-1"))
        },
        || tr.log(),
    );
    let version = std::fs::read_link(registry.join("current"))
        .unwrap()
        .to_string_lossy()
        .to_string();
    let text = tr.log();
    assert!(text.contains("resuming an interrupted run"), "log:\n{text}");
    let dir_v = registry.join(&version);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir_v.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["target_scorers"], attend,
        "the published model lost the serving model's per-space scorers"
    );
    let card = manifest["training_data"].to_string();
    assert!(
        card.contains("9 events") && card.contains("hard negatives"),
        "{card}"
    );
    // The gate's report pairs the candidate with the serving model on the gate's task, with
    // an interval around the same MAP difference its point scores give.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir_v.join("report.json")).unwrap()).unwrap();
    let house = &report["deltas"]["skill_extraction_house"];
    let task_map = |side: &str| {
        report[side]["skill_extraction_house"]["MAP"]
            .as_f64()
            .unwrap()
    };
    let delta = house["map_delta"].as_f64().unwrap();
    assert_eq!(house["n"], 61, "{report}");
    assert!(
        (delta - (task_map("candidate") - task_map("current_scores"))).abs() < 0.02,
        "{report}"
    );
    let ci: Vec<f64> = serde_json::from_value(house["map_delta_ci95"].clone()).unwrap();
    assert!(ci[0] <= delta && delta <= ci[1], "{report}");
    assert!(
        std::fs::read_dir(registry)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".staging")),
        "no staging leftovers"
    );
    wait_for(
        "the run's bookkeeping",
        Duration::from_secs(60),
        || !registry.join(".serve-run.json").exists(),
        || tr.log(),
    );
    wait_for(
        "the trainer's run metrics",
        Duration::from_secs(30),
        || {
            metric(
                &http,
                "uwe_trainer_runs_total{reason=\"resumed\",outcome=\"published\"}",
            ) == Some(1.0)
        },
        || tr.log(),
    );
    assert!(metric(
        &http,
        "uwe_trainer_candidate_dev_map{task=\"skill_extraction_house\"}"
    )
    .is_some());
    // The gauge is set on the service's next loop turn after the run's counters.
    wait_for(
        "no pending feedback",
        Duration::from_secs(30),
        || metric(&http, "uwe_trainer_feedback_pending") == Some(0.0),
        || tr.log(),
    );
    let stored =
        uwe_connect::sidecar::store::read_store(&registry.join("feedback/feedback.jsonl")).unwrap();
    assert_eq!(
        stored.len(),
        good.len(),
        "nothing stored twice after the restart"
    );

    // The connector swaps to it; records after the swap carry it; none is lost.
    wait_for(
        "the connector's swap",
        Duration::from_secs(300),
        || {
            let l = conn.log();
            l.contains("model swapped") && l.contains(&version)
        },
        || conn.log(),
    );
    produce(&t.input, 2, &events[20..]);
    let out = consume_until(&t.output, Duration::from_secs(240), |g| {
        g.len() >= events.len()
    });
    let by_id: HashMap<String, String> = out
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["source"]["id"].as_str().unwrap().to_string(),
                v["model_version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        by_id.len(),
        events.len(),
        "every event has an output; log:\n{}",
        conn.log()
    );
    for (id, v) in &by_id {
        let i: usize = id.trim_start_matches("v-").parse().unwrap();
        if i >= 20 {
            assert_eq!(v, &version, "{id} was produced after the swap");
        }
    }
    assert!(conn.terminate().success());
}

/// A feedback event with another `target`.
fn retarget(event: Vec<u8>, target: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&event).unwrap();
    v["target"] = target.into();
    v.to_string().into_bytes()
}

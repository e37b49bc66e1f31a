//! A real Prometheus (Debian's `prometheus` package; `scripts/test` installs it) scrapes a
//! running connector and a running trainer service with the repo's
//! `deploy/prometheus/prometheus.yml`, its targets pointed at this test's ports; every
//! expression of the Grafana dashboard must parse and return data.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use uwe_connect::connector::swap;

/// `UWE_PROMETHEUS`, else `prometheus` on the PATH.
fn prometheus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("UWE_PROMETHEUS") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        })
        .expect("no `prometheus` binary: scripts/test installs Debian's package (apt-get install prometheus), or set UWE_PROMETHEUS")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs an instant query; `Ok(number of series)` or the API's error.
fn query(prom: &str, expr: &str) -> Result<usize, String> {
    let url = format!("http://{prom}/api/v1/query");
    let mut resp = ureq::get(&url)
        .query("query", expr)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .map_err(|e| e.to_string())?;
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().map_or(0, |r| r.len()))
}

#[test]
fn every_dashboard_expression_returns_data_from_the_connector_and_the_trainer() {
    let bin = prometheus_bin();

    // The connector, with traffic and one bad event.
    let t = topics("prom", 2);
    let conn_http = free_addr();
    let tiny = root().join("tests/data/tiny_space.jsonl");
    let toml = t
        .pipeline("prom", "vacancy", "json", "at-least-once", &conn_http)
        .replace("\"esco-skills\"", &format!("\"{}\"", tiny.display()))
        .replace("\"esco-occupations\"", &format!("\"{}\"", tiny.display()));
    let conn = Connector::start(&toml);
    let mut events = json_events(vacancy_events(30, 200));
    events.push(("bad".into(), b"{not json".to_vec()));
    produce(&t.input, 2, &events);

    // The trainer, with enough feedback for one quick run and one bad event.
    let reg = tempfile::tempdir().unwrap();
    let registry = reg.path();
    copy_model(&base_model_dir(), &registry.join("base-1"), "base-1");
    swap::set_current(registry, "base-1").unwrap();
    let fb_topics = [
        unique("prom-feedback"),
        unique("prom-feedback-dlq"),
        unique("prom-control"),
    ];
    create_topics(&[&fb_topics[0], &fb_topics[1], &fb_topics[2]], 1);
    let python = "http://data.europa.eu/esco/skill/ccd0a1d9-afda-43d9-b901-96344886e14d";
    let dock = "http://data.europa.eu/esco/skill/367165b1-fb00-4e55-a8ba-99b2510718b6";
    let fb = |text: &str, id: &str, verdict: &str| {
        serde_json::json!({"text": text, "label_id": id, "verdict": verdict,
            "target": "esco-skills", "at": "2026-12-03T10:00:00Z"})
        .to_string()
        .into_bytes()
    };
    produce(
        &fb_topics[0],
        1,
        &[
            (
                "a".into(),
                fb("Python scripting for data pipelines", python, "confirm"),
            ),
            ("b".into(), fb("Experience with Docker", dock, "reject")),
            ("c".into(), fb("Strong Python skills", python, "add")),
            ("d".into(), b"[]".to_vec()),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let trainer_http = free_addr();
    let config = dir.path().join("trainer.toml");
    let [f, d, c] = &fb_topics;
    std::fs::write(
        &config,
        trainer_toml(registry, [f, d, c], 3, 20, &trainer_http),
    )
    .unwrap();
    let tr = Trainer::start(&config, &dir.path().join("trainer.log"));

    // Prometheus with the repo's scrape config, targets and interval overridden.
    let mut prom_cfg: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    prom_cfg["global"]["scrape_interval"] = "1s".into();
    for job in prom_cfg["scrape_configs"].as_sequence_mut().unwrap() {
        let target = match job["job_name"].as_str().unwrap() {
            "uwe-connect" => conn_http.clone(),
            "uwe-trainer" => trainer_http.clone(),
            other => panic!("unexpected scrape job {other}"),
        };
        job["static_configs"][0]["targets"] = serde_yaml::Value::Sequence(vec![target.into()]);
    }
    let prom_file = dir.path().join("prometheus.yml");
    std::fs::write(&prom_file, serde_yaml::to_string(&prom_cfg).unwrap()).unwrap();
    let prom = free_addr();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _p = Killed(
        Command::new(&bin)
            .arg(format!("--config.file={}", prom_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let prom_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // Wait for the work the dashboard shows: outputs, dead letters, a finished run.
    let out = consume_until(&t.output, Duration::from_secs(240), |g| g.len() >= 30);
    assert_eq!(out.len(), 30, "connector log:\n{}", conn.log());
    wait_for(
        "the trainer's run",
        Duration::from_secs(600),
        || metric(&trainer_http, "uwe_trainer_runs_total").is_some(),
        || tr.log(),
    );
    wait_for(
        "both targets up in Prometheus",
        Duration::from_secs(60),
        || query(&prom, "up == 1") == Ok(2),
        prom_log,
    );

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/uwe-connect.json"))
            .unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    // Rates need two samples of a series: give every expression a while to fill.
    let end = Instant::now() + Duration::from_secs(90);
    let mut failing: Vec<(String, Result<usize, String>)> =
        exprs.iter().map(|e| (e.clone(), Ok(0))).collect();
    while !failing.is_empty() && Instant::now() < end {
        failing = failing
            .into_iter()
            .map(|(e, _)| {
                let r = query(&prom, &e);
                (e, r)
            })
            .filter(|(_, r)| !matches!(r, Ok(n) if *n > 0))
            .collect();
        if let Some((e, Err(msg))) = failing.iter().find(|(_, r)| r.is_err()) {
            panic!("{e}: does not parse or fails: {msg}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        failing.is_empty(),
        "expressions without data: {:?}\ntrainer log:\n{}",
        failing.iter().map(|f| &f.0).collect::<Vec<_>>(),
        tr.log()
    );
}

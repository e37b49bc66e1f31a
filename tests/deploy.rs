//! No Docker engine runs here, so the compose stack is checked statically: every file,
//! port and volume it names exists, and the dashboard queries metrics the connector and the
//! trainer export (`tests/prometheus.rs` runs a real Prometheus against both).

use std::collections::HashSet;
use std::path::Path;

use uwe_connect::telemetry as t;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn exported() -> HashSet<&'static str> {
    [
        t::ENCODE_BATCH_SIZE,
        t::ENCODE_BATCH_TOKENS,
        t::ENCODE_SECONDS,
        t::QUERY_CACHE_TOTAL,
        t::RECORDS_IN_TOTAL,
        t::RECORDS_OUT_TOTAL,
        t::RECORDS_DEAD_LETTERED_TOTAL,
        t::BATCH_EVENTS,
        t::BATCH_TOKENS,
        t::RANK_SECONDS,
        t::END_TO_END_LATENCY_SECONDS,
        t::CONSUMER_LAG_MESSAGES,
        t::IN_FLIGHT_EVENTS,
        t::DELIVERY_RETRIES_TOTAL,
        t::MODEL_INFO,
        t::MODEL_SWAPS_TOTAL,
        t::MODEL_SWAP_SECONDS,
        t::TRAINER_FEEDBACK_RECEIVED_TOTAL,
        t::TRAINER_FEEDBACK_STORED_TOTAL,
        t::TRAINER_FEEDBACK_DEAD_LETTERED_TOTAL,
        t::TRAINER_FEEDBACK_PENDING,
        t::TRAINER_RUNS_TOTAL,
        t::TRAINER_RUN_SECONDS,
        t::TRAINER_RUN_IN_PROGRESS,
        t::TRAINER_LAST_GATE_PUBLISHED,
        t::TRAINER_CANDIDATE_DEV_MAP,
        t::TRAINER_SERVING_DEV_MAP,
        t::TRAINER_MODEL_INFO,
    ]
    .into_iter()
    .collect()
}

#[test]
fn compose_names_only_things_that_exist() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap())
            .unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let names: HashSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    for s in ["kafka", "connector", "trainer", "prometheus", "grafana"] {
        assert!(names.contains(s), "service {s}");
    }
    assert!(compose["services"]["kafka"]["image"]
        .as_str()
        .unwrap()
        .starts_with("apache/kafka:"));
    let named: HashSet<String> = compose["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for (name, svc) in services {
        if svc.get("build").is_some() {
            assert!(
                root().join("Dockerfile").is_file(),
                "{name:?} builds the Dockerfile"
            );
        }
        for v in svc
            .get("volumes")
            .and_then(|v| v.as_sequence())
            .into_iter()
            .flatten()
        {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if let Some(rel) = src.strip_prefix("./") {
                assert!(root().join(rel).exists(), "{name:?} mounts missing {src}");
            } else {
                assert!(named.contains(src), "{name:?} uses undeclared volume {src}");
            }
        }
    }
    // The connector's config exists, validates, and listens where compose and Prometheus look.
    let cmd: Vec<String> = compose["services"]["connector"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let cfg_path = root().join(&cmd[cmd.iter().position(|a| a == "--config").unwrap() + 1]);
    let cfg = uwe_connect::connector::PipelineConfig::load(&cfg_path).unwrap();
    let port = cfg.http.listen.rsplit(':').next().unwrap().to_string();
    let ports: Vec<&str> = compose["services"]["connector"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
        "connector publishes its http.listen port {port}: {ports:?}"
    );
    let prom = std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).unwrap();
    let prom: serde_yaml::Value = serde_yaml::from_str(&prom).unwrap();
    let target = prom["scrape_configs"][0]["static_configs"][0]["targets"][0]
        .as_str()
        .unwrap();
    assert_eq!(target, format!("connector:{port}"));

    // The trainer runs as a service: its config exists and validates, it restarts, and
    // Prometheus scrapes the port it listens on.
    let trainer = &compose["services"]["trainer"];
    assert_eq!(trainer["restart"].as_str(), Some("unless-stopped"));
    let cmd: Vec<&str> = trainer["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(cmd[0], "serve");
    let cfg_path = root().join(cmd[cmd.iter().position(|a| *a == "--config").unwrap() + 1]);
    let cfg = uwe_connect::sidecar::config::ServiceConfig::load(&cfg_path).unwrap();
    let port = cfg.http.listen.rsplit(':').next().unwrap().to_string();
    assert!(trainer["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p.as_str().unwrap().ends_with(&format!(":{port}"))));
    let target = prom["scrape_configs"][1]["static_configs"][0]["targets"][0]
        .as_str()
        .unwrap();
    assert_eq!(target, format!("trainer:{port}"));
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("deploy/trainer.toml"));
}

#[test]
fn dashboard_queries_exported_metrics() {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/uwe-connect.json"))
            .unwrap(),
    )
    .unwrap();
    let exported = exported();
    let mut used = HashSet::new();
    for p in d["panels"].as_array().unwrap() {
        // Rows group panels and query nothing.
        for tgt in p["targets"].as_array().into_iter().flatten() {
            let expr = tgt["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("uwe_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(name.clone(), |n, s| {
                        n.strip_suffix(s).map(str::to_string).unwrap_or(n)
                    });
                assert!(
                    exported.contains(base.as_str()),
                    "dashboard queries {name}, which neither the connector nor the trainer exports"
                );
                used.insert(base);
            }
        }
    }
    for m in [
        t::RECORDS_IN_TOTAL,
        t::CONSUMER_LAG_MESSAGES,
        t::END_TO_END_LATENCY_SECONDS,
        t::RECORDS_DEAD_LETTERED_TOTAL,
        t::MODEL_INFO,
        t::BATCH_EVENTS,
        t::TRAINER_FEEDBACK_STORED_TOTAL,
        t::TRAINER_LAST_GATE_PUBLISHED,
        t::TRAINER_CANDIDATE_DEV_MAP,
    ] {
        assert!(used.contains(m), "dashboard shows {m}");
    }
    for f in [
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/uwe.yml",
    ] {
        serde_yaml::from_str::<serde_yaml::Value>(
            &std::fs::read_to_string(root().join(f)).unwrap(),
        )
        .unwrap();
    }
}

//! `uwe-connect demo`: publishes sample vacancies and CVs, runs the shipped pipelines on
//! them in this process and prints the enriched records as a readable table.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::connector::config::PipelineConfig;
use crate::connector::http::Health;

/// Demo options.
#[derive(Debug, Clone)]
pub struct Demo {
    /// Broker address; overrides the pipeline files'.
    pub brokers: String,
    /// Pipeline files to run.
    pub pipelines: Vec<PathBuf>,
    /// Vacancies to publish (from `data/events/`).
    pub vacancies: usize,
    /// Data directory.
    pub data_dir: PathBuf,
}

fn samples(o: &Demo, cfg: &PipelineConfig, run: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    Ok(match cfg.pipeline.event_type {
        crate::connector::config::EventType::Vacancy => {
            let text =
                std::fs::read_to_string(o.data_dir.join("events/skillspan_postings_train.jsonl"))?;
            text.lines()
                .take(o.vacancies)
                .enumerate()
                .map(|(i, l)| {
                    let p: serde_json::Value = serde_json::from_str(l)?;
                    let body = p["text"].as_str().unwrap_or_default();
                    let id = format!("vacancy-{run}-{i}");
                    let title = body
                        .lines()
                        .next()
                        .unwrap_or("job")
                        .replace("<ORGANIZATION>", "")
                        .trim()
                        .to_string();
                    let ev = serde_json::json!({"id": id, "title": title, "description": body, "source": p["source"]});
                    Ok((id, serde_json::to_vec(&ev)?))
                })
                .collect::<anyhow::Result<_>>()?
        }
        crate::connector::config::EventType::Cv => {
            let text = std::fs::read_to_string(o.data_dir.join("events/sample_cvs.jsonl"))?;
            text.lines()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l)?;
                    let id = format!("{}-{run}", v["id"].as_str().unwrap_or("cv"));
                    v["id"] = id.clone().into();
                    Ok((id, serde_json::to_vec(&v)?))
                })
                .collect::<anyhow::Result<_>>()?
        }
    })
}

fn print_record(v: &serde_json::Value, title: &str) {
    println!(
        "\n━━ {} {}  ({})",
        v["event_type"].as_str().unwrap_or(""),
        v["source"]["id"].as_str().unwrap_or(""),
        title
    );
    if let Some(groups) = v["labels"].as_object() {
        for (name, labels) in groups {
            let labels = labels.as_array().cloned().unwrap_or_default();
            println!("   {name}:");
            if labels.is_empty() {
                println!("      (none above min_score)");
            }
            for l in labels.iter().take(8) {
                let ev = &l["evidence"];
                let mut text: String = ev["text"].as_str().unwrap_or("").chars().take(60).collect();
                if ev["text"]
                    .as_str()
                    .map(|t| t.chars().count() > 60)
                    .unwrap_or(false)
                {
                    text.push('…');
                }
                println!(
                    "      {:.2}  {:<45} ← {} \"{}\"",
                    l["score"].as_f64().unwrap_or(0.0),
                    l["label"].as_str().unwrap_or(""),
                    ev["field"].as_str().unwrap_or(""),
                    text
                );
            }
        }
    }
}

/// Runs the demo.
pub async fn run(o: Demo) -> anyhow::Result<()> {
    let run_id = format!("{}", std::process::id());
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &o.brokers)
            .create()?;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .create()?;
    let mut handles = Vec::new();
    let mut readers = Vec::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for path in &o.pipelines {
        let mut cfg = PipelineConfig::load(path)?;
        cfg.kafka.brokers = o.brokers.clone();
        cfg.http.listen = String::new();
        cfg.kafka
            .consumer_options
            .insert("session.timeout.ms".into(), "6000".into());
        let topics = [
            cfg.kafka.input_topics[0].clone(),
            cfg.kafka.output_topic.clone(),
            cfg.kafka.dead_letter_topic.clone(),
        ];
        let new: Vec<rdkafka::admin::NewTopic> = topics
            .iter()
            .map(|t| {
                rdkafka::admin::NewTopic::new(t, 2, rdkafka::admin::TopicReplication::Fixed(1))
            })
            .collect();
        // Topics that already exist are fine.
        let _ = admin
            .create_topics(&new, &rdkafka::admin::AdminOptions::new())
            .await?;
        let events = samples(&o, &cfg, &run_id)?;
        let mut titles = std::collections::HashMap::new();
        for (id, body) in &events {
            let v: serde_json::Value = serde_json::from_slice(body)?;
            let t = v["title"]
                .as_str()
                .or(v["headline"].as_str())
                .unwrap_or("")
                .to_string();
            titles.insert(id.clone(), t);
            producer
                .send(
                    FutureRecord::to(&topics[0]).key(id).payload(body),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)?;
        }
        eprintln!(
            "published {} {} events to {}",
            events.len(),
            cfg.pipeline.event_type.as_str(),
            topics[0]
        );
        let reader: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &o.brokers)
            .set("group.id", format!("uwe-demo-reader-{run_id}"))
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()?;
        reader.subscribe(&[&topics[1]])?;
        readers.push((reader, titles, events.len()));
        handles.push(tokio::spawn(crate::connector::run(
            cfg,
            stop_rx.clone(),
            Arc::new(Health::default()),
        )));
    }
    for (reader, titles, n) in &readers {
        let mut seen = 0;
        while seen < *n {
            let m = tokio::time::timeout(Duration::from_secs(600), reader.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("no enriched record within 10 minutes; see the log above")
                })??;
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
            let id = v["source"]["id"].as_str().unwrap_or("").to_string();
            // Earlier demo runs left records in the topic: show this run's only.
            if let Some(t) = titles.get(&id) {
                print_record(&v, t);
                seen += 1;
            }
        }
    }
    let _ = stop_tx.send(true);
    for h in handles {
        h.await??;
    }
    println!("\nDone. The pipelines are in connectors/; run one for real with: target/release/uwe-connect run --config connectors/vacancies.toml");
    Ok(())
}

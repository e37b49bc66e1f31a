//! Shared helpers of the integration tests: the real model built by `scripts/setup`.
#![allow(dead_code)]

use std::path::PathBuf;

use uwe_connect::encoder::{Device, Encoder, EncoderConfig};
use uwe_connect::model::ModelDir;

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The base model directory written by `scripts/setup`.
pub fn base_model_dir() -> PathBuf {
    std::env::var_os("UWE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/base"))
}

/// Encoder settings for tests: CPU, ONNX Runtime from `.uwe/lib`.
pub fn cpu_config() -> EncoderConfig {
    EncoderConfig {
        device: Device::Cpu,
        onnxruntime: Some(root().join(".uwe/lib/libonnxruntime.so")),
        ..Default::default()
    }
}

/// Opens the base model; panics with the fix when setup has not run.
pub fn open_base() -> ModelDir {
    ModelDir::open(&base_model_dir()).unwrap_or_else(|e| {
        panic!("{e}\nThe integration tests need the real model: run scripts/setup first")
    })
}

/// A CPU encoder over the base model.
pub fn base_encoder() -> Encoder {
    Encoder::load(&open_base(), &cpu_config()).expect("load encoder")
}

// ---- Kafka helpers: the real broker started by scripts/test ----

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::TopicPartitionList;

/// The test broker's address.
pub fn broker() -> String {
    std::env::var("UWE_TEST_BROKER").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), n % 1_000_000_000)
}

/// Creates topics with `partitions` partitions each.
pub fn create_topics(names: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .expect("admin client");
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("create topics");
    for r in res {
        r.expect("topic created");
    }
}

/// A synchronous producer for test input.
pub fn producer() -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .expect("producer")
}

/// Produces `(key, payload)` to `topic` round-robin over `partitions` partitions, and waits for acks.
pub fn produce(topic: &str, partitions: i32, events: &[(String, Vec<u8>)]) {
    let p = producer();
    for (i, (k, v)) in events.iter().enumerate() {
        let mut rec = BaseRecord::to(topic)
            .key(k.as_bytes())
            .payload(v)
            .partition(i as i32 % partitions);
        rec = rec.headers(
            rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "trace-id",
                value: Some(k.as_bytes()),
            }),
        );
        let mut rec = Some(rec);
        while let Some(r) = rec.take() {
            if let Err((e, r)) = p.send(r) {
                assert!(
                    matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ),
                    "{e}"
                );
                std::thread::sleep(Duration::from_millis(5));
                rec = Some(r);
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Got {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("JSON output")
    }
}

/// Reads `topic` from the beginning until `pred(records)` or `timeout`.
pub fn consume_until(topic: &str, timeout: Duration, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut got = Vec::new();
    let end = Instant::now() + timeout;
    while Instant::now() < end && !pred(&got) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            got.push(Got {
                key: m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_string(),
                                    String::from_utf8_lossy(x.value.unwrap_or_default())
                                        .to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                partition: m.partition(),
                offset: m.offset(),
            });
        }
    }
    got
}

/// Committed offsets of `group` on `topic`'s partitions `0..partitions` (-1001 = none).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let out = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    let v = out
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(-1001))
        .collect();
    drop(out); // before the consumer: librdkafka issue 3796
    v
}

/// A pipeline file for the test broker.
#[allow(clippy::too_many_arguments)]
pub fn pipeline_toml(
    name: &str,
    event_type: &str,
    input: &str,
    output: &str,
    dlq: &str,
    group: &str,
    format: &str,
    delivery: &str,
    http: &str,
) -> String {
    let root = root();
    let (occ_fields, sk_fields) = if event_type == "vacancy" {
        ("[\"title\"]", "[\"description\"]")
    } else {
        (
            "[\"experience_title\"]",
            "[\"experience_description\", \"summary\", \"skills\"]",
        )
    };
    format!(
        r#"
[pipeline]
name = "{name}"
event_type = "{event_type}"
[kafka]
brokers = "{broker}"
group_id = "{group}"
input_topics = ["{input}"]
output_topic = "{output}"
dead_letter_topic = "{dlq}"
delivery = "{delivery}"
[kafka.consumer_options]
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "500"
[codec]
format = "{format}"
schema_dir = "{root}/schemas/registry"
reader_schema = "{root}/schemas/avro/{event_type}.avsc"
max_event_bytes = 65536
[[targets]]
name = "occupations"
space = "esco-occupations"
fields = {occ_fields}
mode = "whole"
k = 3
match_aliases = true
[[targets]]
name = "skills"
space = "esco-skills"
fields = {sk_fields}
mode = "sentences"
k = 10
min_score = 0.3
[batching]
max_batch_tokens = 2048
max_wait_ms = 20
max_in_flight = 64
[model]
dir = "{model}"
data_dir = "{root}/data"
cache_dir = "{root}/target/test-space-cache"
[encoder]
device = "cpu"
intra_threads = 1
onnxruntime = "{root}/.uwe/lib/libonnxruntime.so"
[http]
listen = "{http}"
"#,
        broker = broker(),
        root = root.display(),
        model = base_model_dir().display(),
    )
}

/// A running connector process.
pub struct Connector {
    pub child: Child,
    pub config: std::path::PathBuf,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

impl Connector {
    pub fn start(toml: &str) -> Connector {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pipeline.toml");
        std::fs::write(&config, toml).unwrap();
        Self::start_at(config, std::sync::Arc::new(dir))
    }

    fn start_at(config: std::path::PathBuf, dir: std::sync::Arc<tempfile::TempDir>) -> Connector {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("connector.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_uwe-connect"))
            .args(["run", "--config"])
            .arg(&config)
            .env("UWE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start connector");
        Connector {
            child,
            config,
            _dir: dir,
        }
    }

    /// Kills the process (SIGKILL) and starts it again with the same config.
    pub fn kill_and_restart(mut self) -> Connector {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        Self::start_at(self.config.clone(), self._dir.clone())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("connector.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < end,
                "connector did not stop after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Real vacancy events from the SkillSpan postings (title = first line), descriptions cut to `max_chars`.
pub fn vacancy_events(n: usize, max_chars: usize) -> Vec<(String, serde_json::Value)> {
    let text = std::fs::read_to_string(root().join("data/events/skillspan_postings_train.jsonl"))
        .expect("postings");
    let posts: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (0..n)
        .map(|i| {
            let p = &posts[i % posts.len()];
            let body = p["text"].as_str().unwrap();
            let title = body.lines().next().unwrap_or("job").to_string();
            let desc: String = body.chars().take(max_chars).collect();
            let id = format!("v-{i}");
            (id.clone(), serde_json::json!({"id": id, "title": title, "description": desc, "source": p["source"]}))
        })
        .collect()
}

/// Reads a connector's `/metrics` and returns the value of the first line starting with `name`.
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A free local TCP port.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Fresh input, output and dead-letter topics and a consumer group of one test.
pub struct Topics {
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
}

impl Topics {
    /// A pipeline file over these topics.
    pub fn pipeline(
        &self,
        name: &str,
        event_type: &str,
        format: &str,
        delivery: &str,
        http: &str,
    ) -> String {
        pipeline_toml(
            name,
            event_type,
            &self.input,
            &self.output,
            &self.dlq,
            &self.group,
            format,
            delivery,
            http,
        )
    }
}

/// Creates [`Topics`] named after `prefix` with `partitions` partitions.
pub fn topics(prefix: &str, partitions: i32) -> Topics {
    let t = Topics {
        input: unique(&format!("{prefix}-in")),
        output: unique(&format!("{prefix}-out")),
        dlq: unique(&format!("{prefix}-dlq")),
        group: unique(&format!("{prefix}-group")),
    };
    create_topics(&[&t.input, &t.output, &t.dlq], partitions);
    t
}

/// Events as JSON payloads.
pub fn json_events(evs: Vec<(String, serde_json::Value)>) -> Vec<(String, Vec<u8>)> {
    evs.into_iter()
        .map(|(k, v)| (k, serde_json::to_vec(&v).unwrap()))
        .collect()
}

/// Copies a model directory's graph, tokenizer and manifest to `to` as version `version`.
pub fn copy_model(from: &std::path::Path, to: &std::path::Path, version: &str) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["model.onnx", "tokenizer.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("manifest.json")).unwrap())
            .unwrap();
    m["version"] = version.into();
    m["created_at"] = uwe_connect::model::now_rfc3339().into();
    std::fs::write(to.join("manifest.json"), m.to_string()).unwrap();
}

/// A running `uwe-trainer serve`.
pub struct Trainer {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl Trainer {
    pub fn start(config: &std::path::Path, log: &std::path::Path) -> Trainer {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_uwe-trainer"))
            .args(["serve", "--config"])
            .arg(config)
            .env("UWE_LOG", "info")
            .env("ORT_DYLIB_PATH", root().join(".uwe/lib/libonnxruntime.so"))
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start uwe-trainer serve");
        Trainer {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Trainer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 50 ms until it holds; fails with `log()` after `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status code of `GET path` on `addr`.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_whitespace().nth(1)?.parse().ok()
}

/// A `uwe-trainer serve` file for a test: the repo's models and data, `registry`, topics
/// `[feedback, dead letters, control]`, a quick recipe (`steps` steps of the top layer, 400
/// replayed pairs, a checkpoint every 10 steps) and a gate on one dev task that publishes
/// whatever the scores (the tests are about the plumbing, not the model).
pub fn trainer_toml(
    registry: &std::path::Path,
    topics: [&str; 3],
    min_new_feedback: usize,
    steps: usize,
    http: &str,
) -> String {
    format!(
        r#"
[service]
registry = "{registry}"
base = "{root}/models/base"
base_files = "{root}/.uwe/base"
data_dir = "{root}/data"
threads = 2
[kafka]
brokers = "{broker}"
group_id = "{group}"
feedback_topic = "{feedback}"
dead_letter_topic = "{dlq}"
control_topic = "{control}"
[feedback]
targets = ["esco-skills"]
[trigger]
min_new_feedback = {min_new_feedback}
[training]
layers = 1
steps = {steps}
batch = 16
lr = 1e-4
warmup = 5
replay_pairs = 400
checkpoint_every = 10
[gate]
margin = -100.0
tasks = ["skill_extraction_house"]
[http]
listen = "{http}"
"#,
        registry = registry.display(),
        root = root().display(),
        broker = broker(),
        group = unique("trainer"),
        feedback = topics[0],
        dlq = topics[1],
        control = topics[2],
    )
}

//! The streaming connector: Kafka in, enriched records out, nothing lost.
//!
//! ```text
//! source ──► batcher ──► encoder thread ──► ranker ──► sink ──► broker
//!  (decode,    (token       (EncoderService)   (rank      (produce, await ack,
//!   classify,   budget,                        spaces)     mark offset / txn)
//!   permits)    max wait)
//! ```
//! Items keep their arrival order through every stage, so output order per input
//! partition is kept. Each accepted event holds an in-flight permit until its output (an
//! enriched record or a dead letter) is acknowledged; when the permits run out the
//! partitions are paused. In at-least-once mode an offset is committed only once it and
//! every offset before it are acknowledged (every second, on revocation and at shutdown,
//! synchronously and one commit at a time); in exactly-once mode each batch's
//! records and offsets commit in one transaction.
//!
//! # Layout
//!
//! - `pipeline.rs`: the wiring; creates the clients, spawns each stage with its part of the
//!   config and its channels, owns shutdown and the drain.
//! - `source.rs`: consume, decode and classify, permits and pause/resume.
//! - `batcher.rs`: the token-budget queue and the batch stage that starts encoding.
//! - `ranker.rs`: awaits a batch's encoding, builds enriched records and dead letters
//!   (enrichment itself: `enrich.rs`).
//! - `sink/`: the `Sink` trait, its at-least-once and transactional
//!   implementations, dead letters.
//! - `offsets.rs`: which offsets may be committed, and the verified final commit.
//! - `kafka.rs`: client settings and the consumer context (rebalance callbacks).
//! - `codec.rs`, `event.rs`: decoding events and the texts they offer.
//! - `watcher.rs`, `swap.rs`: the registry watcher; loading, shadow scoring and rollback.
//! - `config/`: pipeline files; `http.rs`: `/metrics`, `/health`, `/ready`.

pub mod batcher;
pub mod codec;
pub mod config;
pub mod enrich;
pub mod event;
pub mod http;
pub mod kafka;
pub mod offsets;
pub mod pipeline;
mod ranker;
pub(crate) mod sink;
mod source;
pub mod swap;
mod watcher;

pub use config::PipelineConfig;
pub use pipeline::{run, ConnectorError};

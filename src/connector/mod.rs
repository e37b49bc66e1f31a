//! The streaming connector: Kafka in, enriched records out, nothing lost.
//!
//! ```text
//! source ──► batcher ──► encoder thread ──► ranker ──► sink ──► broker
//!  (decode,    (token       (EncoderService)   (rank      (produce, await ack,
//!   classify,   budget,                        spaces)     store offset / txn)
//!   permits)    max wait)
//! ```
//! Items keep their arrival order through every stage, so output order per input
//! partition is kept. Each accepted event holds an in-flight permit until its output (an
//! enriched record or a dead letter) is acknowledged; when the permits run out the
//! partitions are paused. In at-least-once mode an offset is stored for commit only once
//! it and every offset before it are acknowledged; in exactly-once mode each batch's
//! records and offsets commit in one transaction.
//!
//! Files: the source, batch stage, dispatch to the encoder and the wiring are in
//! `pipeline.rs`; the sink trait, its at-least-once and transactional implementations and the
//! dead letters are in `sink/`; offsets in `offsets.rs`; the registry watcher in `watcher.rs`, the
//! hot swap's loading, shadow scoring and rollback in `swap.rs`.

pub mod batcher;
pub mod codec;
pub mod config;
pub mod enrich;
pub mod event;
pub mod http;
pub mod kafka;
pub mod offsets;
pub mod pipeline;
mod sink;
pub mod swap;
mod watcher;

pub use config::PipelineConfig;
pub use pipeline::{run, ConnectorError};

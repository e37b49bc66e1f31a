//! uwe-connect: a Kafka enrichment connector for labour-market data.
//!
//! It reads job vacancy and CV events, encodes their texts with a UWE bi-encoder (token
//! embeddings and soft late interaction) on ONNX Runtime, ranks them against cached
//! target spaces (ESCO skills and occupations, or a custom taxonomy) and publishes
//! enriched records with the top-k labels.
//!
//! # Layout
//!
//! - [`model`]: model directories (ONNX graph, tokenizer, manifest), the graph writer and the
//!   int8 graph's calibration (`model::calibrate`).
//! - [`encoder`]: the blocking encoder (token-budget batches, long-text windows, query
//!   cache) and the service that runs it on its own thread.
//! - [`space`]: target spaces and the disk cache of their embeddings.
//! - [`mentions`]: the skill-mention tagger over token embeddings (`spans`: BIO decoding to
//!   words; `gate`: the sentence gate; `file`: its safetensors file), its training and span
//!   scores (`train`, `score`).
//! - [`rank`]: pooled and soft late-interaction scoring.
//! - [`connector`]: the Kafka pipeline, one file per stage: `source`, `batcher`, `ranker`,
//!   `sink/`, `offsets`, wired by `pipeline` (see its Layout).
//! - [`eval`]: MAP / RP@k / MRR on task files, dev-set converters, and the whole-posting
//!   evaluation (noise share, span P/R/F1, label P/R).
//! - [`text`]: sentence spans.
//! - [`train`]: the trainer sidecar (training pairs, pseudo-labelled job-ad sentences, top BERT
//!   layers or a projection head on candle, eval gate).
//! - [`sidecar`]: `uwe-trainer serve`: the feedback log, its triggers and run state.
//! - [`telemetry`]: every metric name, in one place.
//! - [`cli`]: the binaries' subcommands, one module each, with their arguments.
//! - [`error`]: error domains and their classes (bad data, transient, fatal).

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod connector;
pub mod demo;
pub mod encoder;
pub mod error;
pub mod eval;
pub mod mentions;
pub mod model;
pub mod rank;
pub mod sidecar;
pub mod space;
pub mod telemetry;
pub mod text;
pub mod train;

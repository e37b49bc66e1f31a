//! The trainer as a long-running sidecar (`uwe-trainer serve`): analysts' feedback in,
//! gated models out.
//!
//! # Layout
//!
//! - [`config`]: the service's TOML file (`deploy/trainer.toml`), layered with
//!   `UWE_TRAINER__*` environment overrides and validated with the key named.
//! - [`feedback`]: one feedback event (`schemas/json/feedback.schema.json`,
//!   `schemas/avro/feedback.avsc`), validated against the target spaces it names; what is
//!   wrong is a dead-letter reason.
//! - [`store`]: the append-only, fsynced feedback log in the registry volume. Consumer
//!   offsets are committed only after it, so a crash loses nothing; a record stored twice
//!   (crash between fsync and commit) is recognised by its topic, partition and offset.
//! - [`trigger`]: when to retrain (`min_new_feedback`, `max_interval`, or a request on the
//!   control topic).
//! - [`run`]: the state of a retraining run in the registry (`.serve-run.json` and its
//!   checkpoint), so a killed process resumes the same run and never publishes half of one.
//!
//! The process itself (consumer, HTTP probes, the training thread) is wired in
//! `cli::trainer::serve`.

pub mod config;
pub mod feedback;
pub mod run;
pub mod store;
pub mod trigger;

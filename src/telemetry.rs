//! Telemetry: every metric the project exports, in one place, and the log setup. Metric names
//! follow `uwe_<what>_<unit>`; labels are low-cardinality (pipeline, reason, outcome, version).

use std::time::Duration;

/// Windows per encoder batch.
pub const ENCODE_BATCH_SIZE: &str = "uwe_encode_batch_size";
/// Padded tokens per encoder batch.
pub const ENCODE_BATCH_TOKENS: &str = "uwe_encode_batch_tokens";
/// Seconds per encoder batch.
pub const ENCODE_SECONDS: &str = "uwe_encode_seconds";
/// Query-embedding cache lookups, by `result` (hit, miss).
pub const QUERY_CACHE_TOTAL: &str = "uwe_query_cache_lookups_total";
/// Skill and knowledge mentions ranked (`mentions` mode targets), summed over events.
pub const MENTIONS_TOTAL: &str = "uwe_mentions_total";

/// Structured logs to stderr, filtered by `UWE_LOG` (default `info`); both binaries call it.
pub fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UWE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Registers descriptions with the installed recorder.
pub fn describe() {
    metrics::describe_histogram!(ENCODE_BATCH_SIZE, "Windows per encoder batch");
    metrics::describe_histogram!(ENCODE_BATCH_TOKENS, "Padded tokens per encoder batch");
    metrics::describe_histogram!(
        ENCODE_SECONDS,
        metrics::Unit::Seconds,
        "Time per encoder batch"
    );
    metrics::describe_counter!(QUERY_CACHE_TOTAL, "Query-embedding cache lookups by result");
    metrics::describe_counter!(MENTIONS_TOTAL, "Skill and knowledge mentions ranked");
}

/// Records the mentions one event's target ranks.
pub fn mentions_found(n: usize) {
    metrics::counter!(MENTIONS_TOTAL).increment(n as u64);
}

/// Records one encoder batch.
pub fn encode_batch(size: usize, tokens: usize, took: Duration) {
    metrics::histogram!(ENCODE_BATCH_SIZE).record(size as f64);
    metrics::histogram!(ENCODE_BATCH_TOKENS).record(tokens as f64);
    metrics::histogram!(ENCODE_SECONDS).record(took.as_secs_f64());
}

/// Records a query-cache lookup.
pub fn query_cache(hit: bool) {
    metrics::counter!(QUERY_CACHE_TOTAL, "result" => if hit { "hit" } else { "miss" }).increment(1);
}

/// Events read from the input topics, by `pipeline`.
pub const RECORDS_IN_TOTAL: &str = "uwe_records_in_total";
/// Enriched records acknowledged by the broker, by `pipeline`.
pub const RECORDS_OUT_TOTAL: &str = "uwe_records_out_total";
/// Dead letters acknowledged by the broker, by `pipeline` and `reason`.
pub const RECORDS_DEAD_LETTERED_TOTAL: &str = "uwe_records_dead_lettered_total";
/// Events per pipeline batch.
pub const BATCH_EVENTS: &str = "uwe_batch_events";
/// Estimated tokens per pipeline batch.
pub const BATCH_TOKENS: &str = "uwe_batch_tokens";
/// Seconds spent ranking one batch.
pub const RANK_SECONDS: &str = "uwe_rank_seconds";
/// Seconds from the event's Kafka timestamp to the output's acknowledgement.
pub const END_TO_END_LATENCY_SECONDS: &str = "uwe_end_to_end_latency_seconds";
/// Consumer lag summed over assigned partitions, by `pipeline`.
pub const CONSUMER_LAG_MESSAGES: &str = "uwe_consumer_lag_messages";
/// Events accepted and not yet acknowledged, by `pipeline`.
pub const IN_FLIGHT_EVENTS: &str = "uwe_in_flight_events";
/// Input offset commits (at-least-once), by `pipeline` and `outcome` (ok, failed).
pub const OFFSET_COMMITS_TOTAL: &str = "uwe_offset_commits_total";
/// Produce attempts retried after a transient failure, by `pipeline`.
pub const DELIVERY_RETRIES_TOTAL: &str = "uwe_delivery_retries_total";
/// 1 for the serving model version, by `pipeline` and `version`.
pub const MODEL_INFO: &str = "uwe_model_info";
/// Model swap attempts, by `outcome` (swapped, refused).
pub const MODEL_SWAPS_TOTAL: &str = "uwe_model_swaps_total";
/// Seconds from noticing a new model to serving it.
pub const MODEL_SWAP_SECONDS: &str = "uwe_model_swap_seconds";
/// Mean top-k overlap of the last candidate model with the serving one on shadow-scored
/// live events, by `pipeline`.
pub const MODEL_SHADOW_OVERLAP_RATIO: &str = "uwe_model_shadow_topk_overlap_ratio";

/// Registers descriptions of the connector's metrics.
pub fn describe_connector() {
    describe();
    metrics::describe_counter!(RECORDS_IN_TOTAL, "Events read from the input topics");
    metrics::describe_counter!(
        RECORDS_OUT_TOTAL,
        "Enriched records acknowledged by the broker"
    );
    metrics::describe_counter!(
        RECORDS_DEAD_LETTERED_TOTAL,
        "Dead letters acknowledged by the broker"
    );
    metrics::describe_histogram!(BATCH_EVENTS, "Events per batch");
    metrics::describe_histogram!(BATCH_TOKENS, "Estimated tokens per batch");
    metrics::describe_histogram!(
        RANK_SECONDS,
        metrics::Unit::Seconds,
        "Ranking time per batch"
    );
    metrics::describe_histogram!(
        END_TO_END_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "From the event's Kafka timestamp to its output's acknowledgement"
    );
    metrics::describe_gauge!(
        CONSUMER_LAG_MESSAGES,
        "Consumer lag over assigned partitions"
    );
    metrics::describe_gauge!(IN_FLIGHT_EVENTS, "Events accepted and not yet acknowledged");
    metrics::describe_counter!(
        OFFSET_COMMITS_TOTAL,
        "Input offset commits by outcome (at-least-once)"
    );
    metrics::describe_counter!(
        DELIVERY_RETRIES_TOTAL,
        "Produce attempts retried after a transient failure"
    );
    metrics::describe_gauge!(MODEL_INFO, "1 for the serving model version");
    metrics::describe_counter!(MODEL_SWAPS_TOTAL, "Model swap attempts by outcome");
    metrics::describe_histogram!(
        MODEL_SWAP_SECONDS,
        metrics::Unit::Seconds,
        "From noticing a new model to serving it"
    );
    metrics::describe_gauge!(
        MODEL_SHADOW_OVERLAP_RATIO,
        "Mean top-k overlap of the last candidate with the serving model on shadow-scored live events"
    );
}

/// Feedback events read from the feedback topic.
pub const TRAINER_FEEDBACK_RECEIVED_TOTAL: &str = "uwe_trainer_feedback_received_total";
/// Feedback events durably stored, by `verdict`.
pub const TRAINER_FEEDBACK_STORED_TOTAL: &str = "uwe_trainer_feedback_stored_total";
/// Feedback events dead-lettered, by `reason`.
pub const TRAINER_FEEDBACK_DEAD_LETTERED_TOTAL: &str = "uwe_trainer_feedback_dead_lettered_total";
/// Stored feedback events no run has trained on yet.
pub const TRAINER_FEEDBACK_PENDING: &str = "uwe_trainer_feedback_pending";
/// Retraining runs ended, by `reason` (feedback, interval, requested, resumed) and `outcome`
/// (published, refused, failed).
pub const TRAINER_RUNS_TOTAL: &str = "uwe_trainer_runs_total";
/// Seconds per retraining run (training, gate and publishing).
pub const TRAINER_RUN_SECONDS: &str = "uwe_trainer_run_seconds";
/// 1 while a retraining run is in progress.
pub const TRAINER_RUN_IN_PROGRESS: &str = "uwe_trainer_run_in_progress";
/// 1 when the last candidate passed the gate and was published, 0 when it was refused.
pub const TRAINER_LAST_GATE_PUBLISHED: &str = "uwe_trainer_last_gate_published";
/// Dev MAP (points) of the last candidate, by `task`.
pub const TRAINER_CANDIDATE_DEV_MAP: &str = "uwe_trainer_candidate_dev_map";
/// Dev MAP (points) of the model the last candidate was gated against, by `task`.
pub const TRAINER_SERVING_DEV_MAP: &str = "uwe_trainer_serving_dev_map";
/// 1 for the registry's current model version, by `version`.
pub const TRAINER_MODEL_INFO: &str = "uwe_trainer_model_info";

/// Registers descriptions of the trainer service's metrics.
pub fn describe_trainer() {
    metrics::describe_counter!(
        TRAINER_FEEDBACK_RECEIVED_TOTAL,
        "Feedback events read from the feedback topic"
    );
    metrics::describe_counter!(
        TRAINER_FEEDBACK_STORED_TOTAL,
        "Feedback events durably stored, by verdict"
    );
    metrics::describe_counter!(
        TRAINER_FEEDBACK_DEAD_LETTERED_TOTAL,
        "Feedback events dead-lettered, by reason"
    );
    metrics::describe_gauge!(
        TRAINER_FEEDBACK_PENDING,
        "Stored feedback events no run has trained on yet"
    );
    metrics::describe_counter!(
        TRAINER_RUNS_TOTAL,
        "Retraining runs ended, by reason and outcome"
    );
    metrics::describe_histogram!(
        TRAINER_RUN_SECONDS,
        metrics::Unit::Seconds,
        "Time per retraining run: training, gate, publishing"
    );
    metrics::describe_gauge!(
        TRAINER_RUN_IN_PROGRESS,
        "1 while a retraining run is in progress"
    );
    metrics::describe_gauge!(
        TRAINER_LAST_GATE_PUBLISHED,
        "1 when the last candidate was published, 0 when the gate refused it"
    );
    metrics::describe_gauge!(
        TRAINER_CANDIDATE_DEV_MAP,
        "Dev MAP of the last candidate, by task"
    );
    metrics::describe_gauge!(
        TRAINER_SERVING_DEV_MAP,
        "Dev MAP of the model the last candidate was gated against, by task"
    );
    metrics::describe_gauge!(
        TRAINER_MODEL_INFO,
        "1 for the registry's current model version"
    );
}

//! Every metric the project exports, in one place. Names follow `uwe_<what>_<unit>`;
//! labels are low-cardinality (pipeline, space, outcome).

use std::time::Duration;

/// Windows per encoder batch.
pub const ENCODE_BATCH_SIZE: &str = "uwe_encode_batch_size";
/// Padded tokens per encoder batch.
pub const ENCODE_BATCH_TOKENS: &str = "uwe_encode_batch_tokens";
/// Seconds per encoder batch.
pub const ENCODE_SECONDS: &str = "uwe_encode_seconds";
/// Query-embedding cache lookups, by `result` (hit, miss).
pub const QUERY_CACHE_TOTAL: &str = "uwe_query_cache_lookups_total";

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

//! The binaries' command lines (the edge where errors become `anyhow` reports and exit
//! codes): [`connect`] for `uwe-connect`, [`trainer`] for `uwe-trainer`.

pub mod connect;
pub mod trainer;

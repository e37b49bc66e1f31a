//! `uwe-trainer`: the sidecar that retrains the model, gates it on the dev tasks and
//! publishes it into the model registry the connector watches (`src/cli/trainer/`).

fn main() -> std::process::ExitCode {
    uwe_connect::cli::trainer::main()
}

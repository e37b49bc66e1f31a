//! `uwe-connect`: the connector and its tools (`run`, `check`, `eval`, `rank`, `bench`,
//! `demo`, `build-model`, `convert`, `rollback`); each lives in `src/cli/connect/`.

fn main() -> std::process::ExitCode {
    uwe_connect::cli::connect::main()
}

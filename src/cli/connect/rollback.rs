//! `uwe-connect rollback`.

use std::path::PathBuf;

use anyhow::{bail, Context};

/// Arguments of `uwe-connect rollback`.
#[derive(clap::Args)]
pub(crate) struct RollbackArgs {
    #[arg(long)]
    registry: PathBuf,
    /// Version to serve; default: the one published before the current one.
    #[arg(long)]
    to: Option<String>,
}

/// Runs `uwe-connect rollback` with these arguments.
pub(crate) fn run(a: RollbackArgs) -> anyhow::Result<()> {
    let RollbackArgs { registry, to } = a;
    use crate::connector::swap;
    let versions = swap::versions(&registry);
    let current = swap::current_target(&registry)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()));
    let target = match to {
        Some(v) => v,
        None => {
            let pos = versions
                .iter()
                .position(|(_, v)| Some(v) == current.as_ref());
            match pos {
                Some(i) if i > 0 => versions[i - 1].1.clone(),
                _ => bail!(
                    "{}: no version before {:?} to roll back to (versions: {:?})",
                    registry.display(),
                    current,
                    versions.iter().map(|v| &v.1).collect::<Vec<_>>()
                ),
            }
        }
    };
    swap::set_current(&registry, &target)
        .with_context(|| format!("pointing {}/current at {target}", registry.display()))?;
    println!(
        "{}/current -> {target} (was {})",
        registry.display(),
        current.unwrap_or_else(|| "nothing".into())
    );
    Ok(())
}

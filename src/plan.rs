//! The resolved daemon list: the table, the per-daemon options and the
//! selection turned into one list of units that the runtime and the
//! supervisor take as given (and that `--check` prints). No I/O here.

use crate::procfile::{self, DaemonSpec};
use crate::supervisor::{Policy, UnitSpec};

/// One unit to run, with everything about it resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// What the supervisor needs: name, kind, policy, readiness, order.
    pub spec: UnitSpec,
    /// The command; `argv[0]` without `/` is looked up in `PATH`.
    pub argv: Vec<String>,
}

/// The units, in start order, and what resolving them had to say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub units: Vec<Unit>,
    /// One line each: options naming daemons the selection left out,
    /// unknown names in the selection.
    pub warnings: Vec<String>,
}

/// The per-daemon options, as parsed from the command line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options {
    /// Restart policies with the flag or variable they came from.
    pub restart: Option<(String, crate::config::RestartSpec)>,
}

/// Resolves `table` with `options`, narrowed by the selection `wanted`
/// (the comma-separated names of `CLAUDE_BOTTLE_SIDECAR_DAEMONS`, if set).
/// An option naming a daemon the table lacks is an error naming the flag
/// or variable.
pub fn resolve(
    table: Vec<DaemonSpec>,
    options: &Options,
    wanted: Option<&str>,
    selection_var: &str,
) -> Result<Plan, String> {
    let names: Vec<&str> = table.iter().map(|d| d.name.as_str()).collect();
    let policies = match &options.restart {
        Some((source, spec)) => spec.resolve(&names).map_err(|e| format!("{source}: {e}"))?,
        None => vec![Policy::Never; names.len()],
    };
    let mut warnings = Vec::new();
    let policy_of: std::collections::HashMap<String, Policy> =
        table.iter().map(|d| d.name.clone()).zip(policies).collect();
    let (selected, unknown) = procfile::select(table, wanted);
    if !unknown.is_empty() {
        warnings.push(format!(
            "{selection_var} names unknown daemons, ignored: {}",
            unknown.join(", ")
        ));
    }
    let units = selected
        .into_iter()
        .map(|d| {
            let mut spec = UnitSpec::daemon(&d.name);
            spec.policy = policy_of.get(&d.name).copied().unwrap_or_default();
            Unit { spec, argv: d.argv }
        })
        .collect();
    Ok(Plan { units, warnings })
}

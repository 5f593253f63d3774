//! `k6 inspect --execution-requirements`, given everything `k6 run` will get
//! that shapes the plan, so the plan is the one k6 runs:
//!
//! - the process environment: `k6 run` passes it to `__ENV` by default,
//!   `k6 inspect` only with `--include-system-env-vars`;
//! - `-e`/`--env` values and `-c`/`--config` (both commands take them);
//! - the CLI overrides `-u`/`--vus`, `-d`/`--duration`, `-i`/`--iterations`,
//!   `-s`/`--stage`, which `k6 inspect` does not take: they are passed as
//!   k6's own environment options (`K6_VUS`, `K6_DURATION`, `K6_ITERATIONS`,
//!   `K6_STAGES`). k6 layers its configuration (file < script < environment
//!   < CLI) and a higher layer that sets a duration, iterations or stages
//!   replaces every execution setting below it, so the translated values
//!   also remove those three from inspect's environment.

use std::{
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

use super::plan;

/// The k6 environment options that a CLI duration, iterations or stages
/// replace (k6's `Options::Apply`: they override the lower layers'
/// execution settings).
const EXECUTION_ENV: [&str; 3] = ["K6_DURATION", "K6_ITERATIONS", "K6_STAGES"];

/// What `k6 inspect` must be given to see `k6 run`'s plan.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InspectArgs {
    /// Arguments for `k6 inspect` (`--env`, `--config`, `--include-system-env-vars`).
    pub args: Vec<String>,
    /// Environment variables to set for it (the CLI overrides).
    pub set_env: Vec<(String, String)>,
    /// Environment variables to remove (replaced by a CLI override).
    pub remove_env: Vec<&'static str>,
}

/// The options among `k6 run` arguments that shape the plan. A value is
/// either the next argument or attached (`--duration=3s`, `-d3s`).
pub fn inspect_args(run_args: &[String]) -> InspectArgs {
    let mut out = InspectArgs::default();
    let (mut vus, mut duration, mut iterations) = (None, None, None);
    let mut stages: Vec<String> = Vec::new();
    let mut system_env_given = false;
    let mut it = run_args.iter();
    while let Some(arg) = it.next() {
        if arg == "--include-system-env-vars" || arg.starts_with("--include-system-env-vars=") {
            system_env_given = true;
            out.args.push(arg.clone());
            continue;
        }
        let Some((flag, value)) = split_option(arg, &mut it) else { continue };
        match flag {
            "env" => out.args.extend(["--env".to_string(), value]),
            "config" => out.args.extend(["--config".to_string(), value]),
            "vus" => vus = Some(value),
            "duration" => duration = Some(value),
            "iterations" => iterations = Some(value),
            "stage" => stages.push(value),
            _ => unreachable!("split_option returns known flags"),
        }
    }
    if !system_env_given {
        // `k6 run`'s default.
        out.args.push("--include-system-env-vars".into());
    }
    if duration.is_some() || iterations.is_some() || !stages.is_empty() {
        out.remove_env.extend(EXECUTION_ENV);
    }
    let stages = (!stages.is_empty()).then(|| stages.join(","));
    for (key, value) in [
        ("K6_VUS", vus),
        ("K6_DURATION", duration),
        ("K6_ITERATIONS", iterations),
        ("K6_STAGES", stages),
    ] {
        if let Some(v) = value {
            out.set_env.push((key.into(), v));
        }
    }
    out
}

/// `(long name, value)` when `arg` is one of the plan-shaping options.
fn split_option<'a>(
    arg: &str,
    rest: &mut impl Iterator<Item = &'a String>,
) -> Option<(&'static str, String)> {
    const OPTIONS: [(&str, &str); 6] = [
        ("env", "e"),
        ("config", "c"),
        ("vus", "u"),
        ("duration", "d"),
        ("iterations", "i"),
        ("stage", "s"),
    ];
    for (long, short) in OPTIONS {
        if let Some(tail) = arg.strip_prefix("--").and_then(|a| a.strip_prefix(long)) {
            if tail.is_empty() {
                return Some((long, rest.next()?.clone()));
            }
            if let Some(v) = tail.strip_prefix('=') {
                return Some((long, v.to_string()));
            }
        } else if let Some(tail) = arg.strip_prefix('-').and_then(|a| a.strip_prefix(short)) {
            if tail.is_empty() {
                return Some((long, rest.next()?.clone()));
            }
            // pflag also takes `-d=3s`.
            return Some((long, tail.strip_prefix('=').unwrap_or(tail).to_string()));
        }
    }
    None
}

/// Runs `k6 inspect --execution-requirements SCRIPT` as `k6 run` with
/// `run_args` would see the script: checks it before anything is attached
/// and returns its plan.
pub fn inspect(
    k6: &Path,
    script: &Path,
    run_args: &[String],
) -> anyhow::Result<Vec<plan::Scenario>> {
    if !script.is_file() {
        bail!("--k6 {}: no such script file", script.display());
    }
    let inspect = inspect_args(run_args);
    let mut out = run_inspect(k6, script, &inspect, None)?;
    // `k6 run` has a default of 1 VU (its `--vus` flag's default) that
    // `k6 inspect` lacks: a plan that sets no VUs anywhere fails there only.
    let no_vus = String::from_utf8_lossy(&out.stderr).contains("number of VUs must be more than 0");
    if !out.status.success() && no_vus && !inspect.set_env.iter().any(|(k, _)| k == "K6_VUS") {
        out = run_inspect(k6, script, &inspect, Some(("K6_VUS", "1")))?;
    }
    if !out.status.success() {
        bail!(
            "k6 cannot load {} (k6 inspect {}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    plan::parse_plan(&String::from_utf8_lossy(&out.stdout))
}

fn run_inspect(
    k6: &Path,
    script: &Path,
    inspect: &InspectArgs,
    default_vus: Option<(&str, &str)>,
) -> anyhow::Result<Output> {
    let mut cmd = Command::new(k6);
    crate::priority::restore_for(&mut cmd);
    cmd.args(["inspect", "--execution-requirements"]).args(&inspect.args).arg(script);
    for key in &inspect.remove_env {
        cmd.env_remove(key);
    }
    cmd.envs(inspect.set_env.iter().map(|(k, v)| (k, v)));
    if let Some((k, v)) = default_vus {
        cmd.env(k, v);
    }
    cmd.output().with_context(|| format!("running {} inspect", k6.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn env_and_config_options_keep_their_values() {
        let i = inspect_args(&args(&[
            "--env",
            "A=1",
            "--vus",
            "3",
            "-e",
            "B=2",
            "--env=C=3",
            "-eD=4",
            "-c",
            "k6.json",
            "--out",
            "json=x.json",
        ]));
        assert_eq!(
            i.args,
            args(&[
                "--env",
                "A=1",
                "--env",
                "B=2",
                "--env",
                "C=3",
                "--env",
                "D=4",
                "--config",
                "k6.json",
                "--include-system-env-vars"
            ])
        );
        assert_eq!(i.set_env, [("K6_VUS".to_string(), "3".to_string())]);
        assert!(i.remove_env.is_empty(), "--vus alone replaces no execution setting");
    }

    #[test]
    fn cli_overrides_become_k6_environment_options() {
        let i = inspect_args(&args(&["--duration", "3s", "-u5", "-s", "1s:2", "--stage=2s:2"]));
        let env: Vec<(&str, &str)> =
            i.set_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, [("K6_VUS", "5"), ("K6_DURATION", "3s"), ("K6_STAGES", "1s:2,2s:2")]);
        assert_eq!(i.remove_env, EXECUTION_ENV);
        let i = inspect_args(&args(&["-i", "100"]));
        assert_eq!(i.set_env, [("K6_ITERATIONS".to_string(), "100".to_string())]);
    }

    #[test]
    fn the_system_environment_is_included_unless_the_user_said_otherwise() {
        assert_eq!(inspect_args(&[]).args, ["--include-system-env-vars"]);
        let i = inspect_args(&args(&["--include-system-env-vars=false"]));
        assert_eq!(i.args, ["--include-system-env-vars=false"]);
    }

    #[test]
    fn other_options_and_a_missing_value_are_ignored() {
        let i = inspect_args(&args(&["--summary-export", "s.json", "-q", "--duration"]));
        assert_eq!(
            i,
            InspectArgs { args: args(&["--include-system-env-vars"]), ..Default::default() }
        );
    }
}

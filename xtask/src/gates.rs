//! The style gates `cargo xtask test` runs before the tests: `cargo fmt
//! --check` and clippy with every warning an error, over the workspace's
//! host crates. A failure names the crates that are not clean and the
//! command that fixes or shows it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, describe, stdout_of};

/// A workspace member: its package name and id (as cargo's JSON messages
/// name it), and whether it builds for the host (agent-ebpf does not).
struct Member {
    name: String,
    id: String,
    host: bool,
}

/// Runs both gates; an error listing every crate either gate rejects.
pub fn gates() -> Result<()> {
    let members = members()?;
    let unformatted = fmt(&members)?;
    let lints = clippy(&members)?;
    let mut problems = Vec::new();
    if !unformatted.is_empty() {
        problems
            .push(format!("not formatted: {} (fix: `cargo fmt --all`)", unformatted.join(", ")));
    }
    if !lints.is_empty() {
        let list: Vec<String> = lints.iter().map(|(c, n)| format!("{c} ({n})")).collect();
        let first = lints.keys().next().expect("not empty");
        problems.push(format!(
            "clippy warnings or errors: {} (see them above, or run `cargo clippy -p {first} \
             --all-targets -- -D warnings`; `cargo clippy --fix` fixes some)",
            list.join(", ")
        ));
    }
    if !problems.is_empty() {
        bail!("style gates failed:\n  {}", problems.join("\n  "));
    }
    println!("gates: fmt and clippy clean ({} crates)", members.len());
    Ok(())
}

fn members() -> Result<Vec<Member>> {
    let text = stdout_of(cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
    let meta: Value = serde_json::from_str(&text).context("`cargo metadata` printed no JSON")?;
    let host: Vec<&str> = meta["workspace_default_members"]
        .as_array()
        .context("`cargo metadata` has no workspace_default_members (cargo too old?)")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let packages = meta["packages"].as_array().context("`cargo metadata` has no packages")?;
    Ok(packages
        .iter()
        .filter_map(|p| {
            let (name, id) = (p["name"].as_str()?, p["id"].as_str()?);
            Some(Member { name: name.into(), id: id.into(), host: host.contains(&id) })
        })
        .collect())
}

/// `cargo fmt --check` per crate; the crates with differences.
fn fmt(members: &[Member]) -> Result<Vec<String>> {
    let mut unformatted = Vec::new();
    for m in members {
        let mut cmd = cargo();
        cmd.args(["fmt", "--check", "-p", &m.name]);
        let status = cmd.status().with_context(|| format!("cannot run `{}`", describe(&cmd)))?;
        if !status.success() {
            unformatted.push(m.name.clone());
        }
    }
    Ok(unformatted)
}

/// `cargo clippy --all-targets` over the host crates, its diagnostics
/// printed as they come; warnings and errors counted per crate. (One run
/// with warnings counted rather than `-D warnings`: a crate that fails would
/// stop its dependents from being linted, hiding their count.)
fn clippy(members: &[Member]) -> Result<BTreeMap<String, usize>> {
    let mut cmd = cargo();
    cmd.args(["clippy", "--all-targets", "--message-format=json"]);
    println!("$ {}", describe(&cmd));
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    // The same warning comes once per target that compiles the file (lib,
    // its tests, …): counted and shown once.
    let mut seen = BTreeSet::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(&line?) else { continue };
        if let Some((package_id, rendered)) = lint_of(&msg) {
            let crate_name = members
                .iter()
                .find(|m| m.id == package_id)
                .map_or(package_id.to_string(), |m| m.name.clone());
            if seen.insert((crate_name, rendered.to_string())) {
                print!("{rendered}");
            }
        }
    }
    let mut counts = BTreeMap::new();
    for (crate_name, _) in seen {
        *counts.entry(crate_name).or_insert(0) += 1;
    }
    let status = child.wait()?;
    if !status.success() && counts.is_empty() {
        bail!("`{}` failed ({status}) without a diagnostic", describe(&cmd));
    }
    // agent-ebpf builds for the BPF target only (agent/build.rs), so it is
    // linted only as far as the host build of perf-agent compiles it: not.
    let skipped: Vec<&str> = members.iter().filter(|m| !m.host).map(|m| m.name.as_str()).collect();
    if !skipped.is_empty() {
        println!("note: clippy does not cover {} (BPF target only)", skipped.join(", "));
    }
    Ok(counts)
}

/// A warning or error of a workspace crate in cargo's JSON output: its
/// package id and rendered text (summaries like "3 warnings emitted" left out).
fn lint_of(msg: &Value) -> Option<(&str, &str)> {
    if msg["reason"] != "compiler-message" {
        return None;
    }
    let m = &msg["message"];
    let level = m["level"].as_str()?;
    if !matches!(level, "warning" | "error") || m["spans"].as_array()?.is_empty() {
        return None;
    }
    Some((msg["package_id"].as_str()?, m["rendered"].as_str()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lints_are_messages_with_a_place() {
        let span = json!([{ "file_name": "src/a.rs" }]);
        let warning = json!({ "reason": "compiler-message", "package_id": "p#x@0.1.0",
            "message": { "level": "warning", "spans": span, "rendered": "warning: w\n" } });
        assert_eq!(lint_of(&warning), Some(("p#x@0.1.0", "warning: w\n")));
        let summary = json!({ "reason": "compiler-message", "package_id": "p",
            "message": { "level": "warning", "spans": [], "rendered": "2 warnings emitted" } });
        assert_eq!(lint_of(&summary), None);
        let note = json!({ "reason": "compiler-message", "package_id": "p",
            "message": { "level": "note", "spans": span, "rendered": "n" } });
        assert_eq!(lint_of(&note), None);
        assert_eq!(lint_of(&json!({ "reason": "build-finished" })), None);
    }
}

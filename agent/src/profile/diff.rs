//! `perf-agent diff BASE NEW --out DIR`: two profiles compared. BASE and
//! NEW are two profile directories (every `<phase>.<kind>.folded` or
//! `.pb.gz` present in both is compared), or two files. For each pair: a
//! differential flame graph (`<stem>.diff.svg`: NEW's stacks, coloured by
//! how their share changed, BASE scaled to NEW's total) and a table of the
//! functions whose self share grew or shrank most, or for off-CPU
//! profiles the blocking sites (`<stem>.diff.txt`, also printed).

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use super::{
    output::{self, Folded},
    pprof,
};

/// Rows of each table.
const ROWS: usize = 10;

/// A function's self share in both profiles, percent.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareChange {
    pub name: String,
    pub base_percent: f64,
    pub new_percent: f64,
}

impl ShareChange {
    pub fn delta(&self) -> f64 {
        self.new_percent - self.base_percent
    }
}

/// Reads a profile file: folded text, or a pprof (`.pb.gz`, first value).
pub fn read_profile(path: &Path) -> anyhow::Result<Folded> {
    let name = path.to_string_lossy();
    if name.ends_with(".pb.gz") {
        let data = std::fs::read(path).with_context(|| format!("reading {name}"))?;
        return pprof::decode_folded(&data)
            .with_context(|| format!("{name} is not a pprof profile"));
    }
    if !name.ends_with(".folded") {
        bail!("{name}: give a profile directory, a .folded file or a .pb.gz file");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    let mut folded = Folded::new();
    for (i, line) in text.lines().enumerate() {
        let (stack, n) = line
            .rsplit_once(' ')
            .and_then(|(s, n)| Some((s, n.parse::<u64>().ok()?)))
            .with_context(|| format!("{name}:{}: not `frame;...;frame COUNT`", i + 1))?;
        *folded.entry(stack.to_string()).or_default() += n;
    }
    Ok(folded)
}

/// The pairs to compare: (output stem, base file, new file).
fn pairs(base: &Path, new: &Path) -> anyhow::Result<Vec<(String, PathBuf, PathBuf)>> {
    for p in [base, new] {
        if !p.exists() {
            bail!(
                "{}: no such file or directory; give two profile directories (--profile-dir) or two .folded/.pb.gz files",
                p.display()
            );
        }
    }
    match (base.is_dir(), new.is_dir()) {
        (true, true) => {
            let stems = |dir: &Path| -> anyhow::Result<BTreeSet<String>> {
                let mut set = BTreeSet::new();
                for e in
                    std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?
                {
                    let name = e?.file_name().to_string_lossy().into_owned();
                    if let Some(stem) = name.strip_suffix(".folded") {
                        set.insert(stem.to_string());
                    }
                }
                Ok(set)
            };
            let common: Vec<String> = stems(base)?.intersection(&stems(new)?).cloned().collect();
            if common.is_empty() {
                bail!(
                    "{} and {} have no profile (<phase>.cpu.folded) in common",
                    base.display(),
                    new.display()
                );
            }
            Ok(common
                .into_iter()
                .map(|s| {
                    let f = format!("{s}.folded");
                    (s, base.join(&f), new.join(&f))
                })
                .collect())
        }
        (false, false) => {
            let name = new.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
            let stem =
                name.trim_end_matches(".gz").trim_end_matches(".pb").trim_end_matches(".folded");
            Ok(vec![(stem.to_string(), base.to_path_buf(), new.to_path_buf())])
        }
        _ => bail!(
            "{} and {}: give two directories or two files, not one of each",
            base.display(),
            new.display()
        ),
    }
}

/// What a table compares: on-CPU, functions' self shares; off-CPU, the
/// blocking sites' shares of the time blocked (every off-CPU stack's leaf
/// is the scheduler's `__schedule`, whose self share is always 100 %).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compared {
    SelfShares,
    BlockingSites,
}

impl Compared {
    /// By the profile's stem: `<phase>.offcpu` (or a file named so) is
    /// off-CPU.
    fn of(stem: &str) -> Compared {
        if stem.ends_with(".offcpu") { Compared::BlockingSites } else { Compared::SelfShares }
    }

    fn heading(self) -> &'static str {
        match self {
            Compared::SelfShares => "functions by change of self share (points)",
            Compared::BlockingSites => {
                "blocking sites (the call that blocked ← its callers) by change of share of the \
                 time blocked (points)"
            }
        }
    }
}

/// Shares compared, largest growth first.
pub fn share_changes(base: &Folded, new: &Folded, compared: Compared) -> Vec<ShareChange> {
    let shares = |f: &Folded| -> HashMap<String, f64> {
        match compared {
            Compared::SelfShares => {
                output::top_functions(f).into_iter().map(|s| (s.name, s.self_percent)).collect()
            }
            Compared::BlockingSites => output::blocking_sites(f, super::BLOCKING_SITE_CALLERS)
                .into_iter()
                .map(|b| (b.site, b.percent))
                .collect(),
        }
    };
    let (b, n) = (shares(base), shares(new));
    let names: BTreeSet<&String> = b.keys().chain(n.keys()).collect();
    let mut out: Vec<ShareChange> = names
        .into_iter()
        .map(|name| ShareChange {
            name: name.clone(),
            base_percent: b.get(name).copied().unwrap_or(0.0),
            new_percent: n.get(name).copied().unwrap_or(0.0),
        })
        .filter(|c| c.base_percent > 0.0 || c.new_percent > 0.0)
        .collect();
    out.sort_by(|x, y| y.delta().total_cmp(&x.delta()).then_with(|| x.name.cmp(&y.name)));
    out
}

/// The table of one pair.
fn table(stem: &str, compared: Compared, changes: &[ShareChange]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{stem}: {}", compared.heading());
    let mut section = |title: &str, rows: &mut dyn Iterator<Item = &ShareChange>| {
        let _ = writeln!(out, "  {title}:");
        let _ = writeln!(out, "    {:>7} {:>7} {:>7}  function", "base %", "new %", "change");
        for c in rows.take(ROWS) {
            let _ = writeln!(
                out,
                "    {:>7.1} {:>7.1} {:>+7.1}  {}",
                c.base_percent,
                c.new_percent,
                c.delta(),
                c.name
            );
        }
    };
    // Changes that print as 0.0 are left out.
    section("grew", &mut changes.iter().filter(|c| c.delta() >= 0.05));
    section("shrank", &mut changes.iter().rev().filter(|c| c.delta() <= -0.05));
    out
}

/// Compares BASE and NEW, writes `<stem>.diff.svg` and `.diff.txt` into
/// `out`; returns the tables.
pub fn diff(base: &Path, new: &Path, out: &Path) -> anyhow::Result<String> {
    let pairs = pairs(base, new)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create it", out.display()))?;
    let mut report = String::new();
    for (stem, b, n) in pairs {
        let (before, after) = (read_profile(&b)?, read_profile(&n)?);
        let mut two_column = Vec::new();
        inferno::differential::from_readers(
            inferno::differential::Options { normalize: true, strip_hex: false },
            output::folded_text(&before).as_bytes(),
            output::folded_text(&after).as_bytes(),
            &mut two_column,
        )
        .context("comparing stacks")?;
        let text = String::from_utf8_lossy(&two_column);
        let title = format!("perf-agent diff: {stem} ({} → {})", b.display(), n.display());
        let svg = output::flame_graph(&text, &title)?;
        let path = out.join(format!("{stem}.diff.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        let compared = Compared::of(&stem);
        let t = table(&stem, compared, &share_changes(&before, &after, compared));
        let path = out.join(format!("{stem}.diff.txt"));
        std::fs::write(&path, &t).with_context(|| format!("writing {}", path.display()))?;
        report.push_str(&t);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(lines: &[(&str, u64)]) -> Folded {
        lines.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    }

    #[test]
    fn the_function_that_doubled_tops_the_growth_table() {
        let base = folded(&[("main;a", 20), ("main;b", 20), ("main;c", 20)]);
        let new = folded(&[("main;a", 20), ("main;b", 20), ("main;c", 40)]);
        let c = share_changes(&base, &new, Compared::of("run.cpu"));
        assert_eq!(c[0].name, "c");
        assert!((c[0].delta() - (50.0 - 100.0 / 3.0)).abs() < 1e-9);
        assert!(c.last().unwrap().delta() < 0.0);
        let t = table("run.cpu", Compared::SelfShares, &c);
        let grew = t.lines().nth(3).unwrap();
        assert!(grew.ends_with("  c"), "{t}");
    }

    #[test]
    fn off_cpu_profiles_compare_blocking_sites() {
        let base = folded(&[
            ("main;serve;read;do_syscall_64_[k];__schedule_[k]", 60),
            ("main;flush;fsync;do_syscall_64_[k];__schedule_[k]", 40),
        ]);
        let new = folded(&[
            ("main;serve;read;do_syscall_64_[k];__schedule_[k]", 40),
            ("main;flush;fsync;do_syscall_64_[k];__schedule_[k]", 60),
        ]);
        let compared = Compared::of("steady.offcpu");
        assert_eq!(compared, Compared::BlockingSites);
        let c = share_changes(&base, &new, compared);
        assert_eq!(c[0].name, "fsync ← flush ← main");
        assert!((c[0].delta() - 20.0).abs() < 1e-9);
        assert_eq!(c[1].name, "read ← serve ← main");
        // Self shares would show the scheduler at 100 % in both.
        let by_self = share_changes(&base, &new, Compared::SelfShares);
        assert!(by_self.iter().all(|c| c.delta() == 0.0), "{by_self:?}");
        assert!(table("steady.offcpu", compared, &c).contains("blocking sites"));
    }

    #[test]
    fn inputs_are_checked() {
        let dir = std::env::temp_dir().join(format!("perf-agent-diff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = diff(&dir.join("nope"), &dir, &dir).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        let f = dir.join("x.folded");
        std::fs::write(&f, "main;a 3\nbroken\n").unwrap();
        let e = read_profile(&f).unwrap_err().to_string();
        assert!(e.contains(":2: not"), "{e}");
        let e = diff(&f, &dir, &dir).unwrap_err().to_string();
        assert!(e.contains("not one of each"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

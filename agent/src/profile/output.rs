//! Profile files: `<phase>.cpu.folded` (one `frame;frame;...;leaf COUNT`
//! line per distinct stack, outermost frame first), `<phase>.cpu.svg`
//! (inferno's interactive flame graph), and the top functions.

use std::{collections::HashMap, fmt::Write as _, io::Write as _, path::Path};

use anyhow::Context as _;

/// Folded stacks: line (without the count) → samples.
pub type Folded = HashMap<String, u64>;

/// A phase name made safe for a file name, reversibly: bytes other than
/// ASCII letters, digits, `-`, `_` and `.` become `%XX` (so `main/steady`
/// is `main%2Fsteady`), and a name starting with `.` gets its first `.`
/// encoded (no hidden or `..` files).
pub fn file_safe(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.is_empty() { "%00".into() } else { out }
}

/// The folded text, lines sorted (deterministic output).
pub fn folded_text(folded: &Folded) -> String {
    let mut lines: Vec<(&String, &u64)> = folded.iter().collect();
    lines.sort();
    let mut out = String::new();
    for (stack, n) in lines {
        let _ = writeln!(out, "{stack} {n}");
    }
    out
}

/// Writes `<dir>/<file_safe(phase)>.<kind>.folded` and `.svg`.
pub fn write_phase(dir: &Path, phase: &str, kind: &str, folded: &Folded) -> anyhow::Result<()> {
    let stem = format!("{}.{kind}", file_safe(phase));
    let text = folded_text(folded);
    let path = dir.join(format!("{stem}.folded"));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join(format!("{stem}.svg"));
    let svg = flame_graph(&text, &format!("perf-agent: {phase} ({kind})"))?;
    std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))
}

/// An interactive SVG flame graph of folded text.
pub fn flame_graph(folded: &str, title: &str) -> anyhow::Result<Vec<u8>> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "samples".into();
    let mut svg = Vec::new();
    if folded.is_empty() {
        // inferno refuses an empty input; an empty profile is still a file.
        writeln!(
            svg,
            "<?xml version=\"1.0\" standalone=\"no\"?><svg xmlns=\"http://www.w3.org/2000/svg\" \
             width=\"600\" height=\"60\"><text x=\"10\" y=\"30\">{title}: no samples</text></svg>"
        )?;
        return Ok(svg);
    }
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut svg)
        .context("drawing the flame graph")?;
    Ok(svg)
}

/// A function's share of the samples.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionShare {
    pub name: String,
    /// Samples with it as the leaf, % of all.
    pub self_percent: f64,
    /// Samples with it anywhere in the stack, % of all.
    pub total_percent: f64,
}

/// Functions by self share, then total share, highest first.
pub fn top_functions(folded: &Folded) -> Vec<FunctionShare> {
    let total: u64 = folded.values().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut own: HashMap<&str, (u64, u64)> = HashMap::new();
    for (stack, &n) in folded {
        let frames: Vec<&str> = stack.split(';').collect();
        if let Some(leaf) = frames.last() {
            own.entry(leaf).or_default().0 += n;
        }
        let mut seen: Vec<&str> = frames.clone();
        seen.sort_unstable();
        seen.dedup(); // recursion counts once per stack
        for f in seen {
            own.entry(f).or_default().1 += n;
        }
    }
    let pct = |n: u64| n as f64 * 100.0 / total as f64;
    let mut out: Vec<FunctionShare> = own
        .into_iter()
        .filter(|(name, _)| *name != "[truncated]")
        .map(|(name, (s, t))| FunctionShare {
            name: name.to_string(),
            self_percent: pct(s),
            total_percent: pct(t),
        })
        .collect();
    out.sort_by(|a, b| {
        (b.self_percent, b.total_percent)
            .partial_cmp(&(a.self_percent, a.total_percent))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// Where blocked time was spent from user code's side: an off-CPU
/// stack's innermost user-space frame (the call that entered the kernel and
/// blocked) with up to `callers` of its callers, and its share of the time.
/// The kernel's part, always the scheduler's path at its leaf, is left
/// out: by "self" every off-CPU stack ends in `__schedule`, and by "total"
/// the roots (`_start`, `main`) top every list; the flame graph keeps all.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockingSite {
    /// `innermost ← caller ← caller's caller`.
    pub site: String,
    /// % of the time blocked.
    pub percent: f64,
}

/// Off-CPU time by [`BlockingSite`], highest first. A stack with no user
/// frame (a kernel-only stack) is `[kernel]`.
pub fn blocking_sites(folded: &Folded, callers: usize) -> Vec<BlockingSite> {
    let total: u64 = folded.values().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut by_site: HashMap<String, u64> = HashMap::new();
    for (stack, &ns) in folded {
        let mut user: Vec<&str> = stack.split(';').filter(|f| !f.ends_with("_[k]")).collect();
        // A function inlined into one of its own name (glibc's `__libc_recv`
        // in `__libc_recv`, from its DWARF), or a function calling itself,
        // is one caller, not two.
        user.dedup();
        let site = if user.is_empty() {
            "[kernel]".to_string()
        } else {
            user.iter().rev().take(callers + 1).copied().collect::<Vec<_>>().join(" ← ")
        };
        *by_site.entry(site).or_default() += ns;
    }
    let mut out: Vec<BlockingSite> = by_site
        .into_iter()
        .map(|(site, ns)| BlockingSite { site, percent: ns as f64 * 100.0 / total as f64 })
        .collect();
    out.sort_by(|a, b| b.percent.total_cmp(&a.percent).then_with(|| a.site.cmp(&b.site)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe_and_reversible() {
        assert_eq!(file_safe("main/steady"), "main%2Fsteady");
        assert_eq!(file_safe("steady-2"), "steady-2");
        assert_eq!(file_safe("../x"), "%2E.%2Fx");
        assert_eq!(file_safe("a b%"), "a%20b%25");
        assert_eq!(file_safe(""), "%00");
    }

    #[test]
    fn blocking_sites_are_the_innermost_user_frames_with_their_callers() {
        let folded: Folded = [
            ("_start;main;serve;wait_for_work;syscall;do_syscall_64_[k];__schedule_[k]", 70),
            ("_start;main;flush;write_all;do_syscall_64_[k];__schedule_[k]", 20),
            ("_start;main;serve;wait_for_work;syscall;entry_[k];__schedule_[k]", 5),
            ("kthread_[k];__schedule_[k]", 4),
            ("main;recv_loop;__libc_recv;__libc_recv;do_syscall_64_[k];__schedule_[k]", 1),
        ]
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
        let sites = blocking_sites(&folded, 2);
        let got: Vec<(&str, f64)> = sites.iter().map(|b| (b.site.as_str(), b.percent)).collect();
        assert_eq!(
            got,
            [
                // Two kernel paths, one user site: summed.
                ("syscall ← wait_for_work ← serve", 75.0),
                ("write_all ← flush ← main", 20.0),
                ("[kernel]", 4.0),
                ("__libc_recv ← recv_loop ← main", 1.0),
            ]
        );
        assert_eq!(blocking_sites(&folded, 0)[1].site, "write_all");
        assert!(blocking_sites(&Folded::new(), 2).is_empty());
    }

    #[test]
    fn top_functions_split_self_and_total() {
        let folded: Folded = [
            ("main;work;hot".to_string(), 3),
            ("main;work;cold".to_string(), 1),
            ("main;rec;rec".to_string(), 4),
        ]
        .into_iter()
        .collect();
        let top = top_functions(&folded);
        assert_eq!(top[0].name, "rec");
        assert_eq!((top[0].self_percent, top[0].total_percent), (50.0, 50.0));
        let hot = top.iter().find(|f| f.name == "hot").unwrap();
        assert_eq!((hot.self_percent, hot.total_percent), (37.5, 37.5));
        let main = top.iter().find(|f| f.name == "main").unwrap();
        assert_eq!((main.self_percent, main.total_percent), (0.0, 100.0));
    }

    #[test]
    fn flame_graph_is_svg_naming_the_functions() {
        let svg = flame_graph("main;work;hot 3\nmain;work;cold 1\n", "t").unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<svg") && svg.contains("hot") && svg.contains("cold"));
        let folded: Folded = HashMap::new();
        assert_eq!(folded_text(&folded), "");
        assert!(String::from_utf8(flame_graph("", "t").unwrap()).unwrap().contains("</svg>"));
    }
}

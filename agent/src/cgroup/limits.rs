//! `--cpus` and `--memory` as `docker run` reads them, and the cgroup files
//! each layout gets for them (pure).

use super::Version;

/// The CFS period Docker uses, µs.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Docker's smallest `--memory`.
pub const MIN_MEMORY: u64 = 6 << 20;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// CPUs' worth of time per period (0.5 = half a core).
    pub cpus: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    /// The arguments as given, for messages.
    pub cpus_arg: Option<String>,
    pub memory_arg: Option<String>,
}

impl Limits {
    pub fn parse(cpus: Option<&str>, memory: Option<&str>) -> Result<Limits, String> {
        Ok(Limits {
            cpus: cpus.map(parse_cpus).transpose()?,
            memory: memory.map(parse_memory).transpose()?,
            cpus_arg: cpus.map(str::to_string),
            memory_arg: memory.map(str::to_string),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.cpus.is_none() && self.memory.is_none()
    }

    /// "--cpus 0.5 --memory 128m".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.cpus_arg {
            parts.push(format!("--cpus {c}"));
        }
        if let Some(m) = &self.memory_arg {
            parts.push(format!("--memory {m}"));
        }
        parts.join(" ")
    }
}

/// A positive number of CPUs, at most the machine's, at least one
/// millisecond per period (the kernel's smallest quota).
pub fn parse_cpus(s: &str) -> Result<f64, String> {
    let cpus: f64 =
        s.trim().parse().map_err(|_| format!("--cpus {s}: not a number of CPUs (e.g. 0.5)"))?;
    if !cpus.is_finite() || cpus < 0.01 {
        return Err(format!(
            "--cpus {s}: must be at least 0.01 (one millisecond per 100 ms period)"
        ));
    }
    // SAFETY: sysconf has no memory preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as f64;
    if cpus > online {
        return Err(format!("--cpus {s}: this machine has {online} CPUs"));
    }
    Ok(cpus)
}

/// Docker's notation: a whole number with an optional unit `b`, `k`, `m`,
/// `g` (powers of 1024, either case): `128m` = 134217728.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('b') => (&t[..t.len() - 1], 1),
        Some('k') => (&t[..t.len() - 1], 1 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!("--memory {s}: expected a size such as 128m, 1g or 67108864 (bytes)")
    })?;
    let bytes = n.checked_mul(mult).ok_or_else(|| format!("--memory {s}: too large"))?;
    if bytes < MIN_MEMORY {
        return Err(format!("--memory {s}: the smallest limit is 6m (as for docker run)"));
    }
    Ok(bytes)
}

/// The quota in µs per [`CPU_PERIOD_US`].
pub fn cpu_quota_us(cpus: f64) -> u64 {
    (cpus * CPU_PERIOD_US as f64).round() as u64
}

/// (file, value) to write, in order, for `--cpus`.
pub fn cpu_writes(version: Version, cpus: f64) -> Vec<(&'static str, String)> {
    let quota = cpu_quota_us(cpus);
    match version {
        Version::V1 => vec![
            ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
            ("cpu.cfs_quota_us", quota.to_string()),
        ],
        Version::V2 => vec![("cpu.max", format!("{quota} {CPU_PERIOD_US}"))],
    }
}

/// (file, value, skip if the file is absent) for `--memory`: the limit,
/// and no swap (v1's memsw is memory + swap, so equal to the limit; it must
/// come after the limit, which it may not undercut).
pub fn memory_writes(version: Version, bytes: u64) -> Vec<(&'static str, String, bool)> {
    match version {
        Version::V1 => vec![
            ("memory.limit_in_bytes", bytes.to_string(), false),
            ("memory.memsw.limit_in_bytes", bytes.to_string(), true),
        ],
        Version::V2 => {
            vec![("memory.max", bytes.to_string(), false), ("memory.swap.max", "0".into(), true)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_sidecar_limits_on_both_layouts() {
        let l = Limits::parse(Some("0.5"), Some("128m")).unwrap();
        assert_eq!(l.memory, Some(134_217_728));
        assert_eq!(l.describe(), "--cpus 0.5 --memory 128m");
        assert_eq!(cpu_writes(Version::V2, 0.5), vec![("cpu.max", "50000 100000".to_string())]);
        assert_eq!(
            cpu_writes(Version::V1, 0.5),
            vec![("cpu.cfs_period_us", "100000".into()), ("cpu.cfs_quota_us", "50000".into())]
        );
        assert_eq!(
            memory_writes(Version::V2, 134_217_728),
            vec![("memory.max", "134217728".into(), false), ("memory.swap.max", "0".into(), true)]
        );
        let v1 = memory_writes(Version::V1, 134_217_728);
        assert_eq!(v1[0].0, "memory.limit_in_bytes", "the limit before memsw");
        assert_eq!(v1[1], ("memory.memsw.limit_in_bytes", "134217728".into(), true));
    }

    #[test]
    fn sizes_and_cpus_as_docker_reads_them() {
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("64M").unwrap(), 64 << 20);
        assert_eq!(parse_memory("7340032").unwrap(), 7 << 20);
        assert_eq!(parse_memory("8192k").unwrap(), 8 << 20);
        for (bad, needle) in [("5m", "smallest"), ("1.5g", "expected a size"), ("lots", "expected")]
        {
            assert!(parse_memory(bad).unwrap_err().contains(needle), "{bad}");
        }
        assert_eq!(parse_cpus("0.25").unwrap(), 0.25);
        assert_eq!(cpu_quota_us(1.5), 150_000);
        for (bad, needle) in
            [("0", "at least 0.01"), ("-1", "at least"), ("x", "not a number"), ("9999", "CPUs")]
        {
            assert!(parse_cpus(bad).unwrap_err().contains(needle), "{bad}");
        }
        assert!(Limits::parse(None, None).unwrap().is_empty());
    }
}

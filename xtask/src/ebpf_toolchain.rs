//! The nightly toolchain that builds the eBPF programs, pinned by date in
//! `ebpf-toolchain.toml` at the workspace root, the one place the xtask,
//! `agent/build.rs` (which includes this file) and the CI workflow read it.
//!
//! A floating `nightly` breaks the build the day it moves to an LLVM that
//! bpf-linker's `llvm-NN` feature does not match; the pin moves only when
//! someone moves it. A plain `nightly` toolchain already installed counts as
//! the pin when rustup's manifest says it is that date's, so a machine that
//! has it under that name downloads nothing.
//!
//! Standard library only: `agent/build.rs` compiles it as a module.

use std::{
    path::Path,
    process::{Command, Output},
};

/// The file's name at the workspace root.
pub const PIN_FILE: &str = "ebpf-toolchain.toml";

/// What `ebpf-toolchain.toml` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// A dated nightly, `nightly-YYYY-MM-DD`.
    pub channel: String,
    /// The LLVM major version of that nightly's rustc, bpf-linker's feature.
    pub llvm: u32,
}

impl Pin {
    /// Reads `<root>/ebpf-toolchain.toml`.
    pub fn read(root: &Path) -> Result<Pin, String> {
        let path = root.join(PIN_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Pin::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// `key = value` lines (a TOML subset: strings and integers, `#`
    /// comments), so the shell can read the same file with `sed`.
    pub fn parse(text: &str) -> Result<Pin, String> {
        let mut channel = None;
        let mut llvm = None;
        for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()) {
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("`{line}` is not `key = value`"));
            };
            let value = value.trim();
            match key.trim() {
                "channel" => {
                    let v = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    channel = Some(v.ok_or("channel must be a quoted string")?.to_string());
                }
                "llvm" => {
                    llvm =
                        Some(value.parse().map_err(|_| format!("llvm = {value}: not a number"))?);
                }
                other => return Err(format!("unknown key `{other}` (expected channel, llvm)")),
            }
        }
        let channel = channel.ok_or("no `channel = \"nightly-YYYY-MM-DD\"`")?;
        let pin = Pin { channel, llvm: llvm.ok_or("no `llvm = NN` (the nightly's LLVM major)")? };
        if pin.date().is_none() {
            return Err(format!(
                "channel = \"{}\": pin a dated nightly, `nightly-YYYY-MM-DD`",
                pin.channel
            ));
        }
        Ok(pin)
    }

    /// `YYYY-MM-DD` of `nightly-YYYY-MM-DD`.
    pub fn date(&self) -> Option<&str> {
        let date = self.channel.strip_prefix("nightly-")?;
        let ok = date.len() == 10
            && date
                .char_indices()
                .all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() });
        ok.then_some(date)
    }

    /// The installed rustup toolchain that is this pin: the pinned name, or a
    /// plain `nightly` whose manifest has the pinned date. `None` when
    /// neither is installed (never downloads anything).
    pub fn installed_toolchain(&self) -> Option<String> {
        if manifest_date(&self.channel).is_some() {
            return Some(self.channel.clone());
        }
        let date = manifest_date("nightly")?;
        (Some(date.as_str()) == self.date()).then(|| "nightly".to_string())
    }

    /// Like [`Pin::installed_toolchain`], or an error that names the pin
    /// and how to install it.
    pub fn require_installed(&self) -> Result<String, String> {
        self.installed_toolchain().ok_or_else(|| {
            let nightly = manifest_date("nightly")
                .map(|d| format!(" (the installed `nightly` is {d})"))
                .unwrap_or_default();
            format!(
                "the eBPF toolchain pinned in {PIN_FILE}, {}, is not installed{nightly}: run \
                 `cargo xtask setup`, or `rustup toolchain install {} --profile minimal \
                 --component rust-src`",
                self.channel, self.channel
            )
        })
    }
}

/// `rustup run <toolchain> …` that never installs a missing toolchain.
pub fn rustup_run(toolchain: &str, program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, program]).env("RUSTUP_AUTO_INSTALL", "0");
    cmd
}

fn success(out: std::io::Result<Output>) -> Option<String> {
    out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The `date` of rustup's channel manifest in the toolchain's sysroot (the
/// nightly's publication date); `None` when it is not installed.
pub fn manifest_date(toolchain: &str) -> Option<String> {
    let sysroot = success(rustup_run(toolchain, "rustc").args(["--print", "sysroot"]).output())?;
    let manifest = Path::new(sysroot.trim()).join("lib/rustlib/multirust-channel-manifest.toml");
    let text = std::fs::read_to_string(manifest).ok()?;
    text.lines().find_map(|l| {
        let v = l.strip_prefix("date")?.trim_start().strip_prefix('=')?.trim();
        Some(v.trim_matches('"').to_string())
    })
}

/// The LLVM major version of the toolchain's rustc (`rustc -vV`).
pub fn llvm_major(toolchain: &str) -> Option<u32> {
    let out = success(rustup_run(toolchain, "rustc").arg("-vV").output())?;
    let version = out.lines().find_map(|l| l.strip_prefix("LLVM version: "))?;
    version.split('.').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_pin_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let pin = Pin::read(root).unwrap();
        assert!(pin.date().is_some(), "{pin:?}");
        assert!(pin.llvm >= 19, "{pin:?}");
    }

    #[test]
    fn parse_accepts_the_toml_subset_and_names_mistakes() {
        let pin = Pin::parse("# c\nchannel = \"nightly-2026-05-20\"  # why\nllvm = 22\n").unwrap();
        assert_eq!(pin, Pin { channel: "nightly-2026-05-20".into(), llvm: 22 });
        assert_eq!(pin.date(), Some("2026-05-20"));
        for (text, needle) in [
            ("channel = \"nightly\"\nllvm = 22", "pin a dated nightly"),
            ("channel = \"nightly-2026-5-20\"\nllvm = 22", "pin a dated nightly"),
            ("channel = nightly-2026-05-20\nllvm = 22", "quoted string"),
            ("channel = \"nightly-2026-05-20\"", "no `llvm"),
            ("llvm = 22", "no `channel"),
            ("channel = \"nightly-2026-05-20\"\nllvm = twenty", "not a number"),
            ("toolchain = \"x\"", "unknown key `toolchain`"),
            ("just words", "not `key = value`"),
        ] {
            let e = Pin::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}

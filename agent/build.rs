//! Builds `agent-ebpf` for `bpfel-unknown-none` with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs.
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

use which::which;

/// Rebuild the eBPF object when bpf-linker changes (it is part of our toolchain).
fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found: run `cargo xtask setup` (builds it against nightly's LLVM)");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
    // The linker wrapper that makes the object BPF ISA v3 (.cargo/config.toml).
    println!("cargo:rerun-if-changed=bpf-linker-v3");
}

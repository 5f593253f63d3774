#![no_std]
// Exists so agent/build.rs can name this package as a build dependency; the
// programs themselves live in the `agent-ebpf` binary (src/main.rs).

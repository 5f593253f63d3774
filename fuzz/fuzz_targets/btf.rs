//! `/sys/kernel/btf/vmlinux`: the offset of `task_struct.se.sum_exec_runtime`
//! comes from it. Corrupt BTF must give an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perf_agent::btf::Btf;

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data.to_vec()) {
        let _ = btf.field_offset("task_struct", &["se", "sum_exec_runtime"]);
        let _ = btf.field_offset("a", &["b"]);
    }
});

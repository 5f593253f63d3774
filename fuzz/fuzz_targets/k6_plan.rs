//! `k6 inspect --execution-requirements` output (the plan of a `--k6`
//! script): any text gives a plan or an error, and the phases derived from a
//! plan (with or without observed scenario starts) never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perf_agent::k6::plan;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(scenarios) = plan::parse_plan(text) {
        let p = plan::phases(&scenarios, &|_| None);
        let _ = plan::steady_phase(&p);
        let p = plan::phases(&scenarios, &|name| Some(name.len() as u64 * 1_000_000_000));
        let _ = plan::steady_phase(&p);
    }
});

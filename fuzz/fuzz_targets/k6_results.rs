//! k6's `--out json` stream (`--k6-results FILE`, or the file of a `--k6`
//! run): any bytes must parse to counts, never panic. The windows and spans
//! computed from the parsed points must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perf_agent::k6::results::ClientResults;

fuzz_target!(|data: &[u8]| {
    let r = ClientResults::parse(data);
    let _ = r.window(i128::MIN, i128::MAX);
    let _ = r.window(0, 1_700_000_000_000_000_000);
    let _ = r.scenario_spans();
});

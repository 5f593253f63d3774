//! Tracepoint `format` files: field offsets come from them, so odd text must
//! give an error when a field is asked for, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perf_agent::tracefs;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let f = tracefs::parse_format(&text);
    for (name, size) in [("next_pid", 4), ("sk", 8), ("filename", 4), ("curr", 4)] {
        let _ = f.offset("fuzz:event", name, size);
    }
});

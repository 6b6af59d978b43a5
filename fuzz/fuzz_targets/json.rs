//! Fuzz target: the properties in `sidecar_init::props::check_json`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sidecar_init::props::check_json(data);
});

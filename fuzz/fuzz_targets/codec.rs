//! Arbitrary bytes as a y-websocket frame and as an awareness update: decoding never panics, and
//! whatever decodes round-trips through encode + decode (`roomd_sync::fuzzing::check_codec`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomd_sync::fuzzing::check_codec(data));

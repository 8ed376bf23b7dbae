//! Arbitrary bytes as what a WebSocket client sends: the frame decoder never panics, never
//! passes a message over its limit, and decodes the same however the bytes are split
//! (`roomd_sync::fuzzing::check_frames`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomd_sync::fuzzing::check_frames(data));

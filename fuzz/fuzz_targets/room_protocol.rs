//! Arbitrary bytes as room-protocol packets: the assembler never panics or holds more than its
//! limits, and messages, payloads and content round-trip
//! (`roomd_sync::fuzzing::check_room_protocol`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomd_sync::fuzzing::check_room_protocol(data));

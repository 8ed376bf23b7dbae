//! Arbitrary bytes as an update applied to a document under small limits, then as a script of
//! frames, closes, reopens and restarts driving a `YjsDocSession` from two connections: nothing
//! panics and every snapshot loads into a fresh document (`roomd_sync::fuzzing::check_apply`).
//!
//! libFuzzer's panic hook aborts even on panics that roomd_crdt catches around yrs, so any panic
//! inside yrs counts as a crash here, as it should: roomd validates updates so that yrs never
//! panics on them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomd_sync::fuzzing::check_apply(data));

//! cargo-fuzz target: the harness in harness/decode_augment.rs, which the workspace's regression test
//! (mura-train/tests/fuzz_regressions.rs) shares.
#![no_main]

#[path = "../harness/decode_augment.rs"]
mod harness;
#[path = "../harness/scratch.rs"]
mod scratch;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| harness::run(bytes, scratch::dir()));

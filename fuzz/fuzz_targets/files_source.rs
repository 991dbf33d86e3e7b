//! A manifest file as the agent's file source reads it, translated for one node.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    podswitch_agent::fuzzing::files_source(data);
});

//! Arbitrary frames (with arbitrary vnet headers) from pod taps and the host port, and VXLAN datagrams from the underlay, through the whole pipeline.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = podswitch_switch::fuzzing::pipeline_frames(data);
});

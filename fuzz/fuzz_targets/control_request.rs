//! One control API request line: decode, round trip, the validation applied before a change.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    podswitch_switch::fuzzing::control_request(data);
});

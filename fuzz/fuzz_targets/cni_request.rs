//! One CNI invocation: the CNI_* environment and the network configuration on stdin.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    podswitch_cni::fuzzing::cni_request(data);
});

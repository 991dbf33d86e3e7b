//! A lab file and Kubernetes manifests as `podswitch lab` reads them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    podswitch_lab::fuzzing::lab_manifest(data);
});

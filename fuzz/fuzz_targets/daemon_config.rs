//! The switch daemon's TOML configuration, loaded as `podswitch switch run --config` loads it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    podswitch_switch::fuzzing::daemon_config(data, |s| toml::from_str(s));
});

//! Replays every fuzz target's checked-in corpus (`fuzz/corpus/<target>/`)
//! on stable Rust, so the seeds and every reproducer a fuzz run once found
//! are a regression suite of `cargo test`. The targets' bodies are the
//! `fuzzing` modules of the switch and agent crates; `fuzz/fuzz_targets/`
//! only wraps them for libFuzzer (docs/fuzzing.md).
//!
//! `PODSWITCH_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus` (re)writes
//! the generated seeds (frames, control requests, CNI requests) first.

use std::path::{Path, PathBuf};

use podswitch_agent::fuzzing as agent;
use podswitch_cni::fuzzing as cni;
use podswitch_lab::fuzzing as lab;
use podswitch_switch::fuzzing as switch;

type Body = fn(&[u8]);
/// Generated seeds: (name, input).
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn daemon_config(data: &[u8]) {
    switch::daemon_config(data, |s| toml::from_str(s));
}

fn pipeline(data: &[u8]) {
    let _ = switch::pipeline_frames(data);
}

/// Every target, its body, and its generated seeds.
fn targets() -> Vec<(&'static str, Body, Seeds)> {
    vec![
        ("pipeline", pipeline, switch::pipeline_seeds()),
        (
            "control_request",
            switch::control_request,
            switch::control_seeds(),
        ),
        ("daemon_config", daemon_config, Vec::new()),
        ("lab_manifest", lab::lab_manifest, Vec::new()),
        ("files_source", agent::files_source, Vec::new()),
        ("cni_request", cni::cni_request, cni::cni_seeds()),
    ]
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_target_runs_its_corpus_clean() {
    let write = std::env::var("PODSWITCH_WRITE_FUZZ_SEEDS").as_deref() == Ok("1");
    for (target, body, seeds) in targets() {
        let dir = corpus_dir(target);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in &seeds {
                std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
            }
        }
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{} has no inputs", dir.display());
        for input in &inputs {
            let bytes = std::fs::read(input).unwrap();
            // A panic names the input that caused it.
            eprintln!("{target}: {}", input.display());
            body(&bytes);
        }
        // The generated seeds run too, written out or not.
        for (_, bytes) in &seeds {
            body(bytes);
        }
        eprintln!("{target}: {} corpus inputs clean", inputs.len());
    }
}

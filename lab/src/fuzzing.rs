//! The body of the `lab_manifest` fuzz target in `fuzz/fuzz_targets/`
//! (cargo-fuzz, libFuzzer), callable from stable Rust so the checked-in
//! corpus under `fuzz/corpus/lab_manifest/` runs in `cargo test`
//! (`tests/fuzz_corpus.rs`). It panics only when an invariant breaks:
//! outside input must give a clear error, never a panic. See
//! docs/fuzzing.md.
#![doc(hidden)]

use crate::{cluster, manifest};

/// The `lab_manifest` target: a lab file as `podswitch lab up -f` reads it
/// (a `kind: Lab` document, then Kubernetes manifests), and the same text
/// as plain manifests as `podswitch lab apply -f` reads them; what parses
/// is expanded into pods.
pub fn lab_manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match cluster::parse_lab(&text, "fuzz.yaml") {
        Ok(def) => expand(&def.objects),
        Err(e) => assert!(!format!("{e:#}").is_empty(), "an error without a message"),
    }
    match manifest::parse_manifests(&text, "fuzz.yaml") {
        Ok(objects) => expand(&objects),
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
}

fn expand(objects: &[manifest::Object]) {
    for o in objects {
        let _ = (o.kind(), o.name(), o.namespace());
    }
    match manifest::expand_pods(objects) {
        Ok(pods) => {
            for p in &pods {
                let _ = manifest::echo_ports(p);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_runs_clean() {
        lab_manifest(b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n");
    }
}

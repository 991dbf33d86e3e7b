//! Bodies of the agent's fuzz targets in `fuzz/fuzz_targets/` (cargo-fuzz,
//! libFuzzer), callable from stable Rust so the checked-in corpus under
//! `fuzz/corpus/<target>/` runs in `cargo test` (`tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes and panics only when an invariant
//! breaks: outside input must give a clear error, never a panic. See
//! docs/fuzzing.md.
#![doc(hidden)]

use std::path::PathBuf;
use std::sync::OnceLock;

use podswitch_switch::control::api::{ClusterMode, ServiceSettings};
use podswitch_switch::tables::services::{NodeView, ServiceTable};

use crate::source::files::ManifestCache;
use crate::translate::{self, TranslateConfig};

/// A private file the `files_source` target writes each input to (the
/// file source reads only files).
fn scratch_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("podswitch-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the fuzz scratch directory");
        dir.join("cluster.yaml")
    })
}

/// The `files_source` target: a manifest file as the agent's file source
/// reads it (`agent run --source files`), then translated for node-1. Bad
/// objects become problems, never a panic; and whatever translation emits
/// must be a service table the switch accepts, or one bad object would
/// hold back every other.
pub fn files_source(data: &[u8]) {
    let file = scratch_file();
    std::fs::write(file, data).expect("writing the fuzz scratch file");
    let mut cache = ManifestCache::default();
    cache.refresh(file);
    for p in cache.problems() {
        assert!(!p.message.is_empty(), "a problem without a message");
    }
    let (objects, _) = cache.objects();
    let config = TranslateConfig {
        node_name: "node-1".into(),
        settings: ServiceSettings::default(),
    };
    let t = translate::translate(&objects, &config);
    let node_ip = t.local_node.as_ref().and_then(|n| n.underlay_ipv4);
    let node = NodeView {
        name: "node-1",
        node_ip,
        node_port_ips: node_ip.as_slice(),
        gateway_ip: "10.244.1.1".parse().expect("valid"),
        mode: ClusterMode::Native,
        maglev_size: 251,
    };
    if let Err(e) = ServiceTable::build(t.services.values(), &t.settings, &node) {
        panic!("the switch refuses the translated services: {e}");
    }
    let sync = t.full_sync();
    serde_json::to_string(&sync.services).expect("a full sync serializes");
    let empty = translate::NodeTopology::empty(config.settings.clone());
    let _ = translate::diff(&empty, &t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_clean() {
        files_source(b"apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n");
    }
}

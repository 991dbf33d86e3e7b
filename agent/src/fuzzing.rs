//! Bodies of the agent's fuzz targets in `fuzz/fuzz_targets/` (cargo-fuzz,
//! libFuzzer), callable from stable Rust so the checked-in corpus under
//! `fuzz/corpus/<target>/` runs in `cargo test` (`tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes and panics only when an invariant
//! breaks: outside input must give a clear error, never a panic. See
//! docs/fuzzing.md.
#![doc(hidden)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use podswitch_switch::control::api::{ClusterMode, ServiceSettings};
use podswitch_switch::tables::services::{NodeView, ServiceTable};

use crate::cni::spec::{self, Command, Invocation, IpamConf};
use crate::lab::{cluster, manifest};
use crate::source::files::ManifestCache;
use crate::translate::{self, TranslateConfig};

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

/// The `cni_request` target: one CNI invocation, its environment and its
/// stdin, as the plugin reads them (`CNI_*` variables, then the network
/// configuration). Everything up to the first request to the switch or
/// the IPAM store runs; errors must serialize as CNI error replies.
///
/// Input: `KEY=VALUE` lines, a NUL byte, then stdin.
pub fn cni_request(data: &[u8]) {
    let (env_part, stdin) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let env_text = String::from_utf8_lossy(env_part);
    let env: BTreeMap<&str, &str> = env_text.lines().filter_map(|l| l.split_once('=')).collect();
    let version = spec::sniff_version(stdin).unwrap_or_else(|| spec::LATEST_VERSION.to_string());
    let reply = |e: &spec::CniError| {
        assert!(!e.msg.is_empty(), "a CNI error without a message");
        serde_json::to_string(&e.reply(&version)).expect("a CNI error serializes");
        let _ = e.to_json(&version);
    };
    let inv = match Invocation::from_env(|k| env.get(k).map(|v| (*v).to_string())) {
        Ok(inv) => inv,
        Err(e) => return reply(&e),
    };
    let _ = crate::cni::plugin::port_name(&inv);
    if inv.command == Command::Version {
        let _ = spec::version_info(&version);
        return;
    }
    let conf = match spec::parse_config(stdin) {
        Ok(conf) => conf,
        Err(e) => return reply(&e),
    };
    let _ = spec::version_info(&conf.cni_version_raw);
    if let Some(prev) = &conf.prev_result {
        let _ = prev.to_json(conf.cni_version, &conf.cni_version_raw);
    }
    if let IpamConf::Builtin(b) = &conf.ipam {
        if let Some(subnet) = b.subnet {
            if let Ok(range) =
                crate::cni::ipam::Range::new(subnet, b.range_start, b.range_end, None)
            {
                for ip in range.candidates(b.range_start).take(4) {
                    assert!(range.is_usable(ip), "candidate {ip} not usable in {range}");
                }
            }
        }
    }
}

/// Seed inputs for `cni_request`: ADD, DEL, CHECK and VERSION as a
/// container runtime sends them for `configs/cni/10-podswitch.conflist`.
pub fn cni_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let conf = |extra: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"podswitch","type":"podswitch-cni","switchSocket":"/run/podswitch/switch.sock","dataDir":"/var/lib/cni/podswitch"{extra}}}"#
        )
    };
    let env = |cmd: &str| {
        format!(
            "CNI_COMMAND={cmd}\nCNI_CONTAINERID=3f2a9c0d1e\nCNI_NETNS=/var/run/netns/cni-1234\nCNI_IFNAME=eth0\nCNI_PATH=/opt/cni/bin:/usr/lib/cni\nCNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=3f2a9c0d1e\n"
        )
    };
    let req = |env: String, stdin: String| {
        let mut v = env.into_bytes();
        v.push(0);
        v.extend_from_slice(stdin.as_bytes());
        v
    };
    let prev = r#","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"0a:58:0a:f4:01:05","sandbox":"/var/run/netns/cni-1234"}],"ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
    vec![
        ("add", req(env("ADD"), conf(""))),
        (
            "add-builtin-ipam",
            req(
                env("ADD"),
                conf(r#","mtu":1450,"ipam":{"type":"podswitch","subnet":"10.244.1.0/24","rangeStart":"10.244.1.10","rangeEnd":"10.244.1.20"}"#),
            ),
        ),
        (
            "add-host-local",
            req(
                env("ADD"),
                conf(r#","ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]}"#),
            ),
        ),
        ("del", req(env("DEL"), conf(prev))),
        ("check-0.4.0", {
            let c = conf(prev).replace("1.0.0", "0.4.0");
            req(env("CHECK"), c)
        }),
        (
            "version",
            req("CNI_COMMAND=VERSION\n".into(), r#"{"cniVersion":"1.1.0"}"#.into()),
        ),
        (
            "gc",
            req(
                "CNI_COMMAND=GC\nCNI_PATH=/opt/cni/bin\n".into(),
                conf(r#","cni.dev/valid-attachments":[{"containerID":"3f2a9c0d1e","ifname":"eth0"}]"#)
                    .replace("1.0.0", "1.1.0"),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_clean() {
        for (name, s) in cni_seeds() {
            eprintln!("cni seed {name}");
            cni_request(&s);
        }
        files_source(b"apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n");
        lab_manifest(b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n");
    }
}

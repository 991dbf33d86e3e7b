//! The body of the `cni_request` fuzz target in `fuzz/fuzz_targets/`
//! (cargo-fuzz, libFuzzer), callable from stable Rust so the checked-in
//! corpus under `fuzz/corpus/cni_request/` runs in `cargo test`
//! (`tests/fuzz_corpus.rs`). It panics only when an invariant breaks:
//! outside input must give a clear error, never a panic. See
//! docs/fuzzing.md.
#![doc(hidden)]

use std::collections::BTreeMap;

use crate::spec::{self, Command, Invocation, IpamConf};

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
    let _ = crate::plugin::port_name(&inv);
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
            if let Ok(range) = crate::ipam::Range::new(subnet, b.range_start, b.range_end, None) {
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
    }
}

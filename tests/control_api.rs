//! The switch's control API on a live switch: invalid requests are refused
//! with the field named and change nothing; patch and replace are all or
//! nothing.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

fn raw(socket: &str, line: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

#[test]
fn invalid_requests_name_the_field_and_change_nothing() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("api", None);
    let sock = lab.socket("node-1");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket must be root-only");
    let topo = |s: &str| raw(s, r#"{"v":1,"op":"get_topology"}"#)["result"].clone();
    let before = topo(&sock);
    assert_eq!(before["pods"].as_array().unwrap().len(), 3);
    let netns = before["pods"][0]["netns"].as_str().unwrap().to_string();
    let cases = [
        (r#"{"v":1,"op":"add_port","args":{"pod":{"name":"x/y","netns":"/run/netns/nope","ipv4":"10.244.1.50"}}}"#.to_string(), "pod.netns"),
        (r#"{"v":1,"op":"add_port","args":{"pod":{"name":"x/y","netns":"/tmp","ipv4":"10.244.1.999"}}}"#.to_string(), "pod.ipv4"),
        (format!(r#"{{"v":1,"op":"add_port","args":{{"pod":{{"name":"x/y","netns":"{netns}","ipv4":"10.244.2.5"}}}}}}"#), "pod.ipv4"),
        (format!(r#"{{"v":1,"op":"add_port","args":{{"pod":{{"name":"x/y","netns":"{netns}","ipv4":"10.244.1.1"}}}}}}"#), "pod.ipv4"),
        (format!(r#"{{"v":1,"op":"add_port","args":{{"pod":{{"name":"x/y","netns":"{netns}","ipv4":"10.244.1.60","mtu":10}}}}}}"#), "pod.mtu"),
        (format!(r#"{{"v":1,"op":"add_port","args":{{"pod":{{"name":"x/y","netns":"{netns}","ipv4":"10.244.1.61","mac":"01:00:00:00:00:01"}}}}}}"#), "pod.mac"),
        (r#"{"v":1,"op":"remove_port","args":{"name":"no/such"}}"#.to_string(), "name"),
        (r#"{"v":1,"op":"patch_topology","args":{"add":[],"remove":["default/nope"]}}"#.to_string(), "remove[0]"),
        (r#"{"v":1,"op":"replace_topology","args":{"topology":{"node":{"name":"node-1","pod_cidrs":["10.244.1.0/24"],"mtu":50},"pods":[]}}}"#.to_string(), "node.mtu"),
    ];
    for (req, field) in &cases {
        let r = raw(&sock, req);
        assert_eq!(r["ok"], false, "{req} -> {r}");
        assert_eq!(r["error"]["field"], *field, "{req} -> {r}");
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(topo(&sock), before, "{req} changed the topology");
    }
    // Same IP as an existing pod, inside an all-or-nothing patch with a valid add.
    let ip0 = before["pods"][0]["ipv4"].as_str().unwrap();
    let r = raw(
        &sock,
        &format!(
            r#"{{"v":1,"op":"patch_topology","args":{{"add":[{{"name":"x/ok","netns":"{netns}","ifname":"eth9","ipv4":"10.244.1.70"}},{{"name":"x/dup","netns":"{netns}","ifname":"eth8","ipv4":"{ip0}"}}]}}}}"#
        ),
    );
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "already_exists", "{r}");
    assert_eq!(topo(&sock), before);
    for bad in [
        "not json",
        r#"{"v":9,"op":"hello"}"#,
        r#"{"op":"hello"}"#,
        r#"{"v":1,"op":"explode"}"#,
        "[]",
    ] {
        let r = raw(&sock, bad);
        assert_eq!(r["ok"], false, "{bad} -> {r}");
    }
    // The switch still forwards.
    let pods = lab.pods();
    assert!(lab
        .exec(&pods[0].0, &["ping", "-c", "1", "-W", "2", &pods[1].1])
        .status
        .success());
    // A valid patch adds a pod in a namespace of its own, and removes it again.
    let extra = format!("psw-{}-extra", lab.name);
    assert!(std::process::Command::new("ip")
        .args(["netns", "add", &extra])
        .status()
        .unwrap()
        .success());
    let r = raw(
        &sock,
        &format!(
            r#"{{"v":1,"op":"patch_topology","args":{{"add":[{{"name":"x/extra","netns":"/run/netns/{extra}","ipv4":"10.244.1.80"}}]}}}}"#
        ),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(topo(&sock)["pods"].as_array().unwrap().len(), 4);
    let out = lab.exec(&pods[0].0, &["ping", "-c", "1", "-W", "2", "10.244.1.80"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = raw(
        &sock,
        r#"{"v":1,"op":"remove_port","args":{"name":"x/extra"}}"#,
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(topo(&sock), before);
}

//! `lab apply / get / delete` with real Kubernetes manifests, on a real lab.

mod common;

use common::*;

#[test]
fn apply_get_delete_manifests() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("apply", None);
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let out = lab.run_ok(&["apply", "-f", &format!("{fixtures}/apps.yaml")]);
    assert!(out.contains("pod/default/client created"), "{out}");
    assert!(out.contains("service/api configured"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&lab.run_ok(&["get", "pods", "-o", "json"])).unwrap();
    assert_eq!(v["kind"], "List");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3 + 4, "{v}");
    let mut ips = std::collections::BTreeSet::new();
    for p in items {
        assert_eq!(p["kind"], "Pod");
        assert_eq!(p["status"]["phase"], "Running", "{p}");
        assert_eq!(p["spec"]["nodeName"], "node-1");
        assert!(
            ips.insert(p["status"]["podIP"].as_str().unwrap().to_string()),
            "duplicate IP"
        );
    }
    // Deployment replicas are named like the ReplicaSet controller names them.
    let api: Vec<&str> = items
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .filter(|n| n.starts_with("api-"))
        .collect();
    assert_eq!(api.len(), 2);
    for n in &api {
        let parts: Vec<&str> = n.split('-').collect();
        assert_eq!(parts.len(), 3, "{n}");
        assert!(parts[1].len() <= 10 && parts[2].len() == 5, "{n}");
        assert!(
            parts[1..]
                .iter()
                .all(|p| p.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))),
            "{n}"
        );
    }
    // Re-applying changes nothing.
    let out = lab.run_ok(&["apply", "-f", &format!("{fixtures}/apps.yaml")]);
    assert!(!out.contains("created"), "{out}");
    // The pod with a command runs it in its own namespace.
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/podswitch/lab/{}/lab.json", lab.name)).unwrap(),
    )
    .unwrap();
    let client = &st["pods"]["default/client"];
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", client["workload_pid"])).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).starts_with("sleep\u{0}3600"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    // The declared port is served by the echo workload: db answers on 5432.
    let db_ip = items
        .iter()
        .find(|p| p["metadata"]["name"] == "db")
        .unwrap()["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    let r = lab.tool("client", &["http-get", "--to", &format!("{db_ip}:5432")]);
    assert!(r["body"].as_str().unwrap().contains("From=db "), "{r}");
    // exec passes the exit code through.
    let out = lab.exec("client", &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    // Delete frees the pods and their addresses.
    let out = lab.run_ok(&["delete", "-f", &format!("{fixtures}/apps.yaml")]);
    assert!(out.contains("pod/default/client deleted"), "{out}");
    assert_eq!(lab.pods().len(), 3);
    assert!(netns_matching(&format!("psw-{}-default-client", lab.name)).is_empty());
    let out = lab.run_ok(&["apply", "-f", &format!("{fixtures}/apps.yaml")]);
    assert!(out.contains("created"), "{out}");
    let again: std::collections::BTreeSet<String> =
        lab.pods().into_iter().map(|(_, ip)| ip).collect();
    assert_eq!(again.len(), 7);
}

#[test]
fn bad_manifests_and_exhausted_ranges_change_nothing() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("badapply", None);
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let before = lab.pods();
    let out = lab.run(&["apply", "-f", &format!("{fixtures}/bad-port.yaml")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("containerPort") && err.contains("70000"),
        "{err}"
    );
    assert_eq!(lab.pods(), before, "a bad manifest changed the lab");
    // 254 more pods do not fit in a /24 that already has 3.
    let out = lab.run(&["apply", "-f", &format!("{fixtures}/too-many-pods.yaml")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exhausted"), "{err}");
    assert_eq!(lab.pods(), before, "an exhausted range left pods behind");
}

//! Checks configs/kubernetes/*.yaml as the API server would take them.
//!
//! The validator: each document is decoded strictly into its k8s-openapi
//! type (the Kubernetes 1.33 schema, generated from the API server's
//! OpenAPI spec): a field of the wrong type fails with its path
//! (serde_path_to_error), and since k8s-openapi ignores unknown fields on
//! decode, the decoded object is encoded again and compared with the
//! document, so any field the schema does not know (a typo like
//! `hostNetwrok`, a field at the wrong level) fails too: the strictness of
//! `kubectl apply --validate=strict`. (kubectl itself cannot validate
//! here: `--dry-run=client` still needs an API server for discovery and
//! the OpenAPI document.) Then the checks the API server adds (selector
//! matches the template, mounts name volumes), the RBAC rules against
//! what the agent's source watches, and the config the DaemonSet mounts
//! against the switch's and agent's config types.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podswitch_agent::source::kubernetes::WATCHED_RESOURCES;
use podswitch_switch::control::api::ServiceSettings;
use podswitch_switch::daemon::DaemonConfig;
use serde_json::Value;

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// The YAML documents of a file, as JSON values.
fn documents(text: &str, file: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut push = |doc: &str| {
        if doc
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return;
        }
        let v: Value =
            serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
        out.push(v);
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            push(&current);
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    push(&current);
    out
}

/// Where `original` has something `round_trip` lacks or changed: fields
/// the schema does not know, or values it would not keep.
fn differences(original: &Value, round_trip: &Value, path: &str, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    None => out.push(format!("{p}: unknown field")),
                    Some(w) => differences(v, w, &p, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {a} is read as {b}")),
        _ => {}
    }
}

/// Decodes `doc` strictly into `K`: wrong types and unknown fields fail.
fn strict<K>(doc: &Value, file: &str) -> Result<K, String>
where
    K: serde::de::DeserializeOwned + serde::Serialize,
{
    let obj: K = serde_path_to_error::deserialize(doc.clone())
        .map_err(|e| format!("{file}: {}: {}", e.path(), e.inner()))?;
    let again = serde_json::to_value(&obj).expect("k8s-openapi objects encode");
    let mut out = Vec::new();
    differences(doc, &again, "", &mut out);
    match out.is_empty() {
        true => Ok(obj),
        false => Err(format!("{file}: {}", out.join("; "))),
    }
}

/// Every object of configs/kubernetes, decoded strictly.
#[derive(Default)]
struct Manifests {
    daemon_sets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
}

fn load() -> Manifests {
    let dir = config_dir().join("kubernetes");
    let mut m = Manifests::default();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "configmap.yaml",
            "daemonset.yaml",
            "rbac.yaml",
            "serviceaccount.yaml"
        ]
    );
    for path in files {
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in documents(&text, &file) {
            let kind = (
                doc["apiVersion"].as_str().unwrap_or_default(),
                doc["kind"].as_str().unwrap_or_default(),
            );
            match kind {
                ("apps/v1", "DaemonSet") => m
                    .daemon_sets
                    .push(strict(&doc, &file).unwrap_or_else(|e| panic!("{e}"))),
                ("v1", "ServiceAccount") => m
                    .service_accounts
                    .push(strict(&doc, &file).unwrap_or_else(|e| panic!("{e}"))),
                ("v1", "ConfigMap") => m
                    .config_maps
                    .push(strict(&doc, &file).unwrap_or_else(|e| panic!("{e}"))),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => m
                    .cluster_roles
                    .push(strict(&doc, &file).unwrap_or_else(|e| panic!("{e}"))),
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => m
                    .cluster_role_bindings
                    .push(strict(&doc, &file).unwrap_or_else(|e| panic!("{e}"))),
                other => panic!("{file}: unexpected object {other:?}"),
            }
        }
    }
    m
}

#[test]
fn the_validator_catches_unknown_fields_and_wrong_types() {
    let text = std::fs::read_to_string(config_dir().join("kubernetes/daemonset.yaml")).unwrap();
    let doc = documents(&text, "daemonset.yaml").remove(0);
    strict::<DaemonSet>(&doc, "daemonset.yaml").expect("the real file passes");

    let mut typo = doc.clone();
    typo["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    let e = strict::<DaemonSet>(&typo, "t").unwrap_err();
    assert!(
        e.contains(".spec.template.spec.hostNetwrok: unknown field"),
        "{e}"
    );

    let mut misplaced = doc.clone();
    misplaced["spec"]["template"]["spec"]["containers"][0]["capabilities"] =
        serde_json::json!({"add": ["NET_ADMIN"]});
    let e = strict::<DaemonSet>(&misplaced, "t").unwrap_err();
    assert!(
        e.contains("containers[0].capabilities: unknown field"),
        "{e}"
    );

    let mut wrong_type = doc;
    wrong_type["spec"]["template"]["spec"]["hostNetwork"] = Value::from("yes");
    let e = strict::<DaemonSet>(&wrong_type, "t").unwrap_err();
    assert!(e.contains("spec.template.spec.hostNetwork"), "{e}");
}

#[test]
fn rbac_grants_read_only_access_to_exactly_what_the_source_watches() {
    let m = load();
    assert_eq!(m.cluster_roles.len(), 1);
    let role = &m.cluster_roles[0];
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none(), "{rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = WATCHED_RESOURCES
        .iter()
        .flat_map(|(group, resource)| {
            ["get", "list", "watch"]
                .map(|verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect();
    assert_eq!(granted, wanted);
    assert!(role.aggregation_rule.is_none());

    // Bound to the DaemonSet's service account, and nothing else.
    let sa = &m.service_accounts[0];
    let ds = &m.daemon_sets[0];
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    let binding = &m.cluster_role_bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
}

fn capabilities(c: &Container) -> (Vec<String>, Vec<String>) {
    let sc = c
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{}: no securityContext", c.name));
    assert_ne!(sc.privileged, Some(true), "{}: privileged", c.name);
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{}: allowPrivilegeEscalation",
        c.name
    );
    let caps = sc.capabilities.clone().unwrap_or_default();
    (caps.add.unwrap_or_default(), caps.drop.unwrap_or_default())
}

#[test]
fn the_daemonset_has_the_privileges_it_needs_and_no_more() {
    let m = load();
    let ds = &m.daemon_sets[0];
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert!(pod.host_pid.is_none() && pod.host_ipc.is_none());

    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["switch", "agent"]);
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let (add, drop) = capabilities(c);
        assert_eq!(drop, ["ALL"], "{}", c.name);
        let expected: &[&str] = match c.name.as_str() {
            "switch" => &["NET_ADMIN", "SYS_ADMIN"],
            _ => &[],
        };
        assert_eq!(add, expected, "{}", c.name);
    }

    // The init container runs the repository's install script, with the
    // variables the script reads.
    let init = &pod.init_containers.as_deref().unwrap()[0];
    assert_eq!(init.name, "install-cni");
    assert_eq!(
        init.command.as_deref().unwrap(),
        ["/opt/podswitch/cni/install.sh"]
    );
    let script = std::fs::read_to_string(config_dir().join("cni/install.sh")).unwrap();
    for var in init.env.iter().flatten() {
        assert!(
            script.contains(&format!("{}:-", var.name))
                || script.contains(&format!("${{{}", var.name)),
            "install.sh does not read {}",
            var.name
        );
    }
}

#[test]
fn probes_reach_the_metrics_listener_the_config_sets() {
    let m = load();
    let pod = m.daemon_sets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    let switch = pod.containers.iter().find(|c| c.name == "switch").unwrap();
    let data = m.config_maps[0].data.as_ref().unwrap();
    let config: DaemonConfig = toml::from_str(&data["switch.toml"]).expect("switch.toml parses");
    let metrics = config.metrics_address.expect("metrics enabled");
    assert!(metrics.ip().is_loopback(), "{metrics}");
    for (probe, path) in [
        (&switch.liveness_probe, "/healthz"),
        (&switch.readiness_probe, "/readyz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        // On the host network the kubelet probes from the node itself.
        assert_eq!(get.host.as_deref(), Some(metrics.ip().to_string().as_str()));
        assert_eq!(get.port, IntOrString::Int(i32::from(metrics.port())));
        assert_eq!(get.path.as_deref(), Some(path));
    }
    assert_eq!(
        config.control_socket.to_str(),
        Some("/run/podswitch/switch.sock")
    );

    // The agent's settings are the control API's ServiceSettings.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AgentToml {
        services: ServiceSettings,
    }
    let agent: AgentToml = toml::from_str(&data["agent.toml"]).expect("agent.toml parses");
    assert_eq!(agent.services, ServiceSettings::default());
}

#[test]
fn references_inside_the_manifests_resolve() {
    let m = load();
    let ds = &m.daemon_sets[0];
    let spec = ds.spec.as_ref().unwrap();
    // The API server's checks: the selector selects the template.
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in spec.selector.match_labels.iter().flatten() {
        assert_eq!(labels.get(k), Some(v), "selector {k}");
    }
    let pod = spec.template.spec.as_ref().unwrap();
    let volumes: BTreeSet<&str> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let config_map = &m.config_maps[0];
    let keys: BTreeSet<&String> = config_map.data.as_ref().unwrap().keys().collect();
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        for mount in c.volume_mounts.iter().flatten() {
            assert!(
                volumes.contains(mount.name.as_str()),
                "{}: {}",
                c.name,
                mount.name
            );
        }
        // Files of /etc/podswitch that a command names are ConfigMap keys.
        let words = c.command.iter().chain(c.args.iter()).flatten();
        for word in words.flat_map(|w| w.split([' ', '='])) {
            if let Some(file) = word.strip_prefix("/etc/podswitch/") {
                assert!(keys.contains(&file.to_string()), "{}: {file}", c.name);
            }
        }
    }
    let cm_volume = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.config_map.as_ref())
        .unwrap();
    assert_eq!(Some(&cm_volume.name), config_map.metadata.name.as_ref());
    assert_eq!(config_map.metadata.namespace, ds.metadata.namespace);
}

//! Services in the lab: the part of a Kubernetes control plane that turns
//! `Service` manifests into Services with their ClusterIPs and NodePorts,
//! and the table every node's switch load-balances with.
//!
//! The jobs are split as Kubernetes splits them:
//!
//! - the API server's ([`ServiceRequest::from_manifest`], [`plan`]):
//!   validate a Service, allocate its ClusterIP from the service CIDR and
//!   its NodePorts from the NodePort range, and keep both when the same
//!   Service is applied again (`kubectl apply` semantics: clusterIP is
//!   immutable, an unset nodePort keeps the allocated one);
//! - the EndpointSlice controller's and kube-proxy's: not here. The lab
//!   writes its Nodes, Pods and Services as Kubernetes objects
//!   (`view.rs`), and every node's agent derives the EndpointSlices and
//!   translates them into its switch's table with the agent's rules
//!   (`podswitch_agent::translate`, the one Service translation). The lab
//!   runs the same translation on the same objects ([`switch_specs_for`])
//!   to know what each switch should hold, and waits for it (`agents.rs`);
//!   [`settings`] are the cluster's service settings it gives the agents.
//!
//! Everything here is pure (no I/O, no clock): `cluster.rs` stores the
//! result in the lab state, `view.rs` prints it as Kubernetes objects
//! (which is also what the agents read).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use podswitch_switch::control::api::{Protocol, ServiceSettings, ServiceSpec};

use podswitch_agent::translate::{translate, ClusterObjects, TranslateConfig};

pub use podswitch_agent::manifest::service::*;

/// Size of the static band at the bottom of a range: Kubernetes allocates
/// dynamically from above it first, so that addresses and ports users pick
/// by hand (`clusterIP: 10.96.0.10` for DNS) rarely collide with allocated
/// ones (KEP-3070 for ClusterIPs: min(max(16, size/16), 256); KEP-3668 for
/// NodePorts: min(max(16, size/32), 128)).
fn static_band(size: u32, divisor: u32, cap: u32) -> u32 {
    (size / divisor).clamp(16, cap)
}

/// Lowest free value of `lo..=hi` in the dynamic band (above the static
/// band), else in the static band: deterministic, and the same answer
/// every time for the same state.
fn lowest_free(lo: u32, hi: u32, band: u32, taken: impl Fn(u32) -> bool) -> Option<u32> {
    let split = lo.saturating_add(band).min(hi.saturating_add(1));
    (split..=hi).chain(lo..split).find(|v| !taken(*v))
}

/// Addresses of the service CIDR that are never allocated: its network
/// and broadcast addresses, and the `kubernetes` Service's.
fn reserved_cluster_ip(ip: Ipv4Addr) -> Option<&'static str> {
    if ip == SERVICE_CIDR.network() {
        Some("the service CIDR's network address")
    } else if ip == SERVICE_CIDR.broadcast() {
        Some("the service CIDR's broadcast address")
    } else if ip == KUBERNETES_SERVICE_IP {
        Some("reserved for the `kubernetes` Service")
    } else {
        None
    }
}

/// What is allocated, and to whom.
#[derive(Debug, Default)]
struct Allocations {
    cluster_ips: BTreeMap<Ipv4Addr, String>,
    node_ports: BTreeMap<(Protocol, u16), String>,
}

impl Allocations {
    fn claim(&mut self, svc: &LabService) {
        if let Some(ip) = svc.cluster_ip {
            self.cluster_ips.insert(ip, svc.key());
        }
        for p in &svc.ports {
            if let Some(n) = p.node_port {
                self.node_ports.insert((p.protocol, n), svc.key());
            }
        }
    }
}

/// The API server's half of `kubectl apply` for Services: validates
/// `requests` against what `current` holds and returns the new set of
/// Services (`current` with these created or updated). On error nothing is
/// returned, so the caller changes nothing.
///
/// A Service applied again keeps its ClusterIP (which may not change) and,
/// for each port (matched by number and protocol) whose nodePort is unset,
/// its NodePort. Addresses and ports are taken in three rounds, so that the
/// order of objects in a file does not decide who gets what: first what
/// re-applied Services keep, then what manifests ask for by value, then
/// new allocations, lowest free first.
pub fn plan(
    current: &BTreeMap<String, LabService>,
    requests: Vec<ServiceRequest>,
) -> Result<BTreeMap<String, LabService>, ServiceError> {
    let mut next = current.clone();
    let mut seen = BTreeSet::new();
    for r in &requests {
        let key = r.service.key();
        if !seen.insert(key.clone()) {
            return Err(ServiceError {
                service: key,
                field: "metadata.name".into(),
                reason: "the Service is defined more than once".into(),
            });
        }
        next.remove(&key);
    }
    let mut taken = Allocations::default();
    for s in next.values() {
        taken.claim(s);
    }
    let err = |svc: &LabService, field: String, reason: String| ServiceError {
        service: svc.key(),
        field,
        reason,
    };

    // Round 1: what re-applied Services keep; and checks of immutability.
    let mut out: Vec<(LabService, ClusterIpRequest)> = Vec::with_capacity(requests.len());
    let mut kept_ports: Vec<Vec<bool>> = Vec::with_capacity(requests.len());
    for r in requests {
        let mut svc = r.service;
        let mut want = r.cluster_ip;
        let mut kept = vec![false; svc.ports.len()];
        if let Some(old) = current.get(&svc.key()) {
            svc.created = old.created.clone();
            match (want, old.cluster_ip) {
                (ClusterIpRequest::Allocate, Some(ip)) => want = ClusterIpRequest::Fixed(ip),
                (ClusterIpRequest::Allocate, None) => want = ClusterIpRequest::Headless,
                (ClusterIpRequest::Fixed(a), Some(b)) if a == b => {}
                (ClusterIpRequest::Headless, None) => {}
                (asked, is) => {
                    let show = |ip: Option<Ipv4Addr>| {
                        ip.map(|i| i.to_string()).unwrap_or_else(|| "None".into())
                    };
                    let asked = match asked {
                        ClusterIpRequest::Fixed(ip) => Some(ip),
                        _ => None,
                    };
                    return Err(err(
                        &svc,
                        "spec.clusterIP".into(),
                        format!(
                            "may not change once set (it is {}, the manifest asks for {}); delete the Service first",
                            show(is),
                            show(asked)
                        ),
                    ));
                }
            }
            if let ClusterIpRequest::Fixed(ip) = want {
                taken.cluster_ips.insert(ip, svc.key());
                svc.cluster_ip = Some(ip);
            }
            if svc.wants_node_ports() {
                let key = svc.key();
                for (i, p) in svc.ports.iter_mut().enumerate() {
                    if p.node_port.is_some() {
                        continue;
                    }
                    let old_port = old
                        .ports
                        .iter()
                        .find(|o| o.port == p.port && o.protocol == p.protocol)
                        .and_then(|o| o.node_port);
                    if let Some(n) = old_port {
                        taken.node_ports.insert((p.protocol, n), key.clone());
                        p.node_port = Some(n);
                        kept[i] = true;
                    }
                }
            }
        }
        out.push((svc, want));
        kept_ports.push(kept);
    }

    // Round 2: what manifests ask for by value.
    for ((svc, want), kept) in out.iter_mut().zip(&kept_ports) {
        if let (ClusterIpRequest::Fixed(ip), None) = (*want, svc.cluster_ip) {
            let field = "spec.clusterIP".to_string();
            if !SERVICE_CIDR.contains(&ip) {
                return Err(err(
                    svc,
                    field,
                    format!("{ip} is not in the service CIDR {SERVICE_CIDR}"),
                ));
            }
            if let Some(why) = reserved_cluster_ip(ip) {
                return Err(err(svc, field, format!("{ip} is {why}")));
            }
            if let Some(owner) = taken.cluster_ips.get(&ip) {
                return Err(err(
                    svc,
                    field,
                    format!("{ip} is already allocated to Service {owner}"),
                ));
            }
            taken.cluster_ips.insert(ip, svc.key());
            svc.cluster_ip = Some(ip);
        }
        let key = svc.key();
        for (i, p) in svc.ports.iter().enumerate() {
            let Some(n) = p.node_port else { continue };
            if kept[i] {
                continue;
            }
            let field = format!("spec.ports[{i}].nodePort");
            let proto = protocol_str(p.protocol);
            match taken.node_ports.get(&(p.protocol, n)) {
                Some(owner) if *owner == key => {
                    return Err(err(
                        svc,
                        field,
                        format!("{n}/{proto} is used by another port of this Service"),
                    ))
                }
                Some(owner) => {
                    return Err(err(
                        svc,
                        field,
                        format!("{n}/{proto} is already allocated to Service {owner}"),
                    ))
                }
                None => {
                    taken.node_ports.insert((p.protocol, n), key.clone());
                }
            }
        }
    }

    // Round 3: new allocations, lowest free first.
    let ip_lo = u32::from(SERVICE_CIDR.network());
    let ip_hi = u32::from(SERVICE_CIDR.broadcast());
    let ip_band = static_band(ip_hi - ip_lo + 1, 16, 256);
    let (np_lo, np_hi) = (u32::from(NODE_PORT_RANGE.0), u32::from(NODE_PORT_RANGE.1));
    let np_band = static_band(np_hi - np_lo + 1, 32, 128);
    for (svc, want) in out.iter_mut() {
        if *want == ClusterIpRequest::Allocate {
            let ip = lowest_free(ip_lo, ip_hi, ip_band, |v| {
                let ip = Ipv4Addr::from(v);
                reserved_cluster_ip(ip).is_some() || taken.cluster_ips.contains_key(&ip)
            })
            .map(Ipv4Addr::from)
            .ok_or_else(|| {
                err(
                    svc,
                    "spec.clusterIP".into(),
                    format!(
                        "the service CIDR {SERVICE_CIDR} is exhausted ({} ClusterIPs allocated)",
                        taken.cluster_ips.len()
                    ),
                )
            })?;
            taken.cluster_ips.insert(ip, svc.key());
            svc.cluster_ip = Some(ip);
        }
        if svc.wants_node_ports() {
            let key = svc.key();
            for i in 0..svc.ports.len() {
                if svc.ports[i].node_port.is_some() {
                    continue;
                }
                let proto = svc.ports[i].protocol;
                let n = lowest_free(np_lo, np_hi, np_band, |v| {
                    taken.node_ports.contains_key(&(proto, v as u16))
                })
                .map(|v| v as u16)
                .ok_or_else(|| {
                    err(
                        svc,
                        format!("spec.ports[{i}].nodePort"),
                        format!(
                            "the NodePort range {}-{} is exhausted for {}",
                            NODE_PORT_RANGE.0,
                            NODE_PORT_RANGE.1,
                            protocol_str(proto)
                        ),
                    )
                })?;
                taken.node_ports.insert((proto, n), key.clone());
                svc.ports[i].node_port = Some(n);
            }
        }
    }
    for (svc, _) in out {
        next.insert(svc.key(), svc);
    }
    Ok(next)
}

// ---------------------------------------------------------------------------
// What the switches get

/// What node `node`'s switch gets for the lab's `objects`
/// ([`crate::view::cluster_objects`]): the agent's translation, the one
/// every node's agent runs on the same objects, sorted by name.
pub fn switch_specs_for(
    node: &str,
    objects: &ClusterObjects,
    settings: &ServiceSettings,
) -> Vec<ServiceSpec> {
    let config = TranslateConfig {
        node_name: node.to_owned(),
        settings: settings.clone(),
    };
    translate(objects, &config).services.into_values().collect()
}

/// The cluster-wide settings the lab gives every switch.
pub fn settings(cluster_cidr: Ipv4Net) -> ServiceSettings {
    ServiceSettings {
        cluster_cidrs: vec![IpNet::V4(cluster_cidr)],
        service_cidrs: vec![IpNet::V4(SERVICE_CIDR)],
        masquerade: true,
        masquerade_exclude: Vec::new(),
        node_port_range: NODE_PORT_RANGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{LabSpec, LabState, NodeState, PodState};
    use podswitch_agent::manifest::{self, parse_manifests, LabContainer, LabPod, LabPort, Object};

    fn requests(yaml: &str) -> Result<Vec<ServiceRequest>, FieldError> {
        parse_manifests(yaml, "t.yaml")
            .map_err(|e| FieldError::new("parse", e.to_string()))?
            .iter()
            .filter_map(|o| match o {
                Object::Service(s) => Some(ServiceRequest::from_manifest(
                    s,
                    o.namespace(),
                    o.name(),
                    "2025-01-01T00:00:00Z",
                )),
                _ => None,
            })
            .collect()
    }

    fn apply(
        current: &BTreeMap<String, LabService>,
        yaml: &str,
    ) -> Result<BTreeMap<String, LabService>, ServiceError> {
        plan(current, requests(yaml).expect("valid manifest"))
    }

    fn svc(name: &str, extra_spec: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: web}}\n{extra_spec}"
        )
    }

    const PORT_80: &str = "  ports:\n  - port: 80\n";

    #[test]
    fn cluster_ips_are_lowest_free_above_the_static_band_and_kept() {
        let s = apply(
            &BTreeMap::new(),
            &format!("{}---\n{}", svc("a", PORT_80), svc("b", PORT_80)),
        )
        .unwrap();
        // 10.96.0.0/12: the first 256 addresses are the static band.
        assert_eq!(s["default/a"].cluster_ip, Some(Ipv4Addr::new(10, 96, 1, 0)));
        assert_eq!(s["default/b"].cluster_ip, Some(Ipv4Addr::new(10, 96, 1, 1)));
        // Re-applying keeps it; deleting a frees its address for the next.
        let again = apply(&s, &svc("a", PORT_80)).unwrap();
        assert_eq!(again, s);
        let mut without_a = s.clone();
        without_a.remove("default/a");
        let c = apply(&without_a, &svc("c", PORT_80)).unwrap();
        assert_eq!(c["default/c"].cluster_ip, Some(Ipv4Addr::new(10, 96, 1, 0)));
    }

    #[test]
    fn requested_cluster_ips_are_checked() {
        let fixed = |ip: &str| svc("a", &format!("  clusterIP: {ip}\n{PORT_80}"));
        let s = apply(&BTreeMap::new(), &fixed("10.96.0.10")).unwrap();
        assert_eq!(
            s["default/a"].cluster_ip,
            Some(Ipv4Addr::new(10, 96, 0, 10))
        );
        for (ip, why) in [
            ("10.0.0.5", "not in the service CIDR 10.96.0.0/12"),
            ("10.96.0.1", "kubernetes"),
            ("10.96.0.0", "network address"),
            ("10.111.255.255", "broadcast"),
        ] {
            let e = apply(&BTreeMap::new(), &fixed(ip)).unwrap_err();
            assert_eq!(e.field, "spec.clusterIP", "{e}");
            assert!(e.reason.contains(why), "{ip}: {e}");
            assert!(e.to_string().starts_with("Service default/a: "), "{e}");
        }
        // Taken by another Service.
        let e = apply(
            &s,
            &svc("b", &format!("  clusterIP: 10.96.0.10\n{PORT_80}")),
        )
        .unwrap_err();
        assert!(
            e.reason.contains("already allocated to Service default/a"),
            "{e}"
        );
        // Immutable once set.
        let e = apply(&s, &fixed("10.96.0.11")).unwrap_err();
        assert!(e.reason.contains("may not change"), "{e}");
        // A fixed address wins over an allocation in the same file, whatever
        // the order.
        let both = format!(
            "{}---\n{}",
            svc("first", PORT_80),
            svc("second", &format!("  clusterIP: 10.96.1.0\n{PORT_80}"))
        );
        let s = apply(&BTreeMap::new(), &both).unwrap();
        assert_eq!(
            s["default/second"].cluster_ip,
            Some(Ipv4Addr::new(10, 96, 1, 0))
        );
        assert_eq!(
            s["default/first"].cluster_ip,
            Some(Ipv4Addr::new(10, 96, 1, 1))
        );
        // Headless: no address, and it stays headless.
        let h = apply(&BTreeMap::new(), &fixed("None")).unwrap();
        assert_eq!(h["default/a"].cluster_ip, None);
        assert!(apply(&h, &svc("a", PORT_80)).is_ok());
        assert!(apply(&h, &fixed("10.96.0.10")).is_err());
        assert_eq!(specs(&h, Vec::new()), [], "headless: no frontend");
    }

    #[test]
    fn node_ports_are_allocated_validated_and_kept() {
        let np =
            |name: &str, ports: &str| svc(name, &format!("  type: NodePort\n  ports:\n{ports}"));
        let s = apply(
            &BTreeMap::new(),
            &np(
                "a",
                "  - {name: http, port: 80}\n  - {name: dns, port: 53, protocol: UDP}\n",
            ),
        )
        .unwrap();
        // 2768 ports: the first 86 are the static band.
        let ports: Vec<_> = s["default/a"].ports.iter().map(|p| p.node_port).collect();
        assert_eq!(ports, [Some(30086), Some(30086)], "one per protocol");
        // Re-applied: kept. Fixed: honoured; the same number on another
        // protocol is fine; a taken one is refused.
        let s2 = apply(
            &s,
            &np(
                "a",
                "  - {name: http, port: 80}\n  - {name: dns, port: 53, protocol: UDP}\n",
            ),
        )
        .unwrap();
        assert_eq!(s2, s);
        let s3 = apply(&s, &np("b", "  - {port: 81, nodePort: 30001}\n")).unwrap();
        assert_eq!(s3["default/b"].ports[0].node_port, Some(30001));
        let e = apply(&s3, &np("c", "  - {port: 82, nodePort: 30001}\n")).unwrap_err();
        assert_eq!(e.field, "spec.ports[0].nodePort");
        assert!(
            e.reason.contains("already allocated to Service default/b"),
            "{e}"
        );
        assert!(apply(
            &s3,
            &np("c", "  - {port: 82, nodePort: 30001, protocol: UDP}\n")
        )
        .is_ok());
        let e = apply(
            &BTreeMap::new(),
            &np("d", "  - {name: a, port: 1, nodePort: 30005}\n  - {name: b, port: 2, nodePort: 30005}\n"),
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.ports[1].nodePort", "{e}");
        // Out of range and on a ClusterIP Service: refused when parsed.
        let e = requests(&np("e", "  - {port: 1, nodePort: 8080}\n")).unwrap_err();
        assert!(e.reason.contains("NodePort range 30000-32767"), "{e:?}");
        let e = requests(&svc("f", "  ports:\n  - {port: 1, nodePort: 30000}\n")).unwrap_err();
        assert!(e.reason.contains("ClusterIP"), "{e:?}");
        // Changing the type to ClusterIP releases them.
        let s4 = apply(&s, &svc("a", PORT_80)).unwrap();
        assert_eq!(s4["default/a"].ports[0].node_port, None);
    }

    #[test]
    fn a_failed_plan_returns_nothing_and_the_input_is_untouched() {
        let s = apply(&BTreeMap::new(), &svc("a", PORT_80)).unwrap();
        let before = s.clone();
        let bad = format!(
            "{}---\n{}",
            svc("b", PORT_80),
            svc("c", &format!("  clusterIP: 192.168.0.1\n{PORT_80}"))
        );
        assert!(apply(&s, &bad).is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn manifest_fields_are_validated_with_their_path() {
        for (spec, field, why) in [
            ("  ports:\n  - {port: 80, protocol: SCTP}\n", "spec.ports[0].protocol", "SCTP"),
            ("  ports:\n  - {port: 80}\n  - {port: 81}\n", "spec.ports[0].name", "required"),
            ("  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 80}\n", "spec.ports[1]", "duplicate"),
            ("  type: ExternalName\n  externalName: x.example\n", "spec.type", "ExternalName"),
            ("  type: NodePort\n  clusterIP: None\n  ports: [{port: 1}]\n", "spec.clusterIP", "None"),
            ("  clusterIP: fd00::1\n  ports: [{port: 1}]\n", "spec.clusterIP", "IPv6"),
            ("  externalIPs: [127.0.0.1]\n  ports: [{port: 1}]\n", "spec.externalIPs[0]", "loopback"),
            ("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n  ports: [{port: 1}]\n", "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "1..="),
            ("  externalTrafficPolicy: Local\n  ports: [{port: 1}]\n", "spec.externalTrafficPolicy", "externally-accessible"),
            ("  internalTrafficPolicy: Nearby\n  ports: [{port: 1}]\n", "spec.internalTrafficPolicy", "Cluster or Local"),
            ("  ports: [{port: 1, targetPort: Not_A_Name}]\n", "spec.ports[0].targetPort", "port name"),
            ("  loadBalancerIP: 203.0.113.5\n  ports: [{port: 1}]\n", "spec.loadBalancerIP", "LoadBalancer"),
            ("  ports: []\n", "spec.ports", "at least one port"),
        ] {
            let e = requests(&svc("s", spec)).unwrap_err();
            assert!(e.reason.contains(field), "{spec}: {e:?}");
            assert!(e.reason.contains(why), "{spec}: {e:?}");
        }
    }

    #[test]
    fn defaults_and_load_balancer_ingress() {
        let s = apply(
            &BTreeMap::new(),
            &svc(
                "lb",
                "  type: LoadBalancer\n  loadBalancerIP: 203.0.113.7\n  externalIPs: [203.0.113.100]\n  sessionAffinity: ClientIP\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n  ports: [{port: 443, targetPort: 8443}]\n",
            ),
        )
        .unwrap();
        let lb = &s["default/lb"];
        assert_eq!(
            lb.affinity_timeout_secs,
            Some(DEFAULT_AFFINITY_TIMEOUT_SECS)
        );
        assert_eq!(lb.load_balancer_ingress, [Ipv4Addr::new(203, 0, 113, 7)]);
        assert!(lb.ports[0].node_port.is_some());
        let spec = specs(&s, Vec::new()).remove(0);
        assert_eq!(
            spec.external_ips,
            [
                Ipv4Addr::new(203, 0, 113, 100),
                Ipv4Addr::new(203, 0, 113, 7)
            ]
        );
        assert!(spec.external_traffic_local && spec.internal_traffic_local);
        assert_eq!(spec.ports[0].port, 443);
        // The status (what the load balancer reports) wins over the spec.
        let yaml = format!(
            "{}status:\n  loadBalancer:\n    ingress:\n    - ip: 198.51.100.9\n    - hostname: lb.example\n",
            svc("lb2", "  type: LoadBalancer\n  loadBalancerIP: 203.0.113.7\n  allocateLoadBalancerNodePorts: false\n  ports: [{port: 80}]\n")
        );
        let s = apply(&BTreeMap::new(), &yaml).unwrap();
        let lb2 = &s["default/lb2"];
        assert_eq!(lb2.load_balancer_ingress, [Ipv4Addr::new(198, 51, 100, 9)]);
        assert_eq!(lb2.ports[0].node_port, None);
    }

    fn pod(
        name: &str,
        labels: &[(&str, &str)],
        ports: &[(&str, u16, manifest::Protocol)],
    ) -> LabPod {
        LabPod {
            name: name.into(),
            namespace: "default".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node_name: None,
            owner: None,
            containers: vec![LabContainer {
                name: "c".into(),
                ports: ports
                    .iter()
                    .map(|(n, p, proto)| LabPort {
                        name: Some(n.to_string()),
                        container_port: *p,
                        protocol: *proto,
                    })
                    .collect(),
                command: None,
            }],
            termination_grace_period_seconds: None,
        }
    }

    /// `pod` on `node` at 10.244.1.`last_octet`, its workload running (a
    /// pid that is alive: this test's own).
    fn info(pod: LabPod, last_octet: u8, node: &str) -> PodState {
        PodState {
            pod,
            node: node.into(),
            ip: Ipv4Addr::new(10, 244, 1, last_octet),
            netns: "/nonexistent".into(),
            workload_pid: Some(std::process::id() as i32),
            created: "2025-01-01T00:00:00Z".into(),
            deletion: None,
        }
    }

    /// A lab of two nodes holding `services` and `pods`.
    fn lab(services: &BTreeMap<String, LabService>, pods: Vec<PodState>) -> LabState {
        let node = |i: usize| NodeState {
            name: format!("node-{i}"),
            netns: "/nonexistent".into(),
            pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
            underlay_ip: Some(crate::cluster::underlay_ip(i)),
            control_socket: "/nonexistent".into(),
            state_dir: "/nonexistent".into(),
            switch_pid: None,
            agent_pid: None,
            created: "2025-01-01T00:00:00Z".into(),
        };
        LabState {
            name: "t".into(),
            spec: LabSpec::default(),
            nodes: vec![node(1), node(2)],
            pods: pods.into_iter().map(|p| (p.key(), p)).collect(),
            objects: BTreeMap::new(),
            services: services.clone(),
        }
    }

    /// What node-1's switch gets for `services` over `pods`.
    fn specs(services: &BTreeMap<String, LabService>, pods: Vec<PodState>) -> Vec<ServiceSpec> {
        crate::agents::service_specs(&lab(services, pods), "node-1")
    }

    #[test]
    fn named_ports_are_resolved_per_pod() {
        use manifest::Protocol::{Tcp, Udp};
        let s = apply(
            &BTreeMap::new(),
            &svc(
                "web",
                "  ports:\n  - {name: http, port: 80, targetPort: http}\n  - {name: echo, port: 9000, targetPort: echo, protocol: UDP}\n  - {name: admin, port: 9090, targetPort: 9091}\n",
            ),
        )
        .unwrap();
        // Two pods map `http` to different numbers; one has no `echo`; one
        // names `echo` only for TCP, which a UDP port does not match; one
        // is not selected; one is in another namespace.
        let a = pod(
            "a",
            &[("app", "web")],
            &[("http", 8080, Tcp), ("echo", 9000, Udp)],
        );
        let b = pod("b", &[("app", "web"), ("x", "y")], &[("http", 80, Tcp)]);
        let c = pod(
            "c",
            &[("app", "web")],
            &[("http", 80, Tcp), ("echo", 7, Tcp)],
        );
        let other = pod("d", &[("app", "db")], &[("http", 80, Tcp)]);
        let mut elsewhere = pod("e", &[("app", "web")], &[("http", 80, Tcp)]);
        elsewhere.namespace = "shop".into();
        let pods = vec![
            info(a, 2, "node-1"),
            info(b, 3, "node-2"),
            info(c, 4, "node-2"),
            info(other, 5, "node-1"),
            info(elsewhere, 6, "node-1"),
        ];
        let st = lab(&s, pods);
        let spec = crate::agents::service_specs(&st, "node-1").remove(0);
        let eps = |i: usize| -> Vec<(u8, u16)> {
            spec.ports[i]
                .endpoints
                .iter()
                .map(|e| (e.ip.octets()[3], e.port))
                .collect()
        };
        assert_eq!(eps(0), [(2, 8080), (3, 80), (4, 80)]);
        assert_eq!(eps(1), [(2, 9000)]);
        assert_eq!(eps(2), [(2, 9091), (3, 9091), (4, 9091)]);
        assert_eq!(spec.ports[0].endpoints[1].node.as_deref(), Some("node-2"));
        // Slices: one per distinct port mapping (b and c share one).
        let slices = crate::view::endpoint_slices(&st);
        assert_eq!(slices.len(), 2);
        let sizes: Vec<(usize, usize)> = slices
            .iter()
            .map(|g| (g.ports.as_ref().map_or(0, Vec::len), g.endpoints.len()))
            .collect();
        assert!(
            sizes.contains(&(3, 1)) && sizes.contains(&(2, 2)),
            "{sizes:?}"
        );
        let names: BTreeSet<String> = slices
            .iter()
            .filter_map(|g| g.metadata.name.clone())
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names.iter().all(|n| n.starts_with("web-") && n.len() == 9));
    }

    #[test]
    fn conditions_follow_the_pod() {
        use manifest::Protocol::Tcp;
        let s = apply(&BTreeMap::new(), &svc("web", PORT_80)).unwrap();
        let a = pod("a", &[("app", "web")], &[("http", 80, Tcp)]);
        let b = pod("b", &[("app", "web")], &[("http", 80, Tcp)]);
        let c = pod("c", &[("app", "web")], &[("http", 80, Tcp)]);
        let pods = vec![
            info(a, 2, "node-1"),
            PodState {
                deletion: Some(crate::cluster::PodDeletion {
                    requested: "2025-01-01T00:00:01Z".into(),
                    grace_period_seconds: 2,
                    deadline_unix_ms: u64::MAX,
                }),
                ..info(b, 3, "node-1")
            },
            PodState {
                workload_pid: None,
                ..info(c, 4, "node-1")
            },
        ];
        let st = lab(&s, pods);
        let spec = crate::agents::service_specs(&st, "node-1").remove(0);
        let conds: Vec<(u8, bool, bool)> = spec.ports[0]
            .endpoints
            .iter()
            .map(|e| (e.ip.octets()[3], e.ready, e.terminating))
            .collect();
        assert_eq!(conds, [(2, true, false), (3, false, true)]);
        let slices = crate::view::endpoint_slices(&st);
        let c = slices[0].endpoints[1].conditions.clone().unwrap();
        assert_eq!((c.serving, c.ready), (Some(true), Some(false)));
        // No pods: one empty placeholder slice, and no endpoints.
        let empty = crate::view::endpoint_slices(&lab(&s, Vec::new()));
        assert_eq!(empty.len(), 1);
        assert!(empty[0].endpoints.is_empty());
    }

    #[test]
    fn grace_periods() {
        let mut p = pod("a", &[], &[]);
        assert_eq!(grace_period(&p), DEFAULT_GRACE_PERIOD_SECS);
        p.termination_grace_period_seconds = Some(0);
        assert_eq!(grace_period(&p), 0);
        p.termination_grace_period_seconds = Some(3600);
        assert_eq!(grace_period(&p), MAX_GRACE_PERIOD_SECS);
    }

    #[test]
    fn settings_name_the_lab_ranges() {
        let s = settings("10.244.0.0/16".parse().unwrap());
        assert_eq!(s.service_cidrs, [IpNet::V4(SERVICE_CIDR)]);
        assert_eq!(s.node_port_range, (30000, 32767));
        assert!(s.masquerade);
    }
}

#[cfg(test)]
mod pin_tests;

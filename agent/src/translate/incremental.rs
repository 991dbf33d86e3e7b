//! Incremental translation: the same result as [`super::translate`], at
//! the cost of what changed.
//!
//! The push loop translates after every debounced change. Translating
//! every Service again for one endpoint change costs ~100 ms at 10k
//! Services, so [`Translator`] keeps each Service's translation
//! ([`translate_service`]'s result, before the cluster-wide frontend
//! checks) and an index from Services to their EndpointSlices, and
//! re-translates only the Services the [`Changes`] name: a Service that
//! changed, or whose slice changed (a slice that moves from one Service
//! to another names both).
//!
//! The frontend check ([`super::services::resolve_frontends`]) is
//! cluster-wide, but only Services that share a frontend take part in
//! it: one pass over every Service's frontends (references, no copies)
//! finds the contested ones, and only those go through the check. A
//! Service that shares no frontend is what [`translate_service`] made of
//! it. Then the output is updated in place and the [`TopologyPatch`]
//! from the previous output is returned, so nothing is diffed or copied
//! for the Services that did not change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use podswitch_switch::control::api::{Protocol, ServiceSpec};

use super::services::{resolve_frontends, translate_service, TranslatedService};
use super::{
    nodes, object_key, pods, ClusterObjects, NodeTopology, Problem, TopologyPatch, TranslateConfig,
    SERVICE_NAME_LABEL,
};

/// What changed in a [`ClusterObjects`] since the last translation, by
/// object key. Kept by the store ([`crate::source::ClusterStore`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Everything may have changed (translate all).
    pub all: bool,
    pub nodes: bool,
    pub pods: bool,
    pub services: BTreeSet<String>,
    pub endpoint_slices: BTreeSet<String>,
}

impl Changes {
    /// Everything: for a first translation.
    pub fn everything() -> Self {
        Changes {
            all: true,
            ..Changes::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all
            && !self.nodes
            && !self.pods
            && self.services.is_empty()
            && self.endpoint_slices.is_empty()
    }

    /// Adds `other`'s changes to these.
    pub fn merge(&mut self, other: Changes) {
        self.all |= other.all;
        self.nodes |= other.nodes;
        self.pods |= other.pods;
        self.services.extend(other.services);
        self.endpoint_slices.extend(other.endpoint_slices);
    }
}

/// The Service (key) an EndpointSlice belongs to, by its label.
fn slice_service(slice: &EndpointSlice) -> Option<String> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(object_key(slice.metadata.namespace.as_deref(), name, true))
}

/// A frontend: address, port, protocol.
type Frontend = (Ipv4Addr, u16, Protocol);

/// Keeps the last translation and updates it from [`Changes`].
#[derive(Debug)]
pub struct Translator {
    config: TranslateConfig,
    /// Every Service's own translation, by key.
    translated: HashMap<String, TranslatedService>,
    /// Service key → its slices' keys, and slice key → its Service.
    slices_of: HashMap<String, BTreeSet<String>>,
    service_of_slice: HashMap<String, String>,
    /// Services that shared a frontend in the last translation, and the
    /// problems the frontend check gave them.
    contested: BTreeSet<String>,
    node_problems: Vec<Problem>,
    pod_problems: Vec<Problem>,
    frontend_problems: Vec<Problem>,
    output: NodeTopology,
    primed: bool,
}

impl Translator {
    pub fn new(config: TranslateConfig) -> Self {
        Translator {
            output: NodeTopology::empty(config.settings.clone()),
            config,
            translated: HashMap::new(),
            slices_of: HashMap::new(),
            service_of_slice: HashMap::new(),
            contested: BTreeSet::new(),
            node_problems: Vec::new(),
            pod_problems: Vec::new(),
            frontend_problems: Vec::new(),
            primed: false,
        }
    }

    /// The current translation (what [`super::translate`] gives for the
    /// objects of the last [`Self::update`]).
    pub fn topology(&self) -> &NodeTopology {
        &self.output
    }

    /// Brings the translation up to `objects`, of which `changes` say
    /// what changed since the last call (the first call translates
    /// everything). Returns what changed in the output.
    pub fn update(&mut self, objects: &ClusterObjects, changes: &Changes) -> TopologyPatch {
        let all = changes.all || !self.primed;
        self.primed = true;
        let mut patch = TopologyPatch::default();

        // Nodes and this node's pods: few, translated whole when touched.
        if all || changes.nodes {
            self.node_problems.clear();
            let (local, remote) = nodes::translate_nodes(
                &objects.nodes,
                &self.config.node_name,
                &mut self.node_problems,
            );
            if remote != self.output.remote_nodes {
                patch.remote_nodes = Some(remote.clone());
            }
            self.output.local_node = local;
            self.output.remote_nodes = remote;
        }
        if all || changes.nodes || changes.pods {
            self.pod_problems.clear();
            self.output.local_pods = pods::translate_pods(
                &objects.pods,
                &self.config.node_name,
                self.output.local_node.as_ref(),
                &mut self.pod_problems,
            );
        }

        // Which Services to translate again.
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        if all {
            self.slices_of.clear();
            self.service_of_slice.clear();
            for (key, slice) in &objects.endpoint_slices {
                if let Some(svc) = slice_service(slice) {
                    self.slices_of
                        .entry(svc.clone())
                        .or_default()
                        .insert(key.clone());
                    self.service_of_slice.insert(key.clone(), svc);
                }
            }
            dirty.extend(self.translated.keys().cloned());
            dirty.extend(objects.services.keys().cloned());
        } else {
            dirty.extend(changes.services.iter().cloned());
            for key in &changes.endpoint_slices {
                let old = self.service_of_slice.remove(key);
                let new = objects.endpoint_slices.get(key).and_then(slice_service);
                if let Some(old) = old {
                    if let Some(set) = self.slices_of.get_mut(&old) {
                        set.remove(key);
                        if set.is_empty() {
                            self.slices_of.remove(&old);
                        }
                    }
                    dirty.insert(old);
                }
                if let Some(new) = new {
                    self.slices_of
                        .entry(new.clone())
                        .or_default()
                        .insert(key.clone());
                    self.service_of_slice.insert(key.clone(), new.clone());
                    dirty.insert(new);
                }
            }
        }
        for key in &dirty {
            match objects.services.get(key) {
                Some(svc) => {
                    let slices: Vec<&EndpointSlice> = self
                        .slices_of
                        .get(key)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| objects.endpoint_slices.get(k))
                        .collect();
                    let t = translate_service(svc, &slices, &self.config.settings);
                    self.translated.insert(key.clone(), t);
                }
                None => {
                    self.translated.remove(key);
                }
            }
        }

        // The frontend check, among the Services that share a frontend.
        let node_ip = self
            .output
            .local_node
            .as_ref()
            .and_then(|n| n.underlay_ipv4);
        let contested = self.contested_services(node_ip);
        let mut resolved: BTreeMap<String, ServiceSpec> = BTreeMap::new();
        self.frontend_problems.clear();
        if !contested.is_empty() {
            let mut created = HashMap::new();
            for key in &contested {
                if let Some(t) = self.translated.get(key) {
                    if let Some(spec) = &t.spec {
                        created.insert(spec.name.clone(), t.created);
                        resolved.insert(spec.name.clone(), spec.clone());
                    }
                }
            }
            resolve_frontends(
                &mut resolved,
                &created,
                node_ip,
                &mut self.frontend_problems,
            );
        }
        // Services whose output may differ: translated again, or in the
        // check now or before (or the node's address moved: NodePorts).
        let mut touched = dirty;
        touched.extend(contested.iter().cloned());
        touched.extend(std::mem::take(&mut self.contested));
        self.contested = contested;
        for key in touched {
            // The switch names a Service `namespace/name`: its key.
            let spec = match self.contested.contains(&key) {
                true => resolved.remove(&key),
                false => self.translated.get(&key).and_then(|t| t.spec.clone()),
            };
            match spec {
                Some(spec) => {
                    if self.output.services.get(&key) != Some(&spec) {
                        patch.upsert.push(spec.clone());
                        self.output.services.insert(key, spec);
                    }
                }
                None => {
                    if self.output.services.remove(&key).is_some() {
                        patch.remove.push(key);
                    }
                }
            }
        }
        patch.upsert.sort_by(|a, b| a.name.cmp(&b.name));
        patch.remove.sort();

        let mut problems: Vec<Problem> = self
            .node_problems
            .iter()
            .chain(&self.pod_problems)
            .chain(&self.frontend_problems)
            .cloned()
            .chain(
                self.translated
                    .values()
                    .flat_map(|t| t.problems.iter().cloned()),
            )
            .collect();
        problems.sort();
        problems.dedup();
        self.output.problems = problems;
        patch
    }

    /// The keys of Services that share a frontend with another Service.
    fn contested_services(&self, node_ip: Option<Ipv4Addr>) -> BTreeSet<String> {
        let node_ip = node_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let mut owner: HashMap<Frontend, &str> = HashMap::with_capacity(self.translated.len() * 2);
        let mut contested = BTreeSet::new();
        for (key, t) in &self.translated {
            let Some(spec) = &t.spec else { continue };
            let mut claim = |f: Frontend| match owner.get(&f) {
                Some(o) if *o != key.as_str() => {
                    contested.insert((*o).to_owned());
                    contested.insert(key.clone());
                }
                Some(_) => {}
                None => {
                    owner.insert(f, key.as_str());
                }
            };
            for p in &spec.ports {
                for ip in spec.cluster_ips.iter().chain(&spec.external_ips) {
                    claim((*ip, p.port, p.protocol));
                }
                if let Some(np) = p.node_port {
                    claim((node_ip, np, p.protocol));
                }
            }
        }
        contested
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::translate;
    use super::*;
    use podswitch_switch::control::api::ServiceSettings;

    fn config() -> TranslateConfig {
        TranslateConfig {
            node_name: "node-1".into(),
            settings: ServiceSettings::default(),
        }
    }

    fn service(name: &str, ip: &str, created: &str) -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
            "spec": {"clusterIP": ip, "selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns",
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip]})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// Applies `edit`, tells the translator `changes`, and checks its
    /// output against a translation from scratch.
    fn step(
        t: &mut Translator,
        o: &mut ClusterObjects,
        edit: impl FnOnce(&mut ClusterObjects),
        changes: Changes,
    ) -> TopologyPatch {
        let before = t.topology().clone();
        edit(o);
        let patch = t.update(o, &changes);
        let scratch = translate(o, &config());
        assert_eq!(t.topology(), &scratch, "incremental == from scratch");
        assert_eq!(
            patch,
            super::super::diff(&before, &scratch),
            "patch == diff"
        );
        patch
    }

    #[test]
    fn incremental_translation_equals_translation_from_scratch() {
        let mut o = ClusterObjects::default();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            o.services.insert(
                format!("ns/{name}"),
                service(name, &format!("10.96.0.{}", 10 + i), "2026-01-01T00:00:00Z"),
            );
            o.endpoint_slices.insert(
                format!("ns/{name}-1"),
                slice(&format!("{name}-1"), name, &["10.244.1.2"]),
            );
        }
        let mut t = Translator::new(config());
        let first = step(&mut t, &mut o, |_| {}, Changes::default());
        assert_eq!(first.upsert.len(), 3);

        // One endpoint more on b's slice: only b is upserted.
        let p = step(
            &mut t,
            &mut o,
            |o| {
                o.endpoint_slices.insert(
                    "ns/b-1".into(),
                    slice("b-1", "b", &["10.244.1.2", "10.244.1.3"]),
                );
            },
            Changes {
                endpoint_slices: ["ns/b-1".to_string()].into(),
                ..Default::default()
            },
        );
        assert_eq!(
            p.upsert.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["ns/b"]
        );

        // A slice relabelled from c to a: both change.
        let p = step(
            &mut t,
            &mut o,
            |o| {
                o.endpoint_slices
                    .insert("ns/c-1".into(), slice("c-1", "a", &["10.244.1.9"]));
            },
            Changes {
                endpoint_slices: ["ns/c-1".to_string()].into(),
                ..Default::default()
            },
        );
        assert_eq!(p.upsert.len(), 2);

        // A newer Service takes a's cluster IP: it is left out; when a
        // goes, it gets its frontend.
        step(
            &mut t,
            &mut o,
            |o| {
                o.services.insert(
                    "ns/d".into(),
                    service("d", "10.96.0.10", "2026-02-01T00:00:00Z"),
                );
            },
            Changes {
                services: ["ns/d".to_string()].into(),
                ..Default::default()
            },
        );
        assert!(!t.topology().services.contains_key("ns/d"));
        let p = step(
            &mut t,
            &mut o,
            |o| {
                o.services.remove("ns/a");
            },
            Changes {
                services: ["ns/a".to_string()].into(),
                ..Default::default()
            },
        );
        assert_eq!(p.remove, ["ns/a"]);
        assert_eq!(
            p.upsert.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["ns/d"]
        );
    }
}

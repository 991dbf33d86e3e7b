//! Translation: Kubernetes objects → one node's switch topology.
//!
//! The agent's sources (the Kubernetes API watcher, and the file source
//! and lab that derive the same objects themselves) all end here: a
//! [`ClusterObjects`] set of real Kubernetes objects (k8s-openapi types:
//! Nodes, this node's Pods, Services, `discovery.k8s.io/v1`
//! EndpointSlices) goes through [`translate`] into a [`NodeTopology`]: the
//! other nodes as the switch's [`RemoteNode`]s, the Services as its
//! [`ServiceSpec`]s, this node's pods, and a [`Problem`] for every object
//! (or part of one) that was left out. Then [`diff`] turns two states into
//! the switch's incremental `patch_services`, and
//! [`NodeTopology::full_sync`] gives `set_remote_nodes` + `set_services`.
//!
//! Everything here is pure (no I/O, no clock): same objects in, same
//! topology out. A bad object never fails the translation and never holds
//! back a valid one: what the switch would refuse (an overlapping pod
//! CIDR, a cluster IP outside the service CIDRs, a frontend two Services
//! claim) is left out here, so that the switch takes the rest.
//!
//! Per kind: [`nodes`], [`services`] (Services + EndpointSlices, the part
//! the lab shares), [`pods`].

pub mod diff;
pub mod endpoints;
pub mod incremental;
pub mod nodes;
pub mod pods;
pub mod problem;
pub mod services;
pub mod synthetic;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::Resource;
use podswitch_switch::control::api::{RemoteNode, ServiceSettings, ServiceSpec};
use serde::Serialize;

pub use diff::{diff, needs_full_sync, FullSync, TopologyPatch};
pub use incremental::{Changes, Translator};
pub use nodes::{LocalNode, FLANNEL_BACKEND_DATA_ANNOTATION, VTEP_MAC_ANNOTATION};
pub use pods::LocalPod;
pub use problem::{ObjectKind, ObjectRef, Outcome, Problem, Reason};
pub use services::{translate_service, TranslatedService, SERVICE_NAME_LABEL};

/// What translation needs besides the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateConfig {
    /// The node this switch serves (its Node's `metadata.name`).
    pub node_name: String,
    /// The cluster's service settings (service CIDRs, NodePort range,
    /// masquerade), from the daemon config: Services are checked against
    /// them and full syncs carry them.
    pub settings: ServiceSettings,
}

/// The Kubernetes objects translation reads, keyed as the API keys them:
/// Nodes by name, the rest by `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterObjects {
    pub nodes: BTreeMap<String, Node>,
    pub pods: BTreeMap<String, Pod>,
    pub services: BTreeMap<String, Service>,
    pub endpoint_slices: BTreeMap<String, EndpointSlice>,
}

/// Why an object could not be read into a [`ClusterObjects`].
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("item {index}: not a Kubernetes object (no kind or apiVersion)")]
    NotAnObject { index: usize },
    #[error("{kind} {name:?}: field `{field}`: {message}")]
    Decode {
        kind: String,
        name: String,
        field: String,
        message: String,
    },
}

/// The key of an object in [`ClusterObjects`]: `name`, or
/// `namespace/name` (namespace defaulted as the API server does).
pub fn object_key(namespace: Option<&str>, name: &str, namespaced: bool) -> String {
    match namespaced {
        false => name.to_owned(),
        true => format!(
            "{}/{name}",
            namespace.filter(|n| !n.is_empty()).unwrap_or("default")
        ),
    }
}

fn decode<K: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    kind: &str,
    name: &str,
) -> Result<K, ObjectError> {
    serde_path_to_error::deserialize(value).map_err(|e| ObjectError::Decode {
        kind: kind.to_owned(),
        name: name.to_owned(),
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

impl ClusterObjects {
    /// Adds the objects of a JSON document as `kubectl get -o json`
    /// prints it: one object, or a `List` (or `NodeList`, ...) of them.
    /// Kinds translation does not read are ignored; returns how many
    /// objects were added.
    pub fn insert_json(&mut self, value: serde_json::Value) -> Result<usize, ObjectError> {
        let items = match value.get("items") {
            Some(serde_json::Value::Array(items)) => items.clone(),
            _ => vec![value],
        };
        let mut added = 0;
        for (index, item) in items.into_iter().enumerate() {
            let (Some(kind), Some(api_version)) = (
                item.get("kind").and_then(|k| k.as_str()).map(str::to_owned),
                item.get("apiVersion")
                    .and_then(|k| k.as_str())
                    .map(str::to_owned),
            ) else {
                return Err(ObjectError::NotAnObject { index });
            };
            let name = item
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_owned();
            match (api_version.as_str(), kind.as_str()) {
                (Node::API_VERSION, Node::KIND) => {
                    let node: Node = decode(item, &kind, &name)?;
                    self.nodes.insert(name, node);
                }
                (Pod::API_VERSION, Pod::KIND) => {
                    let pod: Pod = decode(item, &kind, &name)?;
                    let key = object_key(pod.metadata.namespace.as_deref(), &name, true);
                    self.pods.insert(key, pod);
                }
                (Service::API_VERSION, Service::KIND) => {
                    let svc: Service = decode(item, &kind, &name)?;
                    let key = object_key(svc.metadata.namespace.as_deref(), &name, true);
                    self.services.insert(key, svc);
                }
                (EndpointSlice::API_VERSION, EndpointSlice::KIND) => {
                    let slice: EndpointSlice = decode(item, &kind, &name)?;
                    let key = object_key(slice.metadata.namespace.as_deref(), &name, true);
                    self.endpoint_slices.insert(key, slice);
                }
                _ => continue,
            }
            added += 1;
        }
        Ok(added)
    }

    /// Plays the EndpointSlice controller for sources without one (the
    /// file source, and the lab whose agents read it): adds the slices
    /// [`endpoints::derive_endpoint_slices`] gives every Service over the
    /// pods held, keeping a slice of the same key that is already there
    /// (a hand-written one wins).
    pub fn derive_endpoint_slices(&mut self) {
        for svc in self.services.values() {
            for slice in endpoints::derive_endpoint_slices(svc, self.pods.values()) {
                let m = &slice.metadata;
                let key = object_key(
                    m.namespace.as_deref(),
                    m.name.as_deref().unwrap_or(""),
                    true,
                );
                self.endpoint_slices.entry(key).or_insert(slice);
            }
        }
    }

    /// The EndpointSlices of each Service, by the Service's
    /// `namespace/name` (from the [`SERVICE_NAME_LABEL`] label). Slices
    /// without the label are not a Service's (they belong to another
    /// controller) and are not returned.
    pub fn slices_by_service(&self) -> HashMap<String, Vec<&EndpointSlice>> {
        let mut out: HashMap<String, Vec<&EndpointSlice>> = HashMap::new();
        for slice in self.endpoint_slices.values() {
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let key = object_key(slice.metadata.namespace.as_deref(), service, true);
            out.entry(key).or_default().push(slice);
        }
        out
    }
}

/// One node's switch topology, translated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeTopology {
    /// From the config, passed through.
    pub settings: ServiceSettings,
    /// This node, when its Node object is known.
    pub local_node: Option<LocalNode>,
    /// The other nodes, sorted by name.
    pub remote_nodes: Vec<RemoteNode>,
    /// The Services the switch serves, by `namespace/name`.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Pods scheduled on this node, sorted by name.
    pub local_pods: Vec<LocalPod>,
    /// Every object (or part) left out or worth a warning, sorted.
    pub problems: Vec<Problem>,
}

impl NodeTopology {
    /// Everything the switch needs, as one full sync.
    pub fn full_sync(&self) -> FullSync {
        FullSync {
            settings: self.settings.clone(),
            remote_nodes: self.remote_nodes.clone(),
            services: self.services.values().cloned().collect(),
        }
    }

    /// An empty topology (what a switch holds before the first sync).
    pub fn empty(settings: ServiceSettings) -> Self {
        NodeTopology {
            settings,
            local_node: None,
            remote_nodes: Vec::new(),
            services: BTreeMap::new(),
            local_pods: Vec::new(),
            problems: Vec::new(),
        }
    }
}

/// Translates `objects` into the topology of the switch on
/// `config.node_name`. Never fails: see [`NodeTopology::problems`].
pub fn translate(objects: &ClusterObjects, config: &TranslateConfig) -> NodeTopology {
    let mut problems = Vec::new();
    let (local_node, remote_nodes) =
        nodes::translate_nodes(&objects.nodes, &config.node_name, &mut problems);
    let local_pods = pods::translate_pods(
        &objects.pods,
        &config.node_name,
        local_node.as_ref(),
        &mut problems,
    );

    let slices = objects.slices_by_service();
    let mut services = BTreeMap::new();
    let mut created = HashMap::with_capacity(objects.services.len());
    for (key, svc) in &objects.services {
        let theirs = slices.get(key).map(Vec::as_slice).unwrap_or_default();
        let t = translate_service(svc, theirs, &config.settings);
        problems.extend(t.problems);
        if let Some(spec) = t.spec {
            created.insert(spec.name.clone(), t.created);
            services.insert(spec.name.clone(), spec);
        }
    }
    services::resolve_frontends(
        &mut services,
        &created,
        local_node.as_ref().and_then(|n| n.underlay_ipv4),
        &mut problems,
    );
    problems.sort();
    problems.dedup();

    NodeTopology {
        settings: config.settings.clone(),
        local_node,
        remote_nodes,
        services,
        local_pods,
        problems,
    }
}

#[cfg(test)]
mod tests;

//! The agent's copy of the cluster objects, kept from watcher events.
//!
//! kube's watcher reports a (re-)list as `Init`, `InitApply` per object
//! and `InitDone`, and changes as `Apply` / `Delete`. A re-list (at start,
//! and after a `410 Gone` when the watch fell too far behind) is buffered
//! and replaces that resource's objects whole at `InitDone`, so objects
//! deleted while the watch was away disappear, and the half-listed state
//! is never translated.
//!
//! Changes that translation does not read (a Node's heartbeat, a Pod's
//! container statuses) are not counted as changes, so they cause no
//! translation.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use crate::translate::{
    object_key, Changes, ClusterObjects, ObjectKind, FLANNEL_BACKEND_DATA_ANNOTATION,
    VTEP_MAC_ANNOTATION,
};

/// One watcher event of one of the watched resources.
// Events are moved once, from a watcher to the store, never kept in bulk:
// boxing the large variants would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ClusterEvent {
    Node(Event<Node>),
    Pod(Event<Pod>),
    Service(Event<Service>),
    EndpointSlice(Event<EndpointSlice>),
    /// The problems of the source's input as a whole (the file source's
    /// unreadable files and undecodable documents): replaces the last.
    InputProblems(Vec<super::InputProblem>),
}

/// A failed list or watch of one resource (the watcher retries it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchFailure {
    pub resource: ObjectKind,
    /// The error and its causes.
    pub message: String,
}

/// A watched object kind: its key and what of it translation reads.
trait Watched: Clone {
    fn key(&self) -> String;
    /// Equal in everything translation reads.
    fn same_for_translation(&self, other: &Self) -> bool;
}

impl Watched for Node {
    fn key(&self) -> String {
        object_key(None, self.metadata.name.as_deref().unwrap_or(""), false)
    }
    fn same_for_translation(&self, other: &Self) -> bool {
        let annotation = |n: &Node, k: &str| {
            n.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k).cloned())
        };
        let cidrs = |n: &Node| {
            n.spec
                .as_ref()
                .map(|s| (s.pod_cidr.clone(), s.pod_cidrs.clone()))
        };
        let addresses = |n: &Node| n.status.as_ref().and_then(|s| s.addresses.clone());
        cidrs(self) == cidrs(other)
            && addresses(self) == addresses(other)
            && [VTEP_MAC_ANNOTATION, FLANNEL_BACKEND_DATA_ANNOTATION]
                .iter()
                .all(|k| annotation(self, k) == annotation(other, k))
    }
}

impl Watched for Pod {
    fn key(&self) -> String {
        object_key(
            self.metadata.namespace.as_deref(),
            self.metadata.name.as_deref().unwrap_or(""),
            true,
        )
    }
    fn same_for_translation(&self, other: &Self) -> bool {
        let spec = |p: &Pod| {
            p.spec
                .as_ref()
                .map(|s| (s.node_name.clone(), s.host_network))
        };
        let status = |p: &Pod| {
            p.status
                .as_ref()
                .map(|s| (s.pod_ip.clone(), s.pod_ips.clone(), s.phase.clone()))
        };
        spec(self) == spec(other)
            && status(self) == status(other)
            && self.metadata.deletion_timestamp == other.metadata.deletion_timestamp
    }
}

impl Watched for Service {
    fn key(&self) -> String {
        object_key(
            self.metadata.namespace.as_deref(),
            self.metadata.name.as_deref().unwrap_or(""),
            true,
        )
    }
    fn same_for_translation(&self, other: &Self) -> bool {
        self.spec == other.spec
            && self.status == other.status
            && self.metadata.creation_timestamp == other.metadata.creation_timestamp
    }
}

impl Watched for EndpointSlice {
    fn key(&self) -> String {
        object_key(
            self.metadata.namespace.as_deref(),
            self.metadata.name.as_deref().unwrap_or(""),
            true,
        )
    }
    fn same_for_translation(&self, other: &Self) -> bool {
        self.address_type == other.address_type
            && self.endpoints == other.endpoints
            && self.ports == other.ports
            && self.metadata.labels == other.metadata.labels
    }
}

/// The list-and-watch state of one resource.
#[derive(Debug)]
struct Listing<K> {
    /// Objects of a re-list in progress (between `Init` and `InitDone`).
    relist: Option<BTreeMap<String, K>>,
    /// Listed completely at least once.
    listed: bool,
}

impl<K> Default for Listing<K> {
    fn default() -> Self {
        Listing {
            relist: None,
            listed: false,
        }
    }
}

/// Applies one event to `objects`; whether anything translation reads
/// changed. The keys of changed objects go to `changed`.
fn apply<K: Watched>(
    objects: &mut BTreeMap<String, K>,
    listing: &mut Listing<K>,
    event: Event<K>,
    changed: &mut BTreeSet<String>,
) -> bool {
    match event {
        Event::Init => {
            listing.relist = Some(BTreeMap::new());
            false
        }
        Event::InitApply(obj) => {
            listing
                .relist
                .get_or_insert_with(BTreeMap::new)
                .insert(obj.key(), obj);
            false
        }
        Event::InitDone => {
            let fresh = listing.relist.take().unwrap_or_default();
            let mut any = !listing.listed;
            for (k, new) in &fresh {
                if objects
                    .get(k)
                    .is_none_or(|old| !old.same_for_translation(new))
                {
                    changed.insert(k.clone());
                    any = true;
                }
            }
            for k in objects.keys() {
                if !fresh.contains_key(k) {
                    changed.insert(k.clone());
                    any = true;
                }
            }
            *objects = fresh;
            listing.listed = true;
            any
        }
        Event::Apply(obj) => {
            let key = obj.key();
            let any = objects
                .get(&key)
                .is_none_or(|old| !old.same_for_translation(&obj));
            if any {
                changed.insert(key.clone());
            }
            objects.insert(key, obj);
            any
        }
        Event::Delete(obj) => {
            let key = obj.key();
            let any = objects.remove(&key).is_some();
            if any {
                changed.insert(key);
            }
            any
        }
    }
}

/// The watched objects and the listing state of each resource.
#[derive(Debug, Default)]
pub struct ClusterStore {
    objects: ClusterObjects,
    nodes: Listing<Node>,
    pods: Listing<Pod>,
    services: Listing<Service>,
    endpoint_slices: Listing<EndpointSlice>,
    changes: Changes,
}

impl ClusterStore {
    /// Applies one event; whether translation would see a difference.
    pub fn apply(&mut self, event: ClusterEvent) -> bool {
        let o = &mut self.objects;
        let c = &mut self.changes;
        let mut scratch = BTreeSet::new();
        match event {
            ClusterEvent::Node(e) => {
                let any = apply(&mut o.nodes, &mut self.nodes, e, &mut scratch);
                c.nodes |= any;
                any
            }
            ClusterEvent::Pod(e) => {
                let any = apply(&mut o.pods, &mut self.pods, e, &mut scratch);
                c.pods |= any;
                any
            }
            ClusterEvent::Service(e) => {
                apply(&mut o.services, &mut self.services, e, &mut c.services)
            }
            ClusterEvent::EndpointSlice(e) => apply(
                &mut o.endpoint_slices,
                &mut self.endpoint_slices,
                e,
                &mut c.endpoint_slices,
            ),
            ClusterEvent::InputProblems(_) => false,
        }
    }

    /// What changed since the last call (for [`crate::translate::Translator`]).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Every resource has been listed completely at least once: only then
    /// is a translation complete enough to push (before, a Service could
    /// be seen without its slices and lose its endpoints on the switch).
    pub fn all_listed(&self) -> bool {
        self.nodes.listed && self.pods.listed && self.services.listed && self.endpoint_slices.listed
    }

    pub fn objects(&self) -> &ClusterObjects {
        &self.objects
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn service(name: &str, cluster_ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                cluster_ip: Some(cluster_ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_relist_replaces_the_objects_whole_at_init_done() {
        let mut store = ClusterStore::default();
        let ev = |e| ClusterEvent::Service(e);
        assert!(!store.apply(ev(Event::Init)));
        assert!(!store.apply(ev(Event::InitApply(service("a", "10.96.0.10")))));
        assert!(!store.apply(ev(Event::InitApply(service("b", "10.96.0.11")))));
        assert!(store.objects().services.is_empty(), "not before InitDone");
        assert!(store.apply(ev(Event::InitDone)));
        assert_eq!(store.objects().services.len(), 2);
        assert!(!store.all_listed(), "the other resources are not listed");

        // A re-list (after 410 Gone) without `a`: `a` was deleted meanwhile.
        store.apply(ev(Event::Init));
        store.apply(ev(Event::InitApply(service("b", "10.96.0.11"))));
        assert_eq!(store.objects().services.len(), 2, "still the old set");
        assert!(store.apply(ev(Event::InitDone)));
        assert_eq!(
            store.objects().services.keys().collect::<Vec<_>>(),
            ["ns/b"]
        );
        // The same list again changes nothing.
        store.apply(ev(Event::Init));
        store.apply(ev(Event::InitApply(service("b", "10.96.0.11"))));
        assert!(!store.apply(ev(Event::InitDone)));
    }

    #[test]
    fn changes_translation_does_not_read_are_not_changes() {
        let mut store = ClusterStore::default();
        let a = service("a", "10.96.0.10");
        assert!(store.apply(ClusterEvent::Service(Event::Apply(a.clone()))));
        let mut relabelled = a.clone();
        relabelled.metadata.resource_version = Some("99".into());
        relabelled.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        assert!(!store.apply(ClusterEvent::Service(Event::Apply(relabelled))));
        assert!(store.apply(ClusterEvent::Service(Event::Apply(service(
            "a",
            "10.96.0.12"
        )))));
        assert!(store.apply(ClusterEvent::Service(Event::Delete(a.clone()))));
        assert!(!store.apply(ClusterEvent::Service(Event::Delete(a))));

        let node = |heartbeat: &str| Node {
            metadata: ObjectMeta {
                name: Some("node-2".into()),
                resource_version: Some(heartbeat.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(store.apply(ClusterEvent::Node(Event::Apply(node("1")))));
        assert!(!store.apply(ClusterEvent::Node(Event::Apply(node("2")))));
    }
}

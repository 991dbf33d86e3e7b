//! What to send to the switch: the whole translated state
//! ([`FullSync`]: `set_remote_nodes` + `set_services`), or what changed
//! between two states ([`TopologyPatch`]: `set_remote_nodes` when the
//! nodes changed, `patch_services { upsert, remove }` for the Services).

use podswitch_switch::control::api::{RemoteNode, Request, ServiceSettings, ServiceSpec};

use super::NodeTopology;

/// Everything the switch gets from the agent, for a start, a restarted
/// switch, or a periodic resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullSync {
    pub settings: ServiceSettings,
    pub remote_nodes: Vec<RemoteNode>,
    /// Sorted by name.
    pub services: Vec<ServiceSpec>,
}

impl FullSync {
    /// The control API requests, in order: nodes first, so that routes to
    /// remote endpoints exist when their Services appear.
    pub fn requests(&self) -> Vec<Request> {
        vec![
            Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs {
                nodes: self.remote_nodes.clone(),
            }),
            Request::SetServices(podswitch_api::SetServicesArgs {
                settings: Some(self.settings.clone()),
                services: self.services.clone(),
            }),
        ]
    }
}

/// The difference between two translated states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyPatch {
    /// The new list of other nodes, when it changed (the switch replaces
    /// it whole).
    pub remote_nodes: Option<Vec<RemoteNode>>,
    /// Services that are new or changed, sorted by name.
    pub upsert: Vec<ServiceSpec>,
    /// Names of Services that are gone, sorted.
    pub remove: Vec<String>,
}

impl TopologyPatch {
    pub fn is_empty(&self) -> bool {
        self.remote_nodes.is_none() && self.upsert.is_empty() && self.remove.is_empty()
    }

    /// The control API requests: `set_remote_nodes` if the nodes changed,
    /// then one atomic `patch_services` if any Service did.
    pub fn requests(&self) -> Vec<Request> {
        let mut out = Vec::new();
        if let Some(nodes) = &self.remote_nodes {
            out.push(Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs {
                nodes: nodes.clone(),
            }));
        }
        if !self.upsert.is_empty() || !self.remove.is_empty() {
            out.push(Request::PatchServices(podswitch_api::PatchServicesArgs {
                upsert: self.upsert.clone(),
                remove: self.remove.clone(),
            }));
        }
        out
    }
}

/// What turns `old` into `new` on a switch that holds `old`. Settings are
/// not part of a patch: when they differ, send `new.full_sync()` instead
/// ([`needs_full_sync`]).
pub fn diff(old: &NodeTopology, new: &NodeTopology) -> TopologyPatch {
    let mut patch = TopologyPatch {
        remote_nodes: (old.remote_nodes != new.remote_nodes).then(|| new.remote_nodes.clone()),
        ..TopologyPatch::default()
    };
    let mut olds = old.services.iter().peekable();
    let mut news = new.services.iter().peekable();
    // A merge walk over the two sorted maps.
    loop {
        match (olds.peek(), news.peek()) {
            (None, None) => break,
            (Some((name, _)), None) => {
                patch.remove.push((*name).clone());
                olds.next();
            }
            (None, Some((_, spec))) => {
                patch.upsert.push((*spec).clone());
                news.next();
            }
            (Some((on, os)), Some((nn, ns))) => match on.cmp(nn) {
                std::cmp::Ordering::Less => {
                    patch.remove.push((*on).clone());
                    olds.next();
                }
                std::cmp::Ordering::Greater => {
                    patch.upsert.push((*ns).clone());
                    news.next();
                }
                std::cmp::Ordering::Equal => {
                    if os != ns {
                        patch.upsert.push((*ns).clone());
                    }
                    olds.next();
                    news.next();
                }
            },
        }
    }
    patch
}

/// Whether going from `old` to `new` needs a full sync rather than a
/// patch (the service settings changed).
pub fn needs_full_sync(old: &NodeTopology, new: &NodeTopology) -> bool {
    old.settings != new.settings
}

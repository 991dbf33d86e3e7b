//! Topology sources: where the agent learns the cluster, and how what it
//! learns reaches the switch.
//!
//! ```text
//!  Kubernetes API ── watchers (kubernetes.rs) ─┐
//!                                              ├─> ClusterEvent stream
//!  manifest files ── polling (files.rs) ───────┘        │
//!                                                        v
//!        store.rs   ClusterStore: the objects, re-lists applied whole
//!                                                        │ changed
//!        push.rs    debounce ─> translate ─> diff ─> TopologySink
//!                                                        │
//!        switch_sink.rs  SwitchSink: the switch's control socket
//! ```
//!
//! A [`TopologySink`] receives a full sync (at start, after a sink error,
//! when the switch restarted, and periodically) or a patch (what changed
//! since the last successful push). Nothing is pushed before every
//! resource has been listed once, and nothing is taken away when the API
//! is unreachable: the switch keeps forwarding on its last topology
//! (fail-static).

pub mod files;
pub mod kubernetes;
pub mod push;
pub mod status;
pub mod store;
pub mod switch_sink;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::translate::{FullSync, ObjectKind, Problem, TopologyPatch};

pub use files::{run_file_source, FileSourceConfig};
pub use kubernetes::{
    cluster_events, run_kubernetes_source, run_kubernetes_source_with_client,
    KubernetesSourceConfig,
};
pub use push::{run_push_loop, PushConfig};
pub use status::{StatusFileSink, DEFAULT_STATUS_FILE};
pub use store::{ClusterEvent, ClusterStore, WatchFailure};
pub use switch_sink::SwitchSink;
pub use tokio::runtime::Runtime;

/// Why a sink could not take a topology. The push loop logs it, retries
/// with backoff and then sends a full sync.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The receiver could not be reached (the switch is down or
    /// restarting); nothing is known about what it holds.
    #[error("cannot reach the switch")]
    Unreachable(#[source] podswitch_switch::control::client::ClientError),
    /// The receiver refused a request (named by its op).
    #[error("the switch refused {op}")]
    Refused {
        op: &'static str,
        #[source]
        source: podswitch_switch::control::api::ApiError,
    },
    /// The switch on the socket serves another node.
    #[error("the switch serves node {found:?}, not this agent's node {expected:?}")]
    WrongSwitch { expected: String, found: String },
    /// Any other failure of a sink.
    #[error("{0}")]
    Other(String),
}

/// Where translated topologies go: the switch (see [`SwitchSink`]), or a
/// test's recorder. Calls are blocking; the push loop runs them off the
/// async runtime's threads, one at a time.
pub trait TopologySink: Send + 'static {
    /// Makes the receiver hold exactly `sync`.
    fn full_sync(&mut self, sync: &FullSync) -> Result<(), SinkError>;

    /// Applies `patch` to what the last successful push left.
    fn apply_patch(&mut self, patch: &TopologyPatch) -> Result<(), SinkError>;

    /// Whether the receiver may have lost what was pushed (a switch that
    /// restarted since): then the loop sends a full sync. Asked every
    /// [`PushConfig::sink_check_interval`].
    fn needs_full_sync(&mut self) -> bool {
        false
    }

    /// The source's status after each translation and each watch error.
    /// Must not block.
    fn report(&mut self, _status: &SourceStatus) {}
}

/// What a source knows about itself: shown by the agent's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceStatus {
    /// Every watched resource has been listed at least once.
    pub listed: bool,
    /// Problems of the last translation.
    pub problems: Vec<Problem>,
    /// Problems of the input itself (the file source: a file that does
    /// not parse, a document that does not decode).
    pub input_problems: Vec<InputProblem>,
    /// Watch and list failures per resource since start.
    pub watch_errors: BTreeMap<ObjectKind, u64>,
    /// The last of them.
    pub last_watch_error: Option<String>,
    pub full_syncs: u64,
    pub patches: u64,
    pub sink_errors: u64,
    pub last_sink_error: Option<String>,
}

/// A problem with a source's input, before translation: which file,
/// where in it, what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct InputProblem {
    pub file: String,
    /// Document, list item, line, when known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for InputProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at.is_empty() {
            true => write!(f, "{}: {}", self.file, self.message),
            false => write!(f, "{}: {}: {}", self.file, self.at, self.message),
        }
    }
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Neither a kubeconfig nor the in-cluster service account was usable.
    #[error("no Kubernetes client configuration (kubeconfig or in-cluster service account)")]
    Config(#[source] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client")]
    Client(#[source] kube::Error),
    /// The kubeconfig given could not be read or used.
    #[error("cannot use the kubeconfig {path}")]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A sink call panicked.
    #[error("the topology sink panicked")]
    SinkPanicked(#[source] tokio::task::JoinError),
}

/// The async runtime the agent's sources run on (two worker threads:
/// the watchers and the push loop are light; sink calls block on their
/// own threads).
pub fn runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// An error and its causes on one line (`a: b: c`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

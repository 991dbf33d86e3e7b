//! The Kubernetes source: list-and-watch on the API server, translated
//! and pushed to this node's switch.
//!
//! Four kube-rs watchers (the reflector pattern of client-go's informers):
//!
//! | resource | scope | selector |
//! | --- | --- | --- |
//! | `v1` Nodes | all | – |
//! | `v1` Pods | this node's | field `spec.nodeName=<node>` |
//! | `v1` Services | all namespaces | label `!service.kubernetes.io/service-proxy-name` |
//! | `discovery.k8s.io/v1` EndpointSlices | all namespaces | labels `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless` |
//!
//! The label selectors are kube-proxy's: a Service labelled with a
//! service-proxy-name belongs to another proxy, and headless Services'
//! slices have no frontend. These are exactly the `get`/`list`/`watch`
//! permissions of `configs/kubernetes/rbac.yaml`.
//!
//! kube's watcher lists (in pages of 500), then watches from the list's
//! resourceVersion with bookmarks, resumes a closed watch from the last
//! resourceVersion it saw, and re-lists from scratch when the API server
//! answers `410 Gone` (the watch fell out of the server's window). After
//! an error each stream waits as kube's default backoff says (client-go's:
//! 800 ms doubling to 30 s, up to 100% jitter), so an API server that
//! fails is not hammered; errors are reported to the sink's status and
//! never stop the source. The events go to the push loop
//! ([`super::push`]), which debounces, translates and pushes.
//!
//! The backoff is applied by [`with_backoff`], not kube's
//! `WatchStreamExt::default_backoff`: kube's `StreamBackoff` resets on any
//! `Ok` item, and the watcher yields `Ok(Event::Init)` before every list
//! attempt, so with it consecutive failed lists never wait longer than the
//! first step (seen with kube 5.0; the mock tests check the doubling).
//!
//! Entry points: [`run_kubernetes_source`] (client from a kubeconfig or
//! the in-cluster service account, as `kube::Config::infer` finds them)
//! and [`run_kubernetes_source_with_client`] (a given client; the tests
//! use kube's mock service).

use std::fmt::Debug;
use std::time::Duration;

use futures::stream::{select_all, BoxStream};
use futures::{Stream, StreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, watcher, DefaultBackoff, Event};
use kube::{Api, Client};
use podswitch_switch::control::api::ServiceSettings;
use serde::de::DeserializeOwned;

use super::push::{run_push_loop, PushConfig};
use super::store::{ClusterEvent, WatchFailure};
use super::{error_chain, SourceError, TopologySink};
use crate::translate::{ObjectKind, TranslateConfig};

/// Services (and their slices) with this label are served by another
/// proxy (KEP-2447's `service.kubernetes.io/service-proxy-name`).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// The EndpointSlice controller labels the slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// What the source reads, as RBAC names it: (API group, resource). Each
/// is read with `list` and `watch` only; `configs/kubernetes/rbac.yaml`
/// grants `get`, `list` and `watch` on exactly these (its test checks).
pub const WATCHED_RESOURCES: [(&str, &str); 4] = [
    ("", "nodes"),
    ("", "pods"),
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
];

/// What the Kubernetes source needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSourceConfig {
    /// This node's name (its Node's `metadata.name`, the Pod field
    /// `spec.nodeName`; in the DaemonSet, from the downward API).
    pub node_name: String,
    /// The cluster's service settings (from the daemon config).
    pub settings: ServiceSettings,
    pub push: PushConfig,
}

impl KubernetesSourceConfig {
    pub fn new(node_name: impl Into<String>, settings: ServiceSettings) -> Self {
        KubernetesSourceConfig {
            node_name: node_name.into(),
            settings,
            push: PushConfig::default(),
        }
    }
}

/// Runs the source with a client configured as `kubectl` would be: the
/// kubeconfig (`$KUBECONFIG`, `~/.kube/config`) if there is one, else
/// the in-cluster service account (`KUBERNETES_SERVICE_HOST`/`_PORT`
/// and `/var/run/secrets/kubernetes.io/serviceaccount`). Runs until the
/// task is dropped; API errors are retried, never returned.
pub async fn run_kubernetes_source<S: TopologySink>(
    config: KubernetesSourceConfig,
    sink: S,
) -> Result<(), SourceError> {
    let kube_config = kube::Config::infer().await.map_err(SourceError::Config)?;
    let client = Client::try_from(kube_config).map_err(SourceError::Client)?;
    run_kubernetes_source_with_client(client, config, sink).await
}

/// A client from the kubeconfig at `kubeconfig`, or, without one, as
/// [`run_kubernetes_source`] infers it (`$KUBECONFIG`, `~/.kube/config`,
/// the in-cluster service account).
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<Client, SourceError> {
    let config = match kubeconfig {
        None => kube::Config::infer().await.map_err(SourceError::Config)?,
        Some(path) => {
            let bad = |e: kube::config::KubeconfigError| SourceError::Kubeconfig {
                path: path.to_path_buf(),
                source: Box::new(e),
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(bad)?
        }
    };
    Client::try_from(config).map_err(SourceError::Client)
}

/// Runs the source with `client`.
pub async fn run_kubernetes_source_with_client<S: TopologySink>(
    client: Client,
    config: KubernetesSourceConfig,
    sink: S,
) -> Result<(), SourceError> {
    tracing::info!(node = %config.node_name, "watching the Kubernetes API");
    let events = cluster_events(client, &config.node_name);
    let translate_config = TranslateConfig {
        node_name: config.node_name,
        settings: config.settings,
    };
    run_push_loop(events, translate_config, config.push, sink).await
}

/// This node's IPv4 pod CIDR, once the controller manager has assigned
/// one (`spec.podCIDRs`, else `spec.podCIDR`): the switch needs it to
/// start, and the downward API does not expose it. Waits (watching the
/// one Node, with backoff on errors) until it is there.
pub async fn wait_for_pod_cidr(client: Client, node_name: &str) -> Ipv4Net {
    let config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut nodes = std::pin::pin!(with_backoff(watcher(Api::<Node>::all(client), config)));
    let mut logged = false;
    while let Some(item) = nodes.next().await {
        let node = match item {
            Ok(Event::Apply(node) | Event::InitApply(node)) => node,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(node = node_name, error = %error_chain(&e), "reading this node's Node");
                continue;
            }
        };
        let mut problems = Vec::new();
        let one = [(node_name.to_owned(), node)].into();
        let (local, _) = crate::translate::nodes::translate_nodes(&one, node_name, &mut problems);
        let cidr = local
            .into_iter()
            .flat_map(|l| l.pod_cidrs)
            .find_map(|c| match c {
                ipnet::IpNet::V4(net) => Some(net),
                ipnet::IpNet::V6(_) => None,
            });
        match cidr {
            Some(cidr) => return cidr,
            None if !logged => {
                logged = true;
                tracing::info!(
                    node = node_name,
                    "waiting for the node's pod CIDR to be assigned"
                );
            }
            None => {}
        }
    }
    unreachable!("a watcher never ends")
}

/// `stream` (a watcher), waiting after each error as `DefaultBackoff`
/// says; the backoff starts over only after progress (a completed list,
/// an applied or deleted object), not after the `Init` that begins each
/// list attempt.
pub fn with_backoff<K, S>(stream: S) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Send + 'static,
    S: Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
{
    let state = (stream.boxed(), DefaultBackoff::default(), None::<Duration>);
    futures::stream::unfold(state, |(mut stream, mut backoff, wait)| async move {
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
        let item = stream.next().await?;
        let wait = match &item {
            Err(_) => backoff.next(),
            Ok(Event::Init | Event::InitApply(_)) => None,
            Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_)) => {
                backoff.reset();
                None
            }
        };
        Some((item, (stream, backoff, wait)))
    })
}

/// One resource's watcher, with backoff, as cluster events.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: ObjectKind,
    wrap: fn(Event<K>) -> ClusterEvent,
) -> BoxStream<'static, Result<ClusterEvent, WatchFailure>>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    with_backoff(watcher(api, config))
        .map(move |item| match item {
            Ok(event) => Ok(wrap(event)),
            Err(e) => Err(WatchFailure {
                resource,
                message: error_chain(&e),
            }),
        })
        .boxed()
}

/// The merged events of the four watchers (see the module docs). The
/// stream never ends; each watcher retries its own failures.
pub fn cluster_events(
    client: Client,
    node_name: &str,
) -> impl Stream<Item = Result<ClusterEvent, WatchFailure>> + Send + 'static {
    let not_another_proxys = format!("!{SERVICE_PROXY_NAME_LABEL}");
    select_all([
        watch(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            ObjectKind::Node,
            ClusterEvent::Node,
        ),
        watch(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node_name}")),
            ObjectKind::Pod,
            ClusterEvent::Pod,
        ),
        watch(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels(&not_another_proxys),
            ObjectKind::Service,
            ClusterEvent::Service,
        ),
        watch(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default().labels(&format!("{not_another_proxys},!{HEADLESS_LABEL}")),
            ObjectKind::EndpointSlice,
            ClusterEvent::EndpointSlice,
        ),
    ])
}

#[cfg(test)]
mod tests;

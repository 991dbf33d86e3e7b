//! The file source: a manifest file, or a directory of them, as the
//! cluster (bare metal without an API server, and the lab, whose API
//! server role writes there).
//!
//! The files are what `kubectl apply -f` takes (YAML streams, JSON,
//! `kind: List`), read with the lab's splitter (`lab/manifest.rs`) into
//! the real Kubernetes types: Nodes, Pods (with `status.podIP`: nothing
//! allocates addresses here), Services and hand-written EndpointSlices.
//! The agent plays the EndpointSlice controller for Services with a
//! selector (`translate/endpoints.rs`, shared with the lab). Deployments
//! are reported and skipped: without a kubelet nothing runs their pods,
//! so write the Pods themselves.
//!
//! **Watching** is by polling every [`FileSourceConfig::poll_interval`]
//! (100 ms): one `stat` per file, compared on (mtime, size, inode). Not
//! inotify: it needs no extra dependency, it sees every way a file is
//! replaced (an editor's rename, the lab's write-then-rename, a
//! directory created after the agent started, a bind mount or a
//! ConfigMap's symlink swap) without re-arming watches, and at these
//! sizes a stat per file per 100 ms costs nothing. A change is reloaded
//! whole and sent to the push loop as a re-list of every kind, which
//! keeps only real differences and debounces them (20 ms).
//!
//! **A path that does not exist (yet)** is a reported problem, not an
//! error: the first sync is then an empty full sync (the switch holds no
//! Services rather than stale ones from before a restart), and the path
//! is picked up by the next poll after it appears. A path that vanishes
//! later keeps what was read from it (fail-static), also reported.
//!
//! **Bad input** never stops the source and never holds back valid
//! objects: a file that does not parse keeps its last good objects
//! (fail-static) and is reported; a document that does not decode is
//! left out and reported; objects with bad fields go through translation,
//! which reports them per object ([`super::SourceStatus::input_problems`]
//! and `problems`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::Resource;
use kube::runtime::watcher::Event;
use podswitch_switch::control::api::ServiceSettings;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::push::{run_push_loop, PushConfig};
use super::store::{ClusterEvent, WatchFailure};
use super::{InputProblem, SourceError, TopologySink};
use crate::manifest::{split_objects, RawObject};
use crate::translate::{object_key, ClusterObjects, TranslateConfig};

/// What the file source needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSourceConfig {
    /// A manifest file, or a directory whose `*.yaml`, `*.yml` and
    /// `*.json` files (not hidden, not recursive) are read.
    pub path: PathBuf,
    pub node_name: String,
    pub settings: ServiceSettings,
    pub push: PushConfig,
    pub poll_interval: Duration,
}

impl FileSourceConfig {
    pub fn new(path: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        FileSourceConfig {
            path: path.into(),
            node_name: node_name.into(),
            settings: ServiceSettings::default(),
            push: PushConfig::default(),
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    mtime_ns: i128,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        len: m.len(),
        ino: m.ino(),
    })
}

/// The manifest files under `path` with their stamps, sorted.
fn scan(path: &Path) -> Result<Vec<(PathBuf, Stamp)>, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e} (still watched: read as soon as it appears)"))?;
    if !meta.is_dir() {
        return Ok(stamp(path)
            .map(|s| (path.to_path_buf(), s))
            .into_iter()
            .collect());
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("cannot list: {e}"))?;
    let mut files: Vec<(PathBuf, Stamp)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let wanted = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            wanted && !name.starts_with('.')
        })
        .filter_map(|p| {
            let s = stamp(&p)?;
            std::fs::metadata(&p).ok()?.is_file().then_some((p, s))
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// One decoded object of a file.
#[derive(Debug, Clone)]
enum FileObject {
    Node(Box<Node>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

/// A file as last read: its stamp and the objects of its last good parse.
#[derive(Debug, Default)]
struct FileEntry {
    stamp: Option<Stamp>,
    objects: Vec<FileObject>,
    problems: Vec<InputProblem>,
}

/// The files as last read, by path.
#[derive(Debug, Default)]
pub struct ManifestCache {
    files: BTreeMap<PathBuf, FileEntry>,
    scan_problem: Option<InputProblem>,
}

fn problem(file: &Path, at: String, message: String) -> InputProblem {
    InputProblem {
        file: file.display().to_string(),
        at,
        message,
    }
}

fn decode<K: DeserializeOwned>(raw: RawObject) -> Result<K, String> {
    serde_path_to_error::deserialize::<_, K>(raw.value)
        .map_err(|e| format!("field `{}`: {}", e.path(), e.inner()))
}

/// Reads one file: its objects, and its problems. `Err` when the file as
/// a whole cannot be read or parsed.
fn read_file(path: &Path) -> Result<(Vec<FileObject>, Vec<InputProblem>), InputProblem> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| problem(path, String::new(), format!("cannot read: {e}")))?;
    let source = path.display().to_string();
    let raws = split_objects(&text, &source).map_err(|e| {
        // The error names the file first; the problem has it already.
        let message = e.to_string();
        let message = message
            .strip_prefix(&format!("{source}, "))
            .unwrap_or(&message);
        problem(
            path,
            String::new(),
            format!("{message} (its last good version is kept)"),
        )
    })?;
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for raw in raws {
        let at = raw.at.to_string().trim_end_matches(": ").to_owned();
        let kind = raw
            .value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let api_version = raw
            .value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let name = raw
            .value
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_owned();
        let decoded = match (api_version.as_str(), kind.as_str()) {
            (_, "") => Err("missing field `kind`".to_owned()),
            _ if name.is_empty() => Err(format!("{kind} without metadata.name")),
            (Node::API_VERSION, Node::KIND) => decode(raw).map(|o| FileObject::Node(Box::new(o))),
            (Pod::API_VERSION, Pod::KIND) => decode(raw).map(|o| FileObject::Pod(Box::new(o))),
            (Service::API_VERSION, Service::KIND) => {
                decode(raw).map(|o| FileObject::Service(Box::new(o)))
            }
            (EndpointSlice::API_VERSION, EndpointSlice::KIND) => {
                decode(raw).map(|o| FileObject::EndpointSlice(Box::new(o)))
            }
            ("apps/v1", "Deployment") => Err(format!(
                "Deployment {name:?} skipped: the file source runs no pods; write its Pods \
                 (with status.podIP) instead"
            )),
            _ => Err(format!(
                "unsupported kind {kind:?} (apiVersion {api_version:?}): the file source reads \
                 Node, Pod, Service, EndpointSlice and List"
            )),
        };
        match decoded {
            Ok(o) => objects.push(o),
            Err(message) => {
                let message = match decoded_name(&kind, &name) {
                    Some(prefix) if !message.starts_with(&kind) => format!("{prefix}: {message}"),
                    _ => message,
                };
                problems.push(problem(path, at, message));
            }
        }
    }
    Ok((objects, problems))
}

fn decoded_name(kind: &str, name: &str) -> Option<String> {
    (!kind.is_empty() && !name.is_empty()).then(|| format!("{kind} {name:?}"))
}

impl ManifestCache {
    /// Rescans `path`; whether any file changed (then [`Self::objects`]
    /// differs, or its problems do).
    pub fn refresh(&mut self, path: &Path) -> bool {
        let files = match scan(path) {
            Ok(files) => {
                let changed = self.scan_problem.take().is_some();
                (files, changed)
            }
            Err(message) => {
                let p = problem(path, String::new(), message);
                let changed = self.scan_problem.as_ref() != Some(&p);
                self.scan_problem = Some(p);
                // Keep what was read: a directory that is briefly gone
                // (being replaced) must not empty the switch.
                return changed;
            }
        };
        let (files, mut changed) = files;
        let before = self.files.len();
        self.files.retain(|p, _| files.iter().any(|(f, _)| f == p));
        changed |= self.files.len() != before;
        for (file, stamp) in files {
            let entry = self.files.entry(file.clone()).or_default();
            if entry.stamp.as_ref() == Some(&stamp) {
                continue;
            }
            changed = true;
            entry.stamp = Some(stamp);
            match read_file(&file) {
                Ok((objects, problems)) => {
                    entry.objects = objects;
                    entry.problems = problems;
                }
                Err(p) => entry.problems = vec![p],
            }
        }
        changed
    }

    /// Every problem of the input, sorted.
    pub fn problems(&self) -> Vec<InputProblem> {
        let mut out: Vec<InputProblem> = self
            .scan_problem
            .iter()
            .cloned()
            .chain(self.files.values().flat_map(|f| f.problems.iter().cloned()))
            .collect();
        out.sort();
        out
    }

    /// The objects of every file, with the EndpointSlices of Services
    /// with a selector derived from the Pods. An object defined twice is
    /// taken from the last file (by name) and reported.
    pub fn objects(&self) -> (ClusterObjects, Vec<InputProblem>) {
        let mut o = ClusterObjects::default();
        let mut problems = Vec::new();
        let mut seen: BTreeMap<(&'static str, String), &Path> = BTreeMap::new();
        for (file, entry) in &self.files {
            for object in &entry.objects {
                let (kind, key) = match object {
                    FileObject::Node(n) => {
                        let key = object_key(None, n.metadata.name.as_deref().unwrap_or(""), false);
                        o.nodes.insert(key.clone(), (**n).clone());
                        ("Node", key)
                    }
                    FileObject::Pod(p) => {
                        let m = &p.metadata;
                        let key = object_key(
                            m.namespace.as_deref(),
                            m.name.as_deref().unwrap_or(""),
                            true,
                        );
                        o.pods.insert(key.clone(), (**p).clone());
                        ("Pod", key)
                    }
                    FileObject::Service(s) => {
                        let m = &s.metadata;
                        let key = object_key(
                            m.namespace.as_deref(),
                            m.name.as_deref().unwrap_or(""),
                            true,
                        );
                        o.services.insert(key.clone(), (**s).clone());
                        ("Service", key)
                    }
                    FileObject::EndpointSlice(s) => {
                        let m = &s.metadata;
                        let key = object_key(
                            m.namespace.as_deref(),
                            m.name.as_deref().unwrap_or(""),
                            true,
                        );
                        o.endpoint_slices.insert(key.clone(), (**s).clone());
                        ("EndpointSlice", key)
                    }
                };
                if let Some(earlier) = seen.insert((kind, key.clone()), file) {
                    problems.push(problem(
                        file,
                        String::new(),
                        format!(
                            "{kind} {key} is also defined in {}; this definition wins",
                            earlier.display()
                        ),
                    ));
                }
            }
        }
        o.derive_endpoint_slices();
        (o, problems)
    }
}

/// The events that make a store hold exactly `objects`: a re-list of
/// every kind (the store keeps only what differs).
pub fn relist_events(objects: ClusterObjects) -> Vec<ClusterEvent> {
    fn relist<K>(
        items: BTreeMap<String, K>,
        wrap: fn(Event<K>) -> ClusterEvent,
        out: &mut Vec<ClusterEvent>,
    ) {
        out.push(wrap(Event::Init));
        out.extend(items.into_values().map(|k| wrap(Event::InitApply(k))));
        out.push(wrap(Event::InitDone));
    }
    let mut out = Vec::new();
    relist(objects.nodes, ClusterEvent::Node, &mut out);
    relist(objects.pods, ClusterEvent::Pod, &mut out);
    relist(objects.services, ClusterEvent::Service, &mut out);
    relist(
        objects.endpoint_slices,
        ClusterEvent::EndpointSlice,
        &mut out,
    );
    out
}

/// The file source's events: the whole input at start, then again after
/// every change seen by polling. Ends when the receiver is dropped.
pub fn file_events(
    path: PathBuf,
    poll_interval: Duration,
) -> impl Stream<Item = Result<ClusterEvent, WatchFailure>> + Send + 'static {
    let (tx, mut rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("file-source".into())
        .spawn(move || {
            let mut cache = ManifestCache::default();
            let mut first = true;
            loop {
                if cache.refresh(&path) || first {
                    first = false;
                    let (objects, mut problems) = cache.objects();
                    problems.extend(cache.problems());
                    problems.sort();
                    for p in &problems {
                        tracing::debug!(file = %p.file, at = %p.at, "{}", p.message);
                    }
                    let mut events = vec![ClusterEvent::InputProblems(problems)];
                    events.extend(relist_events(objects));
                    for e in events {
                        if tx.send(Ok(e)).is_err() {
                            return;
                        }
                    }
                }
                std::thread::sleep(poll_interval);
                if tx.is_closed() {
                    return;
                }
            }
        })
        .expect("spawning a thread");
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Runs the file source until the task is dropped.
pub async fn run_file_source<S: TopologySink>(
    config: FileSourceConfig,
    sink: S,
) -> Result<(), SourceError> {
    tracing::info!(path = %config.path.display(), node = %config.node_name, "watching manifests");
    let events = file_events(config.path, config.poll_interval);
    let translate_config = TranslateConfig {
        node_name: config.node_name,
        settings: config.settings,
    };
    run_push_loop(events, translate_config, config.push, sink).await
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::source::push::tests::{fake_sink, SinkCall};

    const NODE_AND_SERVICE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.1.0
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

    fn pods(ips: &[&str]) -> String {
        ips.iter()
            .enumerate()
            .map(|(i, ip)| {
                format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-{i}, namespace: shop, \
                     labels: {{app: web}}}}\nspec:\n  nodeName: node-1\n  containers: [{{name: c, \
                     ports: [{{name: http, containerPort: 8080}}]}}]\nstatus: {{phase: Running, \
                     podIP: {ip}}}\n"
                )
            })
            .collect()
    }

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "podswitch-files-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        /// Written as the lab writes: a hidden temporary, then renamed.
        fn write(&self, name: &str, text: &str) {
            let tmp = self.0.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.0.join(name)).unwrap();
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn endpoints_of(call: &SinkCall) -> Vec<String> {
        let services = match call {
            SinkCall::Full(s) => &s.services,
            SinkCall::Patch(p) => &p.upsert,
        };
        services
            .iter()
            .flat_map(|s| &s.ports)
            .flat_map(|p| &p.endpoints)
            .map(|e| format!("{}:{}", e.ip, e.port))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_edited_file_is_pushed_within_a_deadline_and_a_broken_one_is_reported() {
        let dir = TempDir::new("edit");
        dir.write("00-cluster.yaml", NODE_AND_SERVICE);
        dir.write("10-pods.yaml", &pods(&["10.244.1.2"]));
        let (sink, mut calls) = fake_sink();
        let status = sink.status.clone();
        let mut config = FileSourceConfig::new(&dir.0, "node-1");
        config.poll_interval = Duration::from_millis(100);
        let task = tokio::spawn(run_file_source(config, sink));
        async fn next(calls: &mut mpsc::UnboundedReceiver<SinkCall>) -> SinkCall {
            tokio::time::timeout(Duration::from_secs(2), calls.recv())
                .await
                .expect("a push within the deadline")
                .expect("the source runs")
        }

        let first = next(&mut calls).await;
        assert!(matches!(first, SinkCall::Full(_)));
        assert_eq!(
            endpoints_of(&first),
            ["10.244.1.2:8080"],
            "named port resolved"
        );

        // An edit: a second pod. Measured from the rename to the push.
        let edited = Instant::now();
        dir.write("10-pods.yaml", &pods(&["10.244.1.2", "10.244.1.3"]));
        let call = next(&mut calls).await;
        let took = edited.elapsed();
        assert!(matches!(call, SinkCall::Patch(_)));
        assert_eq!(endpoints_of(&call), ["10.244.1.2:8080", "10.244.1.3:8080"]);
        println!("file edit -> push: {took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");

        // A broken file and a bad document: reported; the others (and the
        // broken file's last good version) still apply.
        dir.write("20-broken.yaml", "kind: Service\nmetadata: {name: [oops\n");
        dir.write(
            "30-more.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: shop}\nspec: {containers: 7}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-9, namespace: shop, labels: {app: web}}\n\
             spec: {nodeName: node-1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}\n\
             status: {phase: Running, podIP: 10.244.1.9}\n",
        );
        let call = next(&mut calls).await;
        assert_eq!(
            endpoints_of(&call),
            ["10.244.1.2:8080", "10.244.1.3:8080", "10.244.1.9:8080"]
        );
        let input = status.lock().unwrap().input_problems.clone();
        assert_eq!(input.len(), 2, "{input:?}");
        assert!(input[0].file.ends_with("20-broken.yaml"), "{input:?}");
        assert!(input[1].message.contains("spec.containers"), "{input:?}");
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_directory_is_an_empty_full_sync_and_a_problem_until_it_appears() {
        let parent = TempDir::new("missing");
        let dir = parent.0.join("manifests");
        let (sink, mut calls) = fake_sink();
        let status = sink.status.clone();
        let mut config = FileSourceConfig::new(&dir, "node-1");
        config.poll_interval = Duration::from_millis(20);
        let task = tokio::spawn(run_file_source(config, sink));
        async fn next(calls: &mut mpsc::UnboundedReceiver<SinkCall>) -> SinkCall {
            tokio::time::timeout(Duration::from_secs(2), calls.recv())
                .await
                .expect("a push within the deadline")
                .expect("the source runs")
        }

        let SinkCall::Full(first) = next(&mut calls).await else {
            panic!("the first push is a full sync");
        };
        assert!(first.services.is_empty(), "{:?}", first.services);
        assert!(first.remote_nodes.is_empty());
        let problems = status.lock().unwrap().input_problems.clone();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, dir.display().to_string());
        assert!(
            problems[0].message.contains("No such file or directory")
                && problems[0].message.contains("as soon as it appears"),
            "{problems:?}"
        );

        // The directory appears, written as the lab writes it.
        std::fs::create_dir(&dir).unwrap();
        let appeared = TempDir(dir.clone());
        appeared.write("00-cluster.yaml", NODE_AND_SERVICE);
        appeared.write("10-pods.yaml", &pods(&["10.244.1.2"]));
        let call = next(&mut calls).await;
        assert_eq!(endpoints_of(&call), ["10.244.1.2:8080"]);
        let cleared = tokio::time::timeout(Duration::from_secs(2), async {
            while !status.lock().unwrap().input_problems.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            cleared.is_ok(),
            "{:?}",
            status.lock().unwrap().input_problems
        );
        task.abort();
    }

    #[test]
    fn a_deployment_or_unknown_kind_is_reported_not_fatal() {
        let dir = TempDir::new("kinds");
        dir.write(
            "a.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        );
        dir.write("b.yaml", NODE_AND_SERVICE);
        let mut cache = ManifestCache::default();
        assert!(cache.refresh(&dir.0));
        assert!(!cache.refresh(&dir.0), "nothing changed");
        let (objects, _) = cache.objects();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.endpoint_slices.len(), 1, "the placeholder slice");
        let problems = cache.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("Deployment"));
        assert!(problems[1].message.contains("ConfigMap"));
    }
}

//! The Kubernetes source against kube's conventional mock API server: a
//! `tower_test::mock::pair` as the client's service, and an
//! "ApiServerVerifier" that answers each list and watch request with JSON
//! as the API server writes it (objects from
//! agent/tests-data/kubernetes/cluster.json), while the test checks the
//! requests (selectors, resourceVersions) and what the sink receives.
//!
//! The four watchers interleave their requests, so a router task sorts
//! them per resource and the test takes them in the order it expects per
//! resource. Time is tokio's paused clock: backoffs and debounces pass in
//! virtual time, measured exactly, never slept.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower_test::mock::SendResponse;

use super::super::push::tests::{fake_sink, translate_config, SinkCall};
use super::super::SourceStatus;
use super::*;
use crate::translate::{translate, ClusterObjects, ObjectKind};

type Pending = (Request<Body>, SendResponse<Response<Body>>);

/// The mock API server: requests sorted by resource.
struct ApiServer {
    queues: HashMap<ObjectKind, mpsc::UnboundedReceiver<Pending>>,
}

fn resource_of(path: &str) -> ObjectKind {
    match path {
        "/api/v1/nodes" => ObjectKind::Node,
        "/api/v1/pods" => ObjectKind::Pod,
        "/api/v1/services" => ObjectKind::Service,
        "/apis/discovery.k8s.io/v1/endpointslices" => ObjectKind::EndpointSlice,
        other => panic!("the source asked for {other}, which it has no business reading"),
    }
}

/// The decoded query parameters of a request.
fn query(req: &Request<Body>) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() + 1 => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    };
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

impl ApiServer {
    /// The next request for `resource`, within a (virtual) minute.
    async fn next(&mut self, resource: ObjectKind) -> Pending {
        let queue = self.queues.get_mut(&resource).unwrap();
        tokio::time::timeout(Duration::from_secs(60), queue.recv())
            .await
            .unwrap_or_else(|_| panic!("no {resource} request within a minute"))
            .expect("the router is running")
    }

    /// The next request for `resource`, which must be a list.
    async fn expect_list(&mut self, resource: ObjectKind) -> SendResponse<Response<Body>> {
        let (req, send) = self.next(resource).await;
        assert_eq!(req.method(), http::Method::GET);
        let q = query(&req);
        assert!(
            !q.contains_key("watch"),
            "{resource}: expected a list, got {}",
            req.uri()
        );
        check_selectors(resource, &q);
        send
    }

    /// The next request for `resource`, which must be a watch from
    /// `resource_version`.
    async fn expect_watch(
        &mut self,
        resource: ObjectKind,
        resource_version: &str,
    ) -> SendResponse<Response<Body>> {
        let (req, send) = self.next(resource).await;
        let q = query(&req);
        assert_eq!(
            q.get("watch").map(String::as_str),
            Some("true"),
            "{}",
            req.uri()
        );
        assert_eq!(
            q.get("resourceVersion").map(String::as_str),
            Some(resource_version),
            "{resource}: watch from the last resourceVersion seen: {}",
            req.uri()
        );
        assert_eq!(
            q.get("allowWatchBookmarks").map(String::as_str),
            Some("true")
        );
        check_selectors(resource, &q);
        send
    }
}

/// The selectors the source must send (kube-proxy's, and this node).
fn check_selectors(resource: ObjectKind, q: &BTreeMap<String, String>) {
    let (field, label) = match resource {
        ObjectKind::Node => (None, None),
        ObjectKind::Pod => (Some("spec.nodeName=node-1"), None),
        ObjectKind::Service => (None, Some("!service.kubernetes.io/service-proxy-name")),
        ObjectKind::EndpointSlice => (
            None,
            Some("!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"),
        ),
    };
    assert_eq!(
        q.get("fieldSelector").map(String::as_str),
        field,
        "{resource}"
    );
    assert_eq!(
        q.get("labelSelector").map(String::as_str),
        label,
        "{resource}"
    );
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// A list response as the API server writes it (`NodeList`, ...).
fn list_response(resource: ObjectKind, resource_version: &str, items: &[Value]) -> Response<Body> {
    let api_version = match resource {
        ObjectKind::EndpointSlice => "discovery.k8s.io/v1",
        _ => "v1",
    };
    json_response(
        200,
        &json!({
            "kind": format!("{}List", resource.as_str()),
            "apiVersion": api_version,
            "metadata": {"resourceVersion": resource_version},
            "items": items,
        }),
    )
}

/// A watch response: one JSON event per line, then the end of the
/// stream (as when the server's timeoutSeconds runs out).
fn watch_response(events: &[(&str, Value)]) -> Response<Body> {
    let mut body = String::new();
    for (kind, object) in events {
        body.push_str(&json!({"type": kind, "object": object}).to_string());
        body.push('\n');
    }
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(body.into_bytes()))
        .unwrap()
}

/// A `Status` object, as in API errors and watch ERROR events.
fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// The fixture's objects of one kind (only node-1's Pods, as the field
/// selector asks the API server).
fn fixture_items(resource: ObjectKind) -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests-data/kubernetes/cluster.json"
    );
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == resource.as_str())
        .filter(|o| resource != ObjectKind::Pod || o["spec"]["nodeName"] == "node-1")
        .cloned()
        .collect()
}

fn find(resource: ObjectKind, name: &str) -> Value {
    fixture_items(resource)
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{resource} {name} in the fixture"))
}

/// The topology the sink must get for these objects.
fn expected(items: &[Value]) -> crate::translate::NodeTopology {
    let mut objects = ClusterObjects::default();
    for item in items {
        objects.insert_json(item.clone()).unwrap();
    }
    translate(&objects, &translate_config())
}

const RESOURCES: [ObjectKind; 4] = [
    ObjectKind::Node,
    ObjectKind::Pod,
    ObjectKind::Service,
    ObjectKind::EndpointSlice,
];

struct Test {
    api: ApiServer,
    calls: mpsc::UnboundedReceiver<SinkCall>,
    status: std::sync::Arc<std::sync::Mutex<SourceStatus>>,
    _source: tokio::task::JoinHandle<Result<(), crate::source::SourceError>>,
}

impl Test {
    /// The source on a mock client, and the router of its requests.
    fn start() -> Test {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let mut senders = HashMap::new();
        let mut queues = HashMap::new();
        for r in RESOURCES {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert(r, tx);
            queues.insert(r, rx);
        }
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let r = resource_of(req.uri().path());
                let _ = senders[&r].send((req, send));
            }
        });
        let (sink, calls) = fake_sink();
        let status = sink.status.clone();
        let config = KubernetesSourceConfig::new("node-1", translate_config().settings);
        let source = tokio::spawn(run_kubernetes_source_with_client(client, config, sink));
        Test {
            api: ApiServer { queues },
            calls,
            status,
            _source: source,
        }
    }

    /// Answers the first list of every resource with the fixture; the
    /// list resourceVersions are "100", "200", "300", "400".
    async fn answer_initial_lists(&mut self) {
        for (i, r) in RESOURCES.into_iter().enumerate() {
            let send = self.api.expect_list(r).await;
            send.send_response(list_response(
                r,
                &format!("{}", (i + 1) * 100),
                &fixture_items(r),
            ));
        }
    }

    async fn next_call(&mut self) -> SinkCall {
        tokio::time::timeout(Duration::from_secs(60), self.calls.recv())
            .await
            .expect("a push within a minute")
            .expect("the source is running")
    }

    async fn next_patch(&mut self) -> crate::translate::TopologyPatch {
        match self.next_call().await {
            SinkCall::Patch(p) => p,
            SinkCall::Full(f) => panic!("expected a patch, got a full sync of {f:?}"),
        }
    }

    /// Nothing reaches the sink for a (virtual) second.
    async fn assert_quiet(&mut self) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(call) = self.calls.try_recv() {
            panic!("unexpected push {call:?}");
        }
    }
}

fn all_fixture_items() -> Vec<Value> {
    RESOURCES.into_iter().flat_map(fixture_items).collect()
}

#[tokio::test(start_paused = true)]
async fn lists_then_added_modified_deleted_reach_the_sink() {
    let mut t = Test::start();
    t.answer_initial_lists().await;
    let SinkCall::Full(sync) = t.next_call().await else {
        panic!("the first push is a full sync");
    };
    let mut items = all_fixture_items();
    assert_eq!(sync, expected(&items).full_sync());
    assert_eq!(sync.remote_nodes.len(), 3);
    assert_eq!(sync.services.len(), 6);

    // MODIFIED: web gets session affinity. The watch was started from the
    // list's resourceVersion.
    let mut web = find(ObjectKind::Service, "web");
    web["metadata"]["resourceVersion"] = json!("301");
    web["spec"]["sessionAffinity"] = json!("ClientIP");
    web["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 600}});
    let send = t.api.expect_watch(ObjectKind::Service, "300").await;
    send.send_response(watch_response(&[("MODIFIED", web.clone())]));
    let patch = t.next_patch().await;
    assert_eq!(patch.remote_nodes, None);
    assert!(patch.remove.is_empty());
    assert_eq!(patch.upsert.len(), 1);
    assert_eq!(patch.upsert[0].name, "shop/web");
    assert_eq!(patch.upsert[0].affinity_timeout_secs, Some(600));

    // The closed watch resumes from the last resourceVersion seen. ADDED
    // a Service (its slice comes later) and DELETED another, in one batch.
    let cache = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "cache", "namespace": "shop", "resourceVersion": "302",
                     "creationTimestamp": "2025-03-04T10:00:00Z", "uid": "0b0e6a34-9d7e-4d0b-8c55-2f6f5e1c0a11"},
        "spec": {"clusterIP": "10.96.9.9", "clusterIPs": ["10.96.9.9"], "type": "ClusterIP",
                 "selector": {"app": "cache"}, "sessionAffinity": "None",
                 "ports": [{"name": "redis", "port": 6379, "protocol": "TCP", "targetPort": "redis"}]},
        "status": {"loadBalancer": {}},
    });
    let mut db = find(ObjectKind::Service, "db");
    db["metadata"]["resourceVersion"] = json!("303");
    let send = t.api.expect_watch(ObjectKind::Service, "301").await;
    send.send_response(watch_response(&[
        ("ADDED", cache.clone()),
        ("DELETED", db.clone()),
    ]));
    let patch = t.next_patch().await;
    assert_eq!(patch.remove, ["shop/db"]);
    assert_eq!(patch.upsert.len(), 1);
    assert_eq!(patch.upsert[0].name, "shop/cache");
    assert!(patch.upsert[0].ports[0].endpoints.is_empty());

    // The slice of the new Service arrives on the slice watch.
    let cache_slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "cache-7hx2m", "namespace": "shop", "resourceVersion": "401",
                     "labels": {"kubernetes.io/service-name": "cache",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "ports": [{"name": "redis", "port": 6380, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.2.40"], "nodeName": "node-2",
                       "conditions": {"ready": true, "serving": true, "terminating": false}}],
    });
    let send = t.api.expect_watch(ObjectKind::EndpointSlice, "400").await;
    send.send_response(watch_response(&[("ADDED", cache_slice.clone())]));
    let patch = t.next_patch().await;
    assert_eq!(patch.upsert.len(), 1);
    let ep = &patch.upsert[0].ports[0].endpoints;
    assert_eq!(
        (ep[0].ip.to_string(), ep[0].port),
        ("10.244.2.40".into(), 6380)
    );

    // A Node leaves: the whole node list is sent again.
    let mut node4 = find(ObjectKind::Node, "node-4");
    node4["metadata"]["resourceVersion"] = json!("101");
    let send = t.api.expect_watch(ObjectKind::Node, "100").await;
    send.send_response(watch_response(&[("DELETED", node4)]));
    let patch = t.next_patch().await;
    let names: Vec<String> = patch
        .remote_nodes
        .expect("the node list changed")
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["node-2", "node-3"]);

    // A Pod's status churn that translation does not read: no push.
    let mut pod = find(ObjectKind::Pod, "web-7c9d5b8f4-abcde");
    pod["metadata"]["resourceVersion"] = json!("201");
    pod["status"]["conditions"][0]["lastProbeTime"] = json!("2025-03-04T11:00:00Z");
    let send = t.api.expect_watch(ObjectKind::Pod, "200").await;
    send.send_response(watch_response(&[("MODIFIED", pod)]));
    t.assert_quiet().await;

    // The state the sink holds is the translation of the objects now.
    items.retain(|o| {
        !(o["metadata"]["name"] == "db" && o["kind"] == "Service")
            && o["metadata"]["name"] != "node-4"
            && o["metadata"]["name"] != "web"
    });
    items.extend([web, cache, cache_slice]);
    let now = expected(&items);
    assert_eq!(now.services.len(), 6);
    assert_eq!(t.status.lock().unwrap().problems, now.problems);
}

#[tokio::test(start_paused = true)]
async fn a_410_gone_watch_error_makes_the_watcher_relist() {
    let mut t = Test::start();
    t.answer_initial_lists().await;
    assert!(matches!(t.next_call().await, SinkCall::Full(_)));

    // The API server compacted past our resourceVersion.
    let send = t.api.expect_watch(ObjectKind::Service, "300").await;
    send.send_response(watch_response(&[(
        "ERROR",
        status_object(410, "Expired", "too old resource version: 300 (1234)"),
    )]));

    // The watcher lists again (after its backoff), and `web`, deleted
    // while it was away, is gone from the new list.
    let gone_at = Instant::now();
    let send = t.api.expect_list(ObjectKind::Service).await;
    assert!(gone_at.elapsed() >= Duration::from_millis(800), "backoff");
    let services: Vec<Value> = fixture_items(ObjectKind::Service)
        .into_iter()
        .filter(|o| o["metadata"]["name"] != "web")
        .collect();
    send.send_response(list_response(ObjectKind::Service, "1300", &services));
    let patch = t.next_patch().await;
    assert_eq!(patch.remove, ["shop/web"]);
    assert!(patch.upsert.is_empty(), "the others did not change");

    let status = t.status.lock().unwrap().clone();
    assert_eq!(status.watch_errors.get(&ObjectKind::Service), Some(&1));
    assert!(
        status
            .last_watch_error
            .as_deref()
            .unwrap()
            .contains("too old resource version"),
        "{status:?}"
    );
    // And watches from the new list's resourceVersion.
    t.api.expect_watch(ObjectKind::Service, "1300").await;
}

#[tokio::test(start_paused = true)]
async fn api_errors_are_retried_with_exponential_backoff() {
    let mut t = Test::start();
    // The Node list fails twice (etcd timing out), the others succeed.
    let send = t.api.expect_list(ObjectKind::Node).await;
    send.send_response(json_response(
        500,
        &status_object(500, "InternalError", "etcdserver: request timed out"),
    ));
    let first_failure = Instant::now();
    for r in [
        ObjectKind::Pod,
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
    ] {
        let send = t.api.expect_list(r).await;
        send.send_response(list_response(r, "7", &fixture_items(r)));
    }
    // Nothing is pushed without the Nodes: the switch keeps what it has.
    let send = t.api.expect_list(ObjectKind::Node).await;
    let first_retry = first_failure.elapsed();
    // kube's default backoff: 800 ms, plus up to 100% jitter.
    assert!(
        first_retry >= Duration::from_millis(800) && first_retry < Duration::from_millis(1600),
        "{first_retry:?}"
    );
    assert!(t.calls.try_recv().is_err(), "pushed without the Nodes");
    // Forbidden (RBAC not applied yet): retried the same way, doubled.
    send.send_response(json_response(
        403,
        &status_object(
            403,
            "Forbidden",
            "nodes is forbidden: User \"system:serviceaccount:kube-system:podswitch\" cannot list resource \"nodes\" in API group \"\" at the cluster scope",
        ),
    ));
    let second_failure = Instant::now();
    let send = t.api.expect_list(ObjectKind::Node).await;
    let second_retry = second_failure.elapsed();
    assert!(
        second_retry >= Duration::from_millis(1600) && second_retry < Duration::from_millis(3200),
        "{second_retry:?}"
    );
    let status = t.status.lock().unwrap().clone();
    assert_eq!(status.watch_errors.get(&ObjectKind::Node), Some(&2));
    assert!(!status.listed);
    assert!(
        status
            .last_watch_error
            .as_deref()
            .unwrap()
            .contains("forbidden"),
        "{status:?}"
    );

    send.send_response(list_response(
        ObjectKind::Node,
        "8",
        &fixture_items(ObjectKind::Node),
    ));
    let SinkCall::Full(sync) = t.next_call().await else {
        panic!("full sync");
    };
    assert_eq!(sync, expected(&all_fixture_items()).full_sync());
    // The watch after a failed start also backs off and resumes.
    let send = t.api.expect_watch(ObjectKind::Node, "8").await;
    send.send_response(json_response(
        500,
        &status_object(500, "InternalError", "etcdserver: leader changed"),
    ));
    t.api.expect_watch(ObjectKind::Node, "8").await;
    t.assert_quiet().await;
}

#[tokio::test(start_paused = true)]
async fn the_pod_cidr_is_awaited_until_assigned() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let waiter = tokio::spawn(async move { wait_for_pod_cidr(client, "node-1").await });

    // The Node has just joined: no podCIDR yet.
    let mut node = find(ObjectKind::Node, "node-1");
    node["spec"] = json!({});
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.uri().path(), "/api/v1/nodes");
    assert_eq!(
        query(&req).get("fieldSelector").map(String::as_str),
        Some("metadata.name=node-1")
    );
    send.send_response(list_response(ObjectKind::Node, "10", &[node.clone()]));

    // The node IPAM controller assigns it.
    node["spec"] = json!({"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]});
    node["metadata"]["resourceVersion"] = json!("11");
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(query(&req).get("watch").map(String::as_str), Some("true"));
    send.send_response(watch_response(&[("MODIFIED", node)]));
    let cidr = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("returns once assigned")
        .unwrap();
    assert_eq!(cidr.to_string(), "10.244.1.0/24");
}

//! The daemon's control logic against a fake kernel: what a topology
//! request creates, removes and puts back, without root.

use std::sync::{Arc, Mutex};

use podswitch_api::{PatchTopologyArgs, ReplaceTopologyArgs, Topology};

use super::kernel::NodeKernel;
use super::plan::{plan_ports, PortPlan};
use super::*;
use crate::conntrack::ConntrackConfig;
use crate::port::pod::WiringError;

/// What the fake kernel was asked to do, and which pod it refuses.
#[derive(Debug, Default)]
struct KernelLog {
    created: Vec<String>,
    deleted: Vec<String>,
    fail_create: Option<String>,
}

struct FakeKernel(Arc<Mutex<KernelLog>>);

impl NodeKernel for FakeKernel {
    fn precheck_pod(&self, _: &PodWiring<'_>) -> Result<(), WiringError> {
        Ok(())
    }

    fn create_pod(
        &mut self,
        w: &PodWiring<'_>,
        _queues: usize,
    ) -> Result<Vec<crate::port::tap::TapQueue>, WiringError> {
        let mut log = self.0.lock().unwrap();
        if log.fail_create.as_deref() == Some(w.pod) {
            return Err(WiringError::Other {
                pod: w.pod.to_string(),
                what: "the fake kernel refuses this pod".into(),
            });
        }
        log.created.push(w.pod.to_string());
        Ok(Vec::new())
    }

    fn delete_pod(&mut self, w: &PodWiring<'_>) -> Result<(), WiringError> {
        self.0.lock().unwrap().deleted.push(w.pod.to_string());
        Ok(())
    }

    fn route_to_host_port(&mut self, _: &str, _: IpNet) -> Result<(), String> {
        Ok(())
    }

    fn steer_to_host_port(&mut self, _: &str, _: &SteerAddress, _: u16) -> Result<usize, String> {
        Ok(0)
    }

    fn local_ipv4_addresses(&self, _: Option<&str>) -> Result<Vec<Ipv4Addr>, String> {
        Ok(Vec::new())
    }
}

fn node() -> NodeSpec {
    node_spec("node-1", "10.244.1.0/24".parse().unwrap(), 1500)
}

/// A daemon state for node-1 with no workers, saving into `dir`.
fn state(dir: &Path) -> (SwitchState, Arc<Mutex<KernelLog>>) {
    std::fs::create_dir_all(dir).unwrap();
    let log = Arc::new(Mutex::new(KernelLog::default()));
    let config: DaemonConfig = serde_json::from_value(serde_json::json!({
        "node": node(),
        "control_socket": dir.join("ctl.sock"),
        "state_dir": dir,
        "workers": 1,
    }))
    .unwrap();
    let node = config.node.clone();
    let gw = Gateway {
        mac: node.gateway_mac.0,
        ipv4: node.gateway_ipv4().unwrap(),
        ipv6: None,
    };
    let state = SwitchState {
        kernel: Box::new(FakeKernel(Arc::clone(&log))),
        node: node.clone(),
        host: None,
        vtep: None,
        remote_nodes: Vec::new(),
        services: BTreeMap::new(),
        service_settings: ServiceSettings::default(),
        service_table: Arc::new(ServiceTable::empty(gw.ipv4)),
        service_layout: ServiceLayout::default(),
        maglev_size: config.maglev_table_size,
        conntrack: Arc::new(ConnTrack::new(
            ConntrackConfig {
                max_flows: 1024,
                ..Default::default()
            },
            1,
        )),
        node_port_addresses: config.node_port_addresses.clone(),
        node_port_ips: Vec::new(),
        steered: BTreeMap::new(),
        ports: BTreeMap::new(),
        slots: Vec::new(),
        generation: 0,
        publisher: Arc::new(TablePublisher::new(Snapshot::empty(Tables::new(
            &node.name,
            gw,
            node.pod_cidrs.clone(),
            Vec::new(),
        )))),
        wakers: Vec::new(),
        counters: Vec::new(),
        state_file: dir.join("state.json"),
        apply_seconds: crate::exporter::apply_latency_histogram(),
        captures: Arc::new(crate::capture::CaptureHub::new(1)),
        running_config: RunningConfig {
            switch_version: "test".into(),
            config: config.clone(),
            log_format: None,
            log_filter: "info".into(),
            state_file: dir.join("state.json"),
            node_from_state: false,
        },
        poll_control: Arc::new(PollControl::new(config.poll_mode, config.adaptive_poll_us)),
        io_backend_in_use: "syscalls",
        tunnel_gso_available: false,
        io_backend_rings: 0,
    };
    (state, log)
}

/// A pod whose "namespace" is a directory of the test's own (the daemon
/// checks only that the path exists; the fake kernel never enters it).
fn pod(dir: &Path, name: &str, ip: &str) -> PodSpec {
    let netns = dir.join("ns").join(name.replace('/', "-"));
    std::fs::create_dir_all(&netns).unwrap();
    serde_json::from_value(serde_json::json!({
        "name": name,
        "netns": netns,
        "ipv4": ip,
    }))
    .unwrap()
}

fn dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("psw-daemon-{tag}-{}", std::process::id()))
}

fn pods_of(st: &SwitchState) -> Vec<String> {
    st.ports.keys().cloned().collect()
}

fn patch(add: Vec<PodSpec>, remove: Vec<String>) -> Request {
    Request::PatchTopology(PatchTopologyArgs { add, remove })
}

#[test]
fn a_pod_the_kernel_refuses_leaves_the_node_as_it_was() {
    let d = dir("refuse");
    let (mut st, log) = state(&d);
    st.handle(patch(vec![pod(&d, "default/a", "10.244.1.5")], vec![]))
        .unwrap();
    let generation = st.generation;

    // Two new pods, the second refused: the first is taken down again.
    log.lock().unwrap().fail_create = Some("default/c".into());
    let e = st
        .handle(patch(
            vec![
                pod(&d, "default/b", "10.244.1.6"),
                pod(&d, "default/c", "10.244.1.7"),
            ],
            vec![],
        ))
        .unwrap_err();
    assert!(e.message.contains("refuses"), "{e}");
    assert_eq!(pods_of(&st), ["default/a"]);
    {
        let log = log.lock().unwrap();
        assert_eq!(log.created, ["default/a", "default/b"]);
        assert_eq!(log.deleted, ["default/b"]);
    }

    // A replace that drops a and adds c (refused): a is put back as it was.
    let e = st
        .handle(Request::ReplaceTopology(ReplaceTopologyArgs {
            topology: Topology {
                node: node(),
                pods: vec![pod(&d, "default/c", "10.244.1.7")],
                remote_nodes: Vec::new(),
            },
        }))
        .unwrap_err();
    assert!(e.message.contains("refuses"), "{e}");
    assert_eq!(pods_of(&st), ["default/a"]);
    assert_eq!(
        st.ports["default/a"].spec.ipv4,
        Some(Ipv4Addr::new(10, 244, 1, 5))
    );
    {
        let log = log.lock().unwrap();
        assert_eq!(log.deleted, ["default/b", "default/a"]);
        assert_eq!(log.created, ["default/a", "default/b", "default/a"]);
    }
    assert!(
        st.generation > generation,
        "the put-back state was published"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_invalid_request_touches_nothing() {
    let d = dir("invalid");
    let (mut st, log) = state(&d);
    st.handle(patch(vec![pod(&d, "default/a", "10.244.1.5")], vec![]))
        .unwrap();
    // b takes a's address; removing an unknown pod.
    for req in [
        patch(vec![pod(&d, "default/b", "10.244.1.5")], vec![]),
        patch(vec![], vec!["default/nope".into()]),
        patch(vec![pod(&d, "default/b", "10.244.9.9")], vec![]),
    ] {
        st.handle(req.clone())
            .expect_err(&format!("{req:?} accepted"));
    }
    assert_eq!(pods_of(&st), ["default/a"]);
    let log = log.lock().unwrap();
    assert_eq!(log.created, ["default/a"]);
    assert!(log.deleted.is_empty(), "{:?}", log.deleted);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_plan_replaces_a_changed_pod_and_an_exact_list_removes_the_rest() {
    let d = dir("plan");
    let n = node();
    let a = SwitchState::resolve_pod(&n, &pod(&d, "default/a", "10.244.1.5"), "a").unwrap();
    let b = SwitchState::resolve_pod(&n, &pod(&d, "default/b", "10.244.1.6"), "b").unwrap();
    let current: BTreeMap<&str, &PodSpec> = [("default/a", &a), ("default/b", &b)].into();

    // The same pods again: nothing to do.
    let p = plan_ports(&n, &current, None, &[a.clone(), b.clone()], &[], true).unwrap();
    assert_eq!(
        p,
        PortPlan {
            node: n.clone(),
            to_remove: vec![],
            to_add: vec![],
            unchanged: 2,
        }
    );
    // a moves to another address: removed and added again; exact drops b.
    let moved = pod(&d, "default/a", "10.244.1.9");
    let p = plan_ports(&n, &current, None, std::slice::from_ref(&moved), &[], true).unwrap();
    assert_eq!(p.to_remove, ["default/a", "default/b"]);
    assert_eq!(p.to_add.len(), 1);
    assert_eq!(p.to_add[0].ipv4, Some(Ipv4Addr::new(10, 244, 1, 9)));
    // Not exact: b stays.
    let p = plan_ports(&n, &current, None, &[moved], &[], false).unwrap();
    assert_eq!(p.to_remove, ["default/a"]);
    // Removing a pod that is not there names the field.
    let e = plan_ports(&n, &current, None, &[], &["x/y".into()], false).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("remove[0]"));
    let _ = std::fs::remove_dir_all(&d);
}

/// The replies that had no type before (built with `json!` or `null` by
/// the dispatch) are the same JSON now that they have one.
#[test]
fn typed_replies_are_the_json_the_dispatch_wrote_before() {
    let d = dir("replies");
    let (mut st, _log) = state(&d);
    let json = |r: Result<Reply, ApiError>| serde_json::to_value(r.unwrap()).unwrap();
    st.handle(patch(vec![pod(&d, "default/a", "10.244.1.5")], vec![]))
        .unwrap();
    let services: Vec<ServiceSpec> = serde_json::from_value(serde_json::json!([
        {"name": "default/web", "cluster_ips": ["10.96.0.10"], "ports": [
            {"name": "http", "port": 80, "node_port": 30080, "endpoints": [
                {"ip": "10.244.1.5", "port": 8080, "node": "node-1"},
                {"ip": "10.244.2.5", "port": 8080, "ready": false}]}]},
        {"name": "default/dns", "cluster_ips": ["10.96.0.11"], "affinity_timeout_secs": 60,
         "ports": [{"protocol": "UDP", "port": 53, "endpoints": []}]},
    ]))
    .unwrap();
    st.handle(Request::SetServices(podswitch_api::SetServicesArgs {
        settings: None,
        services,
    }))
    .unwrap();
    assert_eq!(
        json(st.handle(Request::GetServices)),
        serde_json::json!({
            "settings": st.service_settings,
            "services": st.services.values().collect::<Vec<_>>(),
        })
    );
    let flush = Request::FlushFlows(podswitch_api::FlushFlowsArgs {
        filter: FlowFilter::default(),
    });
    assert_eq!(json(st.handle(flush)), serde_json::json!({ "removed": 0 }));
    assert_eq!(
        json(st.handle(Request::GetConfig)),
        serde_json::to_value(&st.running_config).unwrap()
    );
    assert_eq!(
        json(
            st.handle(Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs {
                nodes: Vec::new()
            }))
        ),
        serde_json::Value::Null
    );
    assert_eq!(
        json(
            st.handle(Request::RemovePort(podswitch_api::RemovePortArgs {
                name: "default/a".into(),
            }))
        ),
        serde_json::Value::Null
    );
    // A null reply is written as `"result":null`, as before.
    let line =
        serde_json::to_string(&podswitch_api::Response::answer(Ok(Reply::RemovePort))).unwrap();
    assert_eq!(line, r#"{"ok":true,"result":null}"#);
    let _ = std::fs::remove_dir_all(&d);
}

/// The service table's refusals reach the wire as they did when the
/// table built `ApiError`s itself: same code, field and message.
#[test]
fn service_table_refusals_keep_their_code_field_and_message() {
    use crate::tables::maglev::MaglevError;
    let invalid = |field: &str, message: &str| ApiError {
        code: ErrorCode::InvalidArgument,
        field: Some(field.into()),
        message: message.into(),
    };
    let at = |field: &str, kind| ServiceError {
        field: Some(field.into()),
        kind,
    };
    for (refusal, wire) in [
        (
            at(
                "maglev_table_size",
                ServiceErrorKind::MaglevSizeNotPrime(100),
            ),
            invalid("maglev_table_size", "100 is not a prime"),
        ),
        (
            at(
                "settings.node_port_range",
                ServiceErrorKind::BadNodePortRange { lo: 0, hi: 10 },
            ),
            invalid("settings.node_port_range", "0-10 is not a range of ports"),
        ),
        (
            ServiceError {
                field: None,
                kind: ServiceErrorKind::NoTableToPatch,
            },
            ApiError::internal("no service table to patch: set the Services first"),
        ),
        (
            at("services[0].name", ServiceErrorKind::EmptyName),
            invalid("services[0].name", "must not be empty"),
        ),
        (
            at(
                "services[1].cluster_ips[0]",
                ServiceErrorKind::ClusterIpOutsideServiceCidrs(Ipv4Addr::new(10, 1, 2, 3)),
            ),
            invalid(
                "services[1].cluster_ips[0]",
                "10.1.2.3 is outside the service CIDRs",
            ),
        ),
        (
            at(
                "upsert[0].ports[1].endpoints[2].port",
                ServiceErrorKind::PortZero,
            ),
            invalid("upsert[0].ports[1].endpoints[2].port", "must be 1-65535"),
        ),
        (
            at(
                "services[0].ports[0].node_port",
                ServiceErrorKind::NodePortOutsideRange {
                    port: 40000,
                    lo: 30000,
                    hi: 32767,
                },
            ),
            invalid(
                "services[0].ports[0].node_port",
                "40000 is outside the NodePort range 30000-32767",
            ),
        ),
        (
            at(
                "services[0].ports[0].endpoints",
                ServiceErrorKind::Maglev(MaglevError::NotPrime(100)),
            ),
            invalid(
                "services[0].ports[0].endpoints",
                &MaglevError::NotPrime(100).to_string(),
            ),
        ),
        (
            at(
                "services[2].ports[0].port",
                ServiceErrorKind::FrontendTaken {
                    ip: Ipv4Addr::new(10, 96, 0, 1),
                    port: 53,
                    protocol: podswitch_api::Protocol::Udp,
                    holder: "kube-system/dns".into(),
                },
            ),
            invalid(
                "services[2].ports[0].port",
                "10.96.0.1:53/Udp is already a frontend of another service (kube-system/dns)",
            ),
        ),
    ] {
        let shown = refusal.to_string();
        assert_eq!(ApiError::from(refusal), wire);
        // On its own the refusal names its field.
        if let Some(field) = &wire.field {
            assert_eq!(shown, format!("{field}: {}", wire.message));
        }
    }

    // Through the dispatch: a NodePort out of range, a taken frontend.
    let d = dir("refusals");
    let (mut st, _log) = state(&d);
    let set = |services: serde_json::Value| {
        Request::SetServices(podswitch_api::SetServicesArgs {
            settings: None,
            services: serde_json::from_value(services).unwrap(),
        })
    };
    let e = st
        .handle(set(serde_json::json!([
            {"name": "default/web", "cluster_ips": ["10.96.0.10"],
             "ports": [{"port": 80, "node_port": 40000}]}
        ])))
        .unwrap_err();
    assert_eq!(
        e,
        invalid(
            "services[0].ports[0].node_port",
            "40000 is outside the NodePort range 30000-32767"
        )
    );
    st.handle(set(serde_json::json!([
        {"name": "default/web", "cluster_ips": ["10.96.0.10"], "ports": [{"port": 80}]}
    ])))
    .unwrap();
    let e = st
        .handle(Request::PatchServices(podswitch_api::PatchServicesArgs {
            upsert: serde_json::from_value(serde_json::json!([
                {"name": "default/other", "cluster_ips": ["10.96.0.10"], "ports": [{"port": 80}]}
            ]))
            .unwrap(),
            remove: Vec::new(),
        }))
        .unwrap_err();
    assert_eq!(
        e,
        invalid(
            "upsert[0].ports[0].port",
            "10.96.0.10:80/Tcp is already a frontend of another service (default/web)"
        )
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// The capture hub's refusals reach the wire as they did when the hub
/// built `ApiError`s itself: same code, field and message (written down
/// from the hub before it had its own error type).
#[test]
fn capture_refusals_reach_the_wire_unchanged() {
    use crate::capture::{CaptureFilter, CaptureHub, CapturePoint, CaptureProto, CaptureTarget};
    use podswitch_api::CaptureSpec;
    let wire = |code, field: Option<&str>, message: &str| ApiError {
        code,
        field: field.map(str::to_string),
        message: message.into(),
    };
    let spec = || CaptureSpec {
        port: "default/a".into(),
        point: CapturePoint::Both,
        filter: CaptureFilter::default(),
        max_frames: 10,
        duration_ms: 10_000,
        snaplen: 1500,
    };
    let hub = CaptureHub::new(1);
    let t = CaptureTarget::Port(1);
    let refused =
        |sp: &CaptureSpec| ApiError::from(hub.start(t, "default/a", sp, None).unwrap_err());

    let mut sp = spec();
    sp.max_frames = 0;
    assert_eq!(
        refused(&sp),
        wire(
            ErrorCode::InvalidArgument,
            Some("max_frames"),
            "0 is outside 1..=10000000"
        )
    );
    sp.max_frames = 10_000_001;
    assert_eq!(
        refused(&sp),
        wire(
            ErrorCode::InvalidArgument,
            Some("max_frames"),
            "10000001 is outside 1..=10000000"
        )
    );
    let mut sp = spec();
    sp.duration_ms = 3_600_001;
    assert_eq!(
        refused(&sp),
        wire(
            ErrorCode::InvalidArgument,
            Some("duration_ms"),
            "3600001 is outside 1..=3600000"
        )
    );
    let mut sp = spec();
    sp.snaplen = 13;
    assert_eq!(
        refused(&sp),
        wire(
            ErrorCode::InvalidArgument,
            Some("snaplen"),
            "13 is outside 14..=262144"
        )
    );
    let mut sp = spec();
    sp.filter.proto = Some(CaptureProto::Icmp);
    sp.filter.port = Some(53);
    assert_eq!(
        refused(&sp),
        wire(
            ErrorCode::InvalidArgument,
            Some("filter.port"),
            "a port never matches proto icmp; use tcp, udp or no proto"
        )
    );
    for _ in 0..crate::capture::MAX_SESSIONS {
        hub.start(t, "default/a", &spec(), None).unwrap();
    }
    assert_eq!(
        refused(&spec()),
        wire(
            ErrorCode::AlreadyExists,
            None,
            "4 captures are already running; stop one first"
        )
    );
    let not_found = wire(
        ErrorCode::NotFound,
        Some("id"),
        "no capture 99 (finished and read, stopped for silence, or never started)",
    );
    assert_eq!(ApiError::from(hub.read(99, None).unwrap_err()), not_found);
    assert_eq!(ApiError::from(hub.stop(99).unwrap_err()), not_found);

    // Through the dispatch.
    let d = dir("capture-refusals");
    let (mut st, _log) = state(&d);
    let read = Request::CaptureRead(podswitch_api::CaptureReadArgs {
        id: 99,
        max_bytes: None,
    });
    assert_eq!(st.handle(read).unwrap_err(), not_found);
    let stop = Request::CaptureStop(podswitch_api::CaptureStopArgs { id: 99 });
    assert_eq!(st.handle(stop).unwrap_err(), not_found);
    let _ = std::fs::remove_dir_all(&d);
}

/// Every kind of capture refusal maps to the code, field and message the
/// hub produced when it built `ApiError`s itself.
#[test]
fn capture_error_kinds_keep_their_code_field_and_message() {
    use crate::capture::{CaptureError, CaptureErrorKind as K};
    let cases = [
        (
            Some("max_frames"),
            K::MaxFramesOutOfRange(0),
            ErrorCode::InvalidArgument,
            "0 is outside 1..=10000000",
        ),
        (
            Some("duration_ms"),
            K::DurationOutOfRange(3_600_001),
            ErrorCode::InvalidArgument,
            "3600001 is outside 1..=3600000",
        ),
        (
            Some("snaplen"),
            K::SnaplenOutOfRange(262_145),
            ErrorCode::InvalidArgument,
            "262145 is outside 14..=262144",
        ),
        (
            Some("filter.port"),
            K::BadFilter("a port never matches proto arp; use tcp, udp or no proto".into()),
            ErrorCode::InvalidArgument,
            "a port never matches proto arp; use tcp, udp or no proto",
        ),
        (
            None,
            K::TooManySessions,
            ErrorCode::AlreadyExists,
            "4 captures are already running; stop one first",
        ),
        (
            Some("id"),
            K::NoSuchCapture(7),
            ErrorCode::NotFound,
            "no capture 7 (finished and read, stopped for silence, or never started)",
        ),
        (
            None,
            K::SessionsPoisoned,
            ErrorCode::Internal,
            "capture sessions poisoned by an earlier panic",
        ),
        (
            None,
            K::SessionPoisoned,
            ErrorCode::Internal,
            "capture session poisoned",
        ),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (field, kind, code, message) in cases {
        // No wildcard: a new kind does not compile until it is listed here.
        seen.insert(match kind {
            K::MaxFramesOutOfRange(_) => 0,
            K::DurationOutOfRange(_) => 1,
            K::SnaplenOutOfRange(_) => 2,
            K::BadFilter(_) => 3,
            K::TooManySessions => 4,
            K::NoSuchCapture(_) => 5,
            K::SessionsPoisoned => 6,
            K::SessionPoisoned => 7,
        });
        let refusal = CaptureError { field, kind };
        let shown = refusal.to_string();
        assert_eq!(
            ApiError::from(refusal),
            ApiError {
                code,
                field: field.map(str::to_string),
                message: message.into(),
            }
        );
        // On its own the refusal names its field.
        match field {
            Some(f) => assert_eq!(shown, format!("{f}: {message}")),
            None => assert_eq!(shown, message),
        }
    }
    assert_eq!(seen.len(), 8, "every kind listed once");
}

//! Each operation's reply, pinned on the wire: a `result` as the switch
//! writes it decodes into the reply type and is written back as the same
//! response line, byte for byte. The fixtures are what the switch's
//! dispatch produced before replies were typed (keys sorted, as a
//! `serde_json::Value` writes them; optional fields both present and
//! absent).

use super::*;
use crate::Response;

/// `json` as the `result` of `op`: decoded as its reply, then written as
/// the switch writes a reply; the line must not change.
fn pinned(op: &str, json: &str) -> Reply {
    let value: serde_json::Value = serde_json::from_str(json).expect("the fixture is JSON");
    let before = serde_json::to_string(&Response {
        ok: true,
        result: Some(value.clone()),
        error: None,
    })
    .expect("a line serializes");
    let reply = Reply::decode(op, value).unwrap_or_else(|e| panic!("{op}: {e}"));
    assert_eq!(reply.op(), op);
    let after =
        serde_json::to_string(&Response::answer(Ok(reply.clone()))).expect("a line serializes");
    assert_eq!(after, before, "{op}: the reply changed on the wire");
    reply
}

const PORT: &str = r#"{"id":2,"ifname":"eth0","ipv4":"10.244.1.5","mac":"0a:58:0a:f4:01:05","mtu":1450,"netns":"/run/netns/web-0","pod":"default/web-0","queues":2,"stats":{"rx_bytes":1480,"rx_drops":0,"rx_packets":10,"tx_bytes":2960,"tx_drops":1,"tx_packets":20}}"#;
const PORT_V6_NO_V4: &str = r#"{"id":3,"ifname":"net1","ipv4":null,"ipv6":"fd00::5","mac":"0a:58:00:00:00:00","mtu":1500,"netns":"/proc/42/ns/net","pod":"default/v6","queues":1,"stats":{"rx_bytes":0,"rx_drops":0,"rx_packets":0,"tx_bytes":0,"tx_drops":0,"tx_packets":0}}"#;
const SERVICE_SETTINGS: &str = r#"{"cluster_cidrs":["10.244.0.0/16"],"masquerade":true,"masquerade_exclude":["192.168.0.0/16"],"node_port_range":[30000,32767],"service_cidrs":["10.96.0.0/12"]}"#;
const NODE_SPEC: &str = r#"{"gateway_mac":"ee:ee:ee:ee:ee:ee","host_interface":"psw0","mode":"vxlan","mtu":1450,"name":"node-1","pod_cidrs":["10.244.1.0/24"],"underlay_ipv4":"198.18.0.1","vxlan":{"port":8472,"vni":1}}"#;

#[test]
fn hello() {
    let r = pinned(
        "hello",
        r#"{"api_version":1,"node":"node-1","switch_version":"0.1.0","workers":2}"#,
    );
    assert!(matches!(r, Reply::Hello(Hello { workers: 2, .. })));
}

#[test]
fn port_info_of_add_port() {
    pinned("add_port", PORT);
    pinned("add_port", PORT_V6_NO_V4);
}

#[test]
fn null_replies() {
    assert_eq!(pinned("remove_port", "null"), Reply::RemovePort);
    assert_eq!(pinned("set_remote_nodes", "null"), Reply::SetRemoteNodes);
    // `null` and nothing else.
    assert!(Reply::decode("remove_port", serde_json::json!({})).is_err());
}

#[test]
fn applied_of_topology_changes() {
    let json = r#"{"added":["default/a","default/b"],"generation":7,"removed":["default/c"],"unchanged":3}"#;
    pinned("replace_topology", json);
    pinned("patch_topology", json);
    pinned(
        "patch_topology",
        r#"{"added":[],"generation":8,"removed":[],"unchanged":0}"#,
    );
}

#[test]
fn services_applied() {
    let json = r#"{"build_us":1234,"endpoints":15,"flows_reset":2,"frontends":6,"generation":9,"services":3}"#;
    pinned("set_services", json);
    pinned("patch_services", json);
}

#[test]
fn services_of_get_services() {
    // Built by the switch with `json!({"settings": .., "services": [..]})`
    // before it had a type.
    let json = format!(
        r#"{{"services":[{{"cluster_ips":["10.96.0.10"],"external_ips":[],"external_traffic_local":false,"internal_traffic_local":false,"name":"default/api","ports":[{{"endpoints":[{{"ip":"10.244.1.5","node":"node-1","port":8080,"ready":true,"terminating":false}},{{"ip":"10.244.2.5","port":8080,"ready":false,"terminating":true}}],"name":"http","port":80,"protocol":"TCP"}}]}},{{"affinity_timeout_secs":10800,"cluster_ips":["10.96.0.11"],"external_ips":["203.0.113.7"],"external_traffic_local":true,"internal_traffic_local":true,"name":"default/dns","ports":[{{"endpoints":[],"name":"","node_port":30053,"port":53,"protocol":"UDP"}}]}}],"settings":{SERVICE_SETTINGS}}}"#
    );
    let r = pinned("get_services", &json);
    let Reply::GetServices(s) = r else {
        panic!("{r:?}")
    };
    assert_eq!(s.services.len(), 2);
    pinned(
        "get_services",
        &format!(r#"{{"services":[],"settings":{SERVICE_SETTINGS}}}"#),
    );
}

#[test]
fn flows_of_list_flows() {
    pinned(
        "list_flows",
        r#"{"capacity":262144,"flows":[{"expires_in_secs":86399,"flags":3,"idle_secs":1,"index":17,"orig":{"dport":80,"dst":"10.96.0.10","proto":6,"sport":40000,"src":"10.244.1.5"},"reply":{"dport":40000,"dst":"10.244.1.5","proto":6,"sport":8080,"src":"10.244.2.5"},"state":"established"},{"expires_in_secs":29,"flags":0,"idle_secs":1,"index":18,"orig":{"dport":53,"dst":"10.244.2.9","proto":17,"sport":5353,"src":"10.244.1.5"},"reply":null,"state":"unreplied"}],"matched":2,"total":4}"#,
    );
}

#[test]
fn trace() {
    pinned(
        "trace",
        r#"{"egress":"default/web-1","ingress":"default/web-0","steps":[{"stage":"parse","tuple":{"dport":80,"dst":"10.96.0.10","proto":6,"sport":40000,"src":"10.244.1.5"},"verdict":"pending"},{"stage":"service","tuple":{"dport":8080,"dst":"10.244.1.6","proto":6,"sport":40000,"src":"10.244.1.5"},"verdict":"pending"},{"stage":"route","tuple":null,"verdict":"forward"}],"verdict":"forward default/web-1"}"#,
    );
    pinned(
        "trace",
        r#"{"affinity_backend":"10.244.1.6:8080","egress":null,"existing_flow":{"expires_in_secs":100,"flags":1,"idle_secs":20,"index":4,"orig":{"dport":80,"dst":"10.96.0.10","proto":6,"sport":40000,"src":"10.244.1.5"},"reply":null,"state":"syn_sent"},"ingress":"host/psw0","steps":[],"verdict":"drop no_route"}"#,
    );
}

#[test]
fn flows_removed_of_flush_flows() {
    // Built by the switch with `json!({"removed": n})` before it had a type.
    let r = pinned("flush_flows", r#"{"removed":12}"#);
    assert_eq!(r, Reply::FlushFlows(FlowsRemoved { removed: 12 }));
}

#[test]
fn capture_started() {
    pinned(
        "capture_start",
        r#"{"duration_ms":10000,"filter":"icmp and host 10.244.1.2","id":1,"max_frames":1000,"point":"both","port":"default/web-0","ring_slots":4096,"snaplen":262144}"#,
    );
    pinned(
        "capture_start",
        r#"{"duration_ms":500,"filter":"","id":2,"max_frames":10,"point":"egress","port":"underlay","ring_slots":4096,"snaplen":128,"vxlan_udp_port":8472}"#,
    );
}

#[test]
fn capture_batch_of_capture_read() {
    pinned(
        "capture_read",
        r#"{"captured":2,"done":false,"dropped":0,"filtered":5,"frames":[{"data":"AAECAwQFBgcICQoLCAA=","direction":"ingress","orig_len":14,"ts_ns":1765000000000000000},{"data":"","direction":"egress","orig_len":1514,"ts_ns":1765000000000001000}]}"#,
    );
    pinned(
        "capture_read",
        r#"{"captured":0,"done":true,"dropped":3,"filtered":0,"frames":[]}"#,
    );
}

#[test]
fn capture_counts_of_capture_stop() {
    pinned(
        "capture_stop",
        r#"{"captured":9,"dropped":1,"filtered":40}"#,
    );
}

#[test]
fn nodes() {
    pinned(
        "get_nodes",
        r#"{"generation":5,"local":{"gateway_ipv4":"10.244.1.1","gateway_mac":"ee:ee:ee:ee:ee:ee","host_interface":"psw0","mode":"vxlan","mtu":1450,"name":"node-1","pod_cidrs":["10.244.1.0/24"],"underlay_ipv4":"198.18.0.1","vxlan":{"local_ipv4":"198.18.0.1","udp_port":8472,"vni":1,"vtep_mac":"02:56:c6:12:00:01"}},"remote":[{"name":"node-2","pod_cidrs":["10.244.2.0/24"],"underlay_ipv4":"198.18.0.2","vtep_mac":"02:56:c6:12:00:02"}]}"#,
    );
    pinned(
        "get_nodes",
        r#"{"generation":1,"local":{"gateway_ipv4":"10.244.1.1","gateway_mac":"ee:ee:ee:ee:ee:ee","mode":"native","mtu":1500,"name":"node-1","pod_cidrs":["10.244.1.0/24","fd00:1::/64"],"underlay_ipv4":null},"remote":[{"name":"node-2","pod_cidrs":["10.244.2.0/24"],"underlay_ipv4":"198.18.0.2"}]}"#,
    );
}

#[test]
fn routes() {
    pinned(
        "get_routes",
        r#"{"generation":6,"kernel_routes":[{"node":"node-2","prefix":"10.244.2.0/24","via":"198.18.0.2"}],"lookup":{"dst":"10.244.2.7","gateway":false,"masquerade":false,"node":"node-2","route":{"interface":"psw0","port":1,"prefix":"0.0.0.0/0","target":"host"},"via":"198.18.0.2"},"mode":"native","routes":[{"pod":"default/a","port":2,"prefix":"10.244.1.2/32","target":"pod"},{"prefix":"10.244.1.0/24","target":"unassigned"},{"interface":"psw0","port":1,"prefix":"0.0.0.0/0","target":"host"}],"services":{"cluster_cidrs":["10.244.0.0/16"],"frontends":4,"masquerade":true,"masquerade_exclude":[],"node_ip":"198.18.0.1","node_port_range":[30000,32767],"service_cidrs":["10.96.0.0/12"]}}"#,
    );
    pinned(
        "get_routes",
        r#"{"generation":2,"lookup":{"dst":"10.96.0.10","gateway":false,"masquerade":false,"route":null,"services":["default/api"]},"mode":"vxlan","routes":[{"node":"node-2","prefix":"10.244.2.0/24","target":"overlay","underlay_ipv4":"198.18.0.2","vtep_mac":"02:56:c6:12:00:02"},{"prefix":"10.244.3.0/24","target":"no_route"}],"services":{"cluster_cidrs":[],"frontends":0,"masquerade":false,"masquerade_exclude":[],"node_ip":null,"node_port_range":[30000,32767],"service_cidrs":[]}}"#,
    );
    pinned(
        "get_routes",
        r#"{"generation":3,"mode":"vxlan","routes":[],"services":{"cluster_cidrs":[],"frontends":0,"masquerade":true,"masquerade_exclude":[],"node_ip":null,"node_port_range":[30000,32767],"service_cidrs":[]}}"#,
    );
}

#[test]
fn service_state() {
    pinned(
        "get_service_state",
        r#"[{"frontends":[{"affinity_secs":0,"backends":[{"eligible":true,"ip":"10.244.1.5","local":true,"node":"node-1","port":8080,"ready":true,"serving":true,"share":0.5000610500610501,"slots":8191,"terminating":false},{"eligible":false,"ip":"10.244.2.5","local":false,"port":8080,"ready":false,"serving":false,"share":0.0,"slots":0,"terminating":true}],"eligible":1,"ip":"10.96.0.10","kind":"cluster_ip","local_only":false,"port":80,"protocol":"TCP","table_size":16381},{"affinity_secs":10800,"backends":[],"eligible":0,"ip":"198.18.0.1","kind":"node_port","local_only":true,"port":30080,"protocol":"UDP","table_size":0}],"name":"default/api"},{"frontends":[],"name":"default/headless"}]"#,
    );
    pinned("get_service_state", "[]");
}

#[test]
fn running_config() {
    let json = format!(
        r#"{{"config":{{"adaptive_poll_us":100,"conntrack":{{"max_flows":262144,"timeouts":{{"icmp":30,"tcp_close":10,"tcp_close_wait":3600,"tcp_established":86400,"tcp_fin_wait":120,"tcp_last_ack":30,"tcp_syn_recv":60,"tcp_syn_sent":120,"tcp_time_wait":120,"udp_replied":120,"udp_unreplied":30}}}},"control_socket":"/run/podswitch/ctl.sock","io_backend":"auto","maglev_table_size":16381,"metrics_address":"127.0.0.1:9464","node":{NODE_SPEC},"node_port_addresses":["primary","198.18.0.0/15"],"poll_mode":"adaptive","state_dir":"/var/lib/podswitch","vxlan_tunnel_gso":true,"workers":2}},"log_filter":"info","log_format":"json","node_from_state":false,"state_file":"/var/lib/podswitch/state.json","switch_version":"0.1.0"}}"#
    );
    pinned("get_config", &json);
    // No metrics endpoint, no log format, a node without host port.
    let json = r#"{"config":{"adaptive_poll_us":50,"conntrack":{"max_flows":1024,"timeouts":{"icmp":30,"tcp_close":10,"tcp_close_wait":3600,"tcp_established":86400,"tcp_fin_wait":120,"tcp_last_ack":30,"tcp_syn_recv":60,"tcp_syn_sent":120,"tcp_time_wait":120,"udp_replied":120,"udp_unreplied":30}},"control_socket":"/tmp/ctl.sock","io_backend":"syscalls","maglev_table_size":251,"metrics_address":null,"node":{"gateway_ipv4":"10.244.1.254","gateway_mac":"ee:ee:ee:ee:ee:ee","host_interface":null,"mode":"native","mtu":1500,"name":"node-1","pod_cidrs":["10.244.1.0/24"],"vxlan":{"port":4789,"vni":1,"vtep_mac":"02:56:c6:12:00:01"}},"node_port_addresses":["primary"],"poll_mode":"poll","state_dir":"/tmp/state","vxlan_tunnel_gso":false,"workers":1},"log_filter":"debug","log_format":null,"node_from_state":true,"state_file":"/tmp/state/state.json","switch_version":"0.1.0"}"#;
    pinned("get_config", json);
}

#[test]
fn topology() {
    pinned(
        "get_topology",
        &format!(
            r#"{{"node":{NODE_SPEC},"pods":[{{"ifname":"eth0","ipv4":"10.244.1.5","name":"default/web-0","netns":"/run/netns/web-0"}},{{"ifname":"eth0","ipv4":null,"ipv6":"fd00::5","mac":"0a:58:00:00:00:05","mtu":1400,"name":"default/v6","netns":"/proc/7/ns/net"}}],"remote_nodes":[{{"name":"node-2","pod_cidrs":["10.244.2.0/24"],"underlay_ipv4":"198.18.0.2"}},{{"name":"node-3","pod_cidrs":["10.244.3.0/24"],"underlay_ipv4":"198.18.0.3","vtep_mac":"02:56:c6:12:00:03"}}]}}"#
        ),
    );
}

#[test]
fn port_infos_of_list_ports() {
    pinned("list_ports", &format!("[{PORT},{PORT_V6_NO_V4}]"));
    pinned("list_ports", "[]");
}

#[test]
fn stats() {
    pinned(
        "get_stats",
        &format!(
            r#"{{"datapath":{{"arp_replies":2,"batches":100,"capture_frames":0,"capture_ring_drops":0,"csum_completed":5,"drops":[{{"bytes":84,"description":"no route to the destination","packets":1,"reason":"no_route","stage":"route"}}],"fast_path":70,"forwarded_local":90,"forwarded_overlay":3,"gro_merged":0,"gso_superframes":1,"icmp_echo_replies":4,"icmp_errors_sent":1,"rx_bytes":150000,"rx_packets":120,"tx_bytes":149000,"tx_packets":118,"vxlan_rx":3,"vxlan_rx_superframes":0,"vxlan_tx":3,"vxlan_tx_tunnel_gso":0,"workers":[{{"contended_yields":0,"empty_polls":10,"polling_ns":2000,"sleeping_ns":900000,"wakeups":12,"working_ns":5000}}]}},"generation":4,"io_backend":"io_uring","ports":[{PORT}],"vxlan_tunnel_gso":false,"workers":1}}"#
        ),
    );
}

#[test]
fn poll_settings_of_set_poll_mode() {
    pinned("set_poll_mode", r#"{"budget_us":100,"mode":"adaptive"}"#);
}

#[test]
fn io_backend_set() {
    pinned("set_io_backend", r#"{"in_use":"syscalls"}"#);
}

#[test]
fn vxlan_tunnel_gso_set() {
    pinned("set_vxlan_tunnel_gso", r#"{"in_use":true}"#);
}

#[test]
fn every_request_has_its_reply_and_only_its_own() {
    let ops = [
        "hello",
        "add_port",
        "remove_port",
        "replace_topology",
        "patch_topology",
        "set_remote_nodes",
        "set_services",
        "patch_services",
        "get_services",
        "list_flows",
        "trace",
        "flush_flows",
        "capture_start",
        "capture_read",
        "capture_stop",
        "get_nodes",
        "get_routes",
        "get_service_state",
        "get_config",
        "get_topology",
        "list_ports",
        "get_stats",
        "set_poll_mode",
        "set_io_backend",
        "set_vxlan_tunnel_gso",
    ];
    for op in ops {
        // Known: a shape error, never an unknown op.
        let e = Reply::decode(op, serde_json::json!("not a reply")).unwrap_err();
        assert!(matches!(e, ReplyError::Shape { .. }), "{op}: {e}");
        assert!(
            e.to_string().starts_with(&format!("result of {op}: ")),
            "{e}"
        );
    }
    let e = Reply::decode("explode", serde_json::Value::Null).unwrap_err();
    assert!(matches!(e, ReplyError::UnknownOp(_)), "{e}");
    // The reply of one op is not taken for another's.
    assert!(Reply::decode("get_nodes", serde_json::from_str(PORT).unwrap()).is_err());
    assert_eq!(
        Reply::decode_for(
            &Request::FlushFlows(crate::FlushFlowsArgs {
                filter: crate::FlowFilter::default(),
            }),
            serde_json::json!({"removed": 0})
        )
        .unwrap(),
        Reply::FlushFlows(FlowsRemoved { removed: 0 })
    );
}

//! The kernel baseline for Service load balancing: kube-proxy in iptables
//! mode on one node whose pods are routed at L3, the way Calico wires them.
//!
//! ```text
//!   {prefix}-kp-node                                {prefix}-kp-pod{i}
//!   lo 169.254.1.1/32 (the pods' gateway)           lo up
//!   ip_forward=1, kube-proxy's filter + nat rules
//!   cali0 ── veth ────────────────────────────────── eth0 10.244.1.2/32  client
//!   cali1 ── veth ────────────────────────────────── eth0 10.244.1.3/32  echo-0
//!   cali2 ── veth ────────────────────────────────── eth0 10.244.1.4/32  echo-1
//!   cali3 ── veth ────────────────────────────────── eth0 10.244.1.5/32  echo-2
//!   10.244.1.x/32 dev caliN scope link              169.254.1.1 dev eth0 scope link
//!                                                   default via 169.254.1.1 dev eth0
//! ```
//!
//! Every packet between two pods is routed by the node's kernel, so
//! netfilter sees both directions in PREROUTING, FORWARD and POSTROUTING
//! without `br_netfilter`. The gateway 169.254.1.1 is a local address of
//! the node (on `lo`): with the default `arp_ignore=0` the kernel answers
//! ARP for it on every veth, which is what Calico gets from proxy ARP on
//! the host ends, without needing a default route in the node.
//!
//! The rules are the ones `pkg/proxy/iptables/proxier.go` writes on a full
//! sync (Kubernetes 1.28+, `--cluster-cidr=10.244.0.0/16`, NodePorts on all
//! addresses, `localhostNodePorts`), as one `iptables-restore -w --noflush
//! --counters` input holding the `filter` and `nat` tables, which is how
//! kube-proxy loads them. kube-proxy installs the jumps from the built-in
//! chains separately (`iptables -I`, once at start-up); here they are `-I`
//! lines of the same input, so one timed load builds everything:
//!
//! ```text
//!   PREROUTING/OUTPUT -> KUBE-SERVICES: one rule per service port,
//!     -d <clusterIP> -p tcp --dport <port> -j KUBE-SVC-<hash>, walked in order
//!   KUBE-SVC-<hash>: ! -s <cluster CIDR> -j KUBE-MARK-MASQ, then
//!     -m statistic --mode random --probability 1/n ... -j KUBE-SEP-<hash>
//!   KUBE-SEP-<hash>: -s <endpoint> -j KUBE-MARK-MASQ (hairpin),
//!     -j DNAT --to-destination <endpoint>
//!   POSTROUTING -> KUBE-POSTROUTING: MASQUERADE what KUBE-MARK-MASQ marked
//! ```
//!
//! One Service, `default/echo` at [`TARGET_CLUSTER_IP`], has real
//! endpoints: three backend pods that each run the lab's HTTP echo
//! workload ([`TARGET_HTTP_PORT`] -> [`BACKEND_HTTP_PORT`]) and a TCP
//! request/response echo ([`TARGET_CRR_PORT`] -> [`BACKEND_CRR_PORT`]) for
//! [`traffic::tcp_crr`]. All other Services get two or three endpoints on
//! other nodes' pod CIDRs that need not exist; they are there to make
//! `KUBE-SERVICES` as long as a cluster of that size makes it. kube-proxy
//! writes `KUBE-SERVICES` in Go map order, which is random, so the target's
//! rules sit in the middle: the position a new connection meets on
//! average.
//!
//! The client pod has `net.ipv4.tcp_tw_reuse=1`, so that the TIME_WAIT
//! sockets of earlier transactions do not exhaust its ephemeral ports
//! (see [`KernelServiceLab::measure_crr`]); a client measuring podswitch
//! needs the same for a like-for-like comparison.
//!
//! Namespaces carry the caller's prefix (../shared/TESTBED.md); a
//! [`KernelServiceLab`] removes them in [`KernelServiceLab::down`] or, best
//! effort, on drop. The backends' servers are threads of this process that
//! never end; after teardown they keep their (then unreachable) pod
//! namespaces alive until the process exits.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use ipnet::{IpNet, Ipv4Net};
use podswitch_switch::port::netlink::Netlink;
use podswitch_switch::port::netns;

use super::bridge::{kill_processes_in, link_index, wait_processes_gone, OwnedNetns, KILL_WAIT};
use super::demo::in_netns;
use super::traffic::{self, CrrReport};
use super::workload::EchoWorkload;
use podswitch_agent::manifest::Protocol;

/// The Service with real endpoints.
pub const TARGET_SERVICE: &str = "default/echo";
/// Its ClusterIP (the address kube-dns usually has; free here).
pub const TARGET_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Its HTTP port (port name `http`), served by the echo workload.
pub const TARGET_HTTP_PORT: u16 = 8080;
/// Its request/response port (port name `crr`), for [`traffic::tcp_crr`].
pub const TARGET_CRR_PORT: u16 = 5001;
/// Where the backends' echo workload listens (the `http` targetPort).
pub const BACKEND_HTTP_PORT: u16 = 80;
/// Where the backends' [`traffic::RrServer`] listens (the `crr` targetPort).
pub const BACKEND_CRR_PORT: u16 = 5001;
/// Backend pods of the target Service.
pub const BACKENDS: usize = 3;
/// The pods' default gateway, as Calico sets it.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod end of each veth.
pub const POD_IFNAME: &str = "eth0";
/// The cluster's pod CIDR (kube-proxy's `--cluster-cidr`).
pub const CLUSTER_CIDR: Ipv4Net = ipv4_net(Ipv4Addr::new(10, 244, 0, 0), 16);
/// This node's share of it.
pub const NODE_POD_CIDR: Ipv4Net = ipv4_net(Ipv4Addr::new(10, 244, 1, 0), 24);
/// The Service CIDR ClusterIPs are drawn from.
pub const SERVICE_CIDR: Ipv4Net = ipv4_net(Ipv4Addr::new(10, 96, 0, 0), 12);
/// kube-proxy's default masquerade mark (`--iptables-masquerade-bit=14`).
const MASQ_MARK: &str = "0x4000";
/// Above this many endpoints kube-proxy drops the per-endpoint comments
/// (`largeClusterEndpointsThreshold`).
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;
/// Most Services a lab takes: the Service CIDR has 2^20 addresses, and a
/// rule set far beyond any real cluster only measures iptables-restore.
pub const MAX_SERVICES: usize = 200_000;
/// Bound on transactions in one [`KernelServiceLab::measure_crr`].
const CRR_MAX_TRANSACTIONS: u64 = 10_000_000;
/// How long iptables-restore may wait for the xtables lock, in seconds.
const XTABLES_WAIT_SECS: &str = "5";

const fn ipv4_net(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Net {
    match Ipv4Net::new(addr, prefix_len) {
        Ok(net) => net,
        Err(_) => panic!("prefix length out of range"),
    }
}

/// Which iptables the rules are loaded with. Both give kube-proxy's
/// semantics: every new connection walks `KUBE-SERVICES` rule by rule.
/// They differ in how: `Nft` translates each rule into nf_tables
/// expressions (xtables matches such as `statistic` run through
/// `nft_compat`), `Legacy` loads x_tables blobs.
///
/// The default is `Legacy` because loading is what differs by orders of
/// magnitude: Debian 12's iptables-nft 1.8.9 restores kube-proxy's
/// `--noflush` input in time that grows with the square of the chain
/// count (its userspace compares chain names linearly), minutes at 10k
/// Services, where iptables-legacy takes about a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IptablesBackend {
    /// `iptables-nft-restore`: Debian 12's default `iptables`, and what
    /// kube-proxy's image picks on a node that uses nf_tables.
    Nft,
    /// `iptables-legacy-restore`.
    #[default]
    Legacy,
}

impl IptablesBackend {
    /// `nft` or `legacy`, as `iptables -V` names them.
    pub fn name(self) -> &'static str {
        match self {
            IptablesBackend::Nft => "nft",
            IptablesBackend::Legacy => "legacy",
        }
    }

    fn restore_program(self) -> &'static str {
        match self {
            IptablesBackend::Nft => "iptables-nft-restore",
            IptablesBackend::Legacy => "iptables-legacy-restore",
        }
    }

    fn save_program(self) -> &'static str {
        match self {
            IptablesBackend::Nft => "iptables-nft-save",
            IptablesBackend::Legacy => "iptables-legacy-save",
        }
    }
}

/// One Service port as kube-proxy's proxier sees it: a `ServicePortName`
/// with its ClusterIP and ready endpoints. Always TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name:port-name`, kube-proxy's `ServicePortName.String()`.
    pub name: String,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// Ready endpoints (pod IP and targetPort), in EndpointSlice order.
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServicePort {
    /// The `KUBE-SVC-<hash>` chain kube-proxy names for this port.
    pub fn chain(&self) -> String {
        format!("KUBE-SVC-{}", chain_hash(&format!("{}tcp", self.name)))
    }

    /// The `KUBE-SEP-<hash>` chain kube-proxy names for `endpoint`.
    pub fn endpoint_chain(&self, endpoint: SocketAddrV4) -> String {
        format!(
            "KUBE-SEP-{}",
            chain_hash(&format!("{}tcp{endpoint}", self.name))
        )
    }
}

/// The 16-character hash in kube-proxy's chain names: SHA-256, standard
/// base32, truncated (`portProtoHash`, `servicePortEndpointChainName`).
fn chain_hash(input: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(input.as_bytes());
    // 16 base32 characters are the first 10 bytes, without padding.
    data_encoding::BASE32.encode(&digest[..10])
}

/// splitmix64: a fixed, seedable spread for the synthetic Services.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The Service ports of a cluster with `services` Services, in the order
/// their rules appear in `KUBE-SERVICES`: `services - 1` synthetic ones
/// (one port each, two or three endpoints on other nodes, ClusterIPs
/// spread over [`SERVICE_CIDR`]) with the target's two ports
/// ([`TARGET_SERVICE`], endpoints `backends`) in the middle. The same
/// arguments always give the same Services.
///
/// # Errors
/// If `services` is 0 or above [`MAX_SERVICES`], or `backends` is empty.
pub fn service_ports(services: usize, backends: &[Ipv4Addr]) -> anyhow::Result<Vec<ServicePort>> {
    ensure!(
        (1..=MAX_SERVICES).contains(&services),
        "a kube-proxy lab takes 1..={MAX_SERVICES} Services, {services} asked for"
    );
    ensure!(!backends.is_empty(), "the target Service needs endpoints");
    const PORTS: [u16; 8] = [80, 443, 8080, 8443, 9090, 3000, 5432, 6379];
    let service_hosts = 1u64 << (32 - SERVICE_CIDR.prefix_len());
    let base = u32::from(SERVICE_CIDR.network());
    let mut taken: HashSet<Ipv4Addr> = [SERVICE_CIDR.network(), TARGET_CLUSTER_IP].into();
    let mut ports = Vec::with_capacity(services + 1);
    for k in 0..services as u64 - 1 {
        let mut seed = k;
        let cluster_ip = loop {
            seed = splitmix64(seed);
            let offset = (seed % service_hosts) as u32;
            let ip = Ipv4Addr::from(base + offset);
            if ip != SERVICE_CIDR.broadcast() && taken.insert(ip) {
                break ip;
            }
        };
        let r = splitmix64(seed ^ 0x5eed);
        let port = PORTS[(r % PORTS.len() as u64) as usize];
        let target_port = PORTS[((r >> 8) % PORTS.len() as u64) as usize];
        let endpoints = (0..2 + k % 2)
            .map(|e| {
                let h = splitmix64(r.wrapping_add(e));
                // Pod CIDRs of nodes 2..=254, hosts .2..=.251.
                let node = 2 + (h % 253) as u8;
                let host = 2 + ((h >> 16) % 250) as u8;
                SocketAddrV4::new(Ipv4Addr::new(10, 244, node, host), target_port)
            })
            .collect();
        ports.push(ServicePort {
            name: format!("ns-{:02}/svc-{k:06}:p{port}", k % 50),
            cluster_ip,
            port,
            endpoints,
        });
    }
    let middle = ports.len() / 2;
    let target = |port_name: &str, port: u16, target_port: u16| ServicePort {
        name: format!("{TARGET_SERVICE}:{port_name}"),
        cluster_ip: TARGET_CLUSTER_IP,
        port,
        endpoints: backends
            .iter()
            .map(|&ip| SocketAddrV4::new(ip, target_port))
            .collect(),
    };
    ports.insert(middle, target("http", TARGET_HTTP_PORT, BACKEND_HTTP_PORT));
    ports.insert(middle, target("crr", TARGET_CRR_PORT, BACKEND_CRR_PORT));
    Ok(ports)
}

/// The `iptables-restore` input kube-proxy writes for a set of Service
/// ports, with counts.
#[derive(Debug, Clone)]
pub struct KubeProxyRules {
    /// The input: `*filter ... COMMIT`, `*nat ... COMMIT`.
    pub text: String,
    /// Rules in the `filter` table, jumps from built-in chains included.
    pub filter_rules: usize,
    /// Rules in the `nat` table, jumps from built-in chains included.
    pub nat_rules: usize,
    /// Chains declared in the `nat` table.
    pub nat_chains: usize,
    /// Endpoints over all Service ports (one `KUBE-SEP` chain each).
    pub endpoints: usize,
}

impl KubeProxyRules {
    /// Rules in both tables.
    pub fn rules(&self) -> usize {
        self.filter_rules + self.nat_rules
    }
}

/// One table of an `iptables-restore` input: chain declarations, then
/// rules, as kube-proxy buffers them.
#[derive(Default)]
struct TableText {
    chains: String,
    rules: String,
    chain_count: usize,
    rule_count: usize,
}

impl TableText {
    fn chain(&mut self, name: &str) {
        self.chains.push(':');
        self.chains.push_str(name);
        self.chains.push_str(" - [0:0]\n");
        self.chain_count += 1;
    }

    fn rule(&mut self, rule: std::fmt::Arguments<'_>) {
        self.rules
            .write_fmt(rule)
            .expect("writing to a String cannot fail");
        self.rules.push('\n');
        self.rule_count += 1;
    }

    fn emit(&self, table: &str, out: &mut String) {
        out.push('*');
        out.push_str(table);
        out.push('\n');
        out.push_str(&self.chains);
        out.push_str(&self.rules);
        out.push_str("COMMIT\n");
    }
}

/// kube-proxy's `iptablesJumpChains` and `iptablesKubeletJumpChains`:
/// (table, built-in chain, extra match, comment, target). kube-proxy
/// prepends each in this order (`EnsureRule(Prepend, ...)`).
#[rustfmt::skip]
const JUMPS: [(&str, &str, &str, &str, &str); 14] = [
    ("filter", "INPUT", NEW, "kubernetes externally-visible service portals", "KUBE-EXTERNAL-SERVICES"),
    ("filter", "FORWARD", NEW, "kubernetes externally-visible service portals", "KUBE-EXTERNAL-SERVICES"),
    ("filter", "INPUT", "", "kubernetes health check service ports", "KUBE-NODEPORTS"),
    ("filter", "FORWARD", NEW, "kubernetes service portals", "KUBE-SERVICES"),
    ("filter", "OUTPUT", NEW, "kubernetes service portals", "KUBE-SERVICES"),
    ("filter", "FORWARD", "", "kubernetes forwarding rules", "KUBE-FORWARD"),
    ("filter", "INPUT", NEW, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
    ("filter", "OUTPUT", NEW, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
    ("filter", "FORWARD", NEW, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
    ("nat", "OUTPUT", "", "kubernetes service portals", "KUBE-SERVICES"),
    ("nat", "PREROUTING", "", "kubernetes service portals", "KUBE-SERVICES"),
    ("nat", "POSTROUTING", "", "kubernetes postrouting rules", "KUBE-POSTROUTING"),
    ("filter", "INPUT", "", "", "KUBE-FIREWALL"),
    ("filter", "OUTPUT", "", "", "KUBE-FIREWALL"),
];
/// The extra match of the jumps that only new connections take.
const NEW: &str = "-m conntrack --ctstate NEW ";

/// Renders what kube-proxy's `syncProxyRules` writes on a full sync for
/// `ports` (all with endpoints, `Cluster` traffic policy, no NodePorts,
/// no session affinity), `cluster_cidr` being its `--cluster-cidr`, plus
/// the jumps from the built-in chains.
pub fn render_rules(ports: &[ServicePort], cluster_cidr: Ipv4Net) -> KubeProxyRules {
    let mut filter = TableText::default();
    let mut nat = TableText::default();
    for chain in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-FIREWALL",
    ] {
        filter.chain(chain);
    }
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        nat.chain(chain);
    }
    for (table, from, extra, comment, to) in JUMPS {
        let t = if table == "nat" {
            &mut nat
        } else {
            &mut filter
        };
        if comment.is_empty() {
            t.rule(format_args!("-I {from} {extra}-j {to}"));
        } else {
            t.rule(format_args!(
                "-I {from} {extra}-m comment --comment \"{comment}\" -j {to}"
            ));
        }
    }

    filter.rule(format_args!(
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" \
         -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
    ));
    nat.rule(format_args!(
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    ));
    nat.rule(format_args!(
        "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"
    ));
    nat.rule(format_args!(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully"
    ));
    nat.rule(format_args!(
        "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"
    ));

    let endpoints: usize = ports.iter().map(|p| p.endpoints.len()).sum();
    // appendServiceCommentLocked: large clusters leave the per-endpoint
    // comments out to keep the input small.
    let large_cluster = endpoints > LARGE_CLUSTER_ENDPOINTS;
    for svc in ports {
        let name = &svc.name;
        let (ip, port) = (svc.cluster_ip, svc.port);
        let svc_chain = svc.chain();
        let cluster_ip_match = format!(
            "-m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {ip} --dport {port}"
        );
        nat.rule(format_args!(
            "-A KUBE-SERVICES {cluster_ip_match} -j {svc_chain}"
        ));
        nat.chain(&svc_chain);
        // Traffic to the ClusterIP from outside the pod network is
        // masqueraded (the local detector's IfNotLocal).
        nat.rule(format_args!(
            "-A {svc_chain} {cluster_ip_match} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"
        ));
        let n = svc.endpoints.len();
        for (i, &ep) in svc.endpoints.iter().enumerate() {
            let ep_chain = svc.endpoint_chain(ep);
            let comment = if large_cluster {
                String::new()
            } else {
                format!("-m comment --comment \"{name} -> {ep}\" ")
            };
            if i + 1 < n {
                // Each rule takes its share of what the ones above left:
                // 1/n, 1/(n-1), ..., and the last one takes the rest.
                let probability = 1.0 / (n - i) as f64;
                nat.rule(format_args!(
                    "-A {svc_chain} {comment}-m statistic --mode random --probability {probability:.10} -j {ep_chain}"
                ));
            } else {
                nat.rule(format_args!("-A {svc_chain} {comment}-j {ep_chain}"));
            }
        }
        for &ep in &svc.endpoints {
            let ep_chain = svc.endpoint_chain(ep);
            nat.chain(&ep_chain);
            let comment = if large_cluster {
                String::new()
            } else {
                format!("-m comment --comment {name} ")
            };
            // Hairpin: a pod reaching itself through the Service is
            // masqueraded so the reply comes back through the node.
            nat.rule(format_args!(
                "-A {ep_chain} {comment}-s {} -j KUBE-MARK-MASQ",
                ep.ip()
            ));
            nat.rule(format_args!(
                "-A {ep_chain} {comment}-m tcp -p tcp -j DNAT --to-destination {ep}"
            ));
        }
    }
    nat.rule(format_args!(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be \
         the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    ));

    filter.rule(format_args!(
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
    ));
    filter.rule(format_args!(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" \
         -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    ));
    filter.rule(format_args!(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" \
         -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    ));

    let mut text =
        String::with_capacity(filter.rules.len() + nat.chains.len() + nat.rules.len() + 1024);
    filter.emit("filter", &mut text);
    nat.emit("nat", &mut text);
    KubeProxyRules {
        text,
        filter_rules: filter.rule_count,
        nat_rules: nat.rule_count,
        nat_chains: nat.chain_count,
        endpoints,
    }
}

/// What loading the rules into the node took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RulesLoad {
    /// The iptables the rules went in with.
    pub backend: IptablesBackend,
    /// Services (the target counts once, though it has two ports).
    pub services: usize,
    /// Service ports: one `KUBE-SERVICES` rule and `KUBE-SVC` chain each.
    pub service_ports: usize,
    /// Endpoints: one `KUBE-SEP` chain each.
    pub endpoints: usize,
    /// Rules in the `filter` table.
    pub filter_rules: usize,
    /// Rules in the `nat` table.
    pub nat_rules: usize,
    /// Chains declared in the `nat` table.
    pub nat_chains: usize,
    /// Size of the iptables-restore input.
    pub input_bytes: usize,
    /// 1-based position of the target's `crr` rule in `KUBE-SERVICES`
    /// (its `http` rule follows), i.e. how many rules a new CRR
    /// connection is matched against.
    pub target_position: usize,
    /// Wall time of the one `iptables-restore` run, from spawn to exit.
    pub restore_time: Duration,
}

impl RulesLoad {
    /// Rules in both tables.
    pub fn rules(&self) -> usize {
        self.filter_rules + self.nat_rules
    }
}

/// One pod of the lab.
#[derive(Debug)]
struct RoutedPod {
    netns: OwnedNetns,
    name: String,
    ip: Ipv4Addr,
}

/// A node namespace running kube-proxy's iptables rules for `services`
/// Services, a client pod and [`BACKENDS`] backend pods of the target
/// Service, all routed (see the module docs). Namespace names:
/// `{prefix}-kp-node`, `{prefix}-kp-pod{i}` (pod 0 is the client).
///
/// Dropping it tears everything down (best effort, failures logged); call
/// [`KernelServiceLab::down`] to see them.
#[derive(Debug)]
pub struct KernelServiceLab {
    node: Option<OwnedNetns>,
    pods: Vec<RoutedPod>,
    backend: IptablesBackend,
    load: RulesLoad,
}

impl KernelServiceLab {
    /// Builds the lab with `services` Services, loading the rules with the
    /// default backend ([`IptablesBackend::Legacy`]).
    ///
    /// # Errors
    /// See [`KernelServiceLab::up_with`].
    pub fn up(prefix: &str, services: usize) -> anyhow::Result<Self> {
        Self::up_with(prefix, services, IptablesBackend::default())
    }

    /// Builds the lab with `services` Services, loading the rules with
    /// `backend`.
    ///
    /// # Errors
    /// If `services` is out of range, a namespace with one of the names
    /// exists already, a netlink step fails, a backend server cannot
    /// listen, or iptables-restore is missing or rejects the rules;
    /// whatever was created by then is torn down again.
    pub fn up_with(
        prefix: &str,
        services: usize,
        backend: IptablesBackend,
    ) -> anyhow::Result<Self> {
        let mut lab = KernelServiceLab {
            node: None,
            pods: Vec::with_capacity(BACKENDS + 1),
            backend,
            load: RulesLoad::default(),
        };
        // On error `lab` drops here and removes what was built.
        lab.build(prefix, services).with_context(|| {
            format!(
                "building kube-proxy lab {prefix:?} ({services} Services, iptables-{})",
                backend.name()
            )
        })?;
        Ok(lab)
    }

    fn build(&mut self, prefix: &str, services: usize) -> anyhow::Result<()> {
        // Check the arguments before creating anything.
        let backend_ips: Vec<Ipv4Addr> = (0..BACKENDS).map(|i| pod_address(i + 1)).collect();
        let ports = service_ports(services, &backend_ips)?;

        self.node = Some(create_netns(format!("{prefix}-kp-node"))?);
        let node_path = self.node_netns().to_owned();
        let nl = Netlink::in_netns(&node_path)
            .with_context(|| format!("netlink in {}", node_path.display()))?;
        nl.set_lo_up()?;
        let lo = link_index(&nl, "lo")?;
        nl.add_address(lo, IpAddr::V4(POD_GATEWAY), 32)?;
        in_netns(&node_path, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .context("setting net.ipv4.ip_forward=1")
        })?;

        for i in 0..=BACKENDS {
            let name = if i == 0 {
                "client".to_owned()
            } else {
                format!("echo-{}", i - 1)
            };
            let ip = pod_address(i);
            let netns = create_netns(format!("{prefix}-kp-pod{i}"))?;
            let pod_path = netns.path.clone();
            self.pods.push(RoutedPod { netns, name, ip });
            wire_pod(&nl, i, &pod_path, ip)
                .with_context(|| format!("wiring pod {i} ({ip}) to the node"))?;
        }
        // Every CRR transaction leaves a TIME_WAIT socket in the client for
        // 60 s. connect() tries the even half of the 28k ephemeral ports
        // first, so past ~14k of them each connect scans the whole half
        // and takes milliseconds: one 2 s run at 7k/s, or a second run
        // soon after the first, would measure that instead of the Service
        // path. tcp_tw_reuse=1 lets connect() take a port whose TIME_WAIT
        // is older than a second (RFC 7323 timestamps tell old segments
        // from new ones).
        in_netns(self.client_netns(), || {
            std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")
                .context("setting net.ipv4.tcp_tw_reuse=1 in the client pod")
        })?;

        for pod in &self.pods[1..] {
            let name = pod.name.clone();
            in_netns(&pod.netns.path, move || {
                // Both servers listen once bound here, and serve from their
                // own threads until the process exits (see the module docs).
                let _echo = EchoWorkload::start(&name, &[BACKEND_HTTP_PORT], &[])?;
                let rr = traffic::RrServer::bind(
                    Protocol::Tcp,
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, BACKEND_CRR_PORT)),
                )?;
                std::thread::Builder::new()
                    .name(format!("kp-rr-{name}"))
                    .spawn(move || {
                        if let Err(e) = rr.run() {
                            tracing::warn!("rr server in {name}: {e:#}");
                        }
                    })
                    .context("spawning an rr server thread")?;
                Ok(())
            })
            .with_context(|| format!("starting the servers of pod {}", pod.name))?;
        }

        let rules = render_rules(&ports, CLUSTER_CIDR);
        let restore_time = self.restore(&rules.text)?;
        let target_position = ports
            .iter()
            .position(|p| p.cluster_ip == TARGET_CLUSTER_IP)
            .map_or(0, |i| i + 1);
        self.load = RulesLoad {
            backend: self.backend,
            services,
            service_ports: ports.len(),
            endpoints: rules.endpoints,
            filter_rules: rules.filter_rules,
            nat_rules: rules.nat_rules,
            nat_chains: rules.nat_chains,
            input_bytes: rules.text.len(),
            target_position,
            restore_time,
        };
        tracing::info!(load = ?self.load, "kube-proxy rules loaded");
        Ok(())
    }

    /// Runs one `iptables-restore -w --noflush --counters` in the node
    /// namespace (a child forked from a thread inside it inherits it) and
    /// returns how long it took.
    fn restore(&self, input: &str) -> anyhow::Result<Duration> {
        let program = self.backend.restore_program();
        let input = input.to_owned();
        in_netns(self.node_netns(), move || {
            let start = Instant::now();
            let mut child = Command::new(program)
                .args(["-w", XTABLES_WAIT_SECS, "--noflush", "--counters"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| {
                    format!("running {program} (install the Debian package iptables)")
                })?;
            let mut stdin = child.stdin.take().context("iptables-restore stdin")?;
            let written = stdin.write_all(input.as_bytes());
            drop(stdin);
            let out = child
                .wait_with_output()
                .with_context(|| format!("waiting for {program}"))?;
            let elapsed = start.elapsed();
            if !out.status.success() {
                bail!(
                    "{program} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            written.with_context(|| format!("writing the rules to {program}"))?;
            Ok(elapsed)
        })
    }

    /// The rules as the kernel holds them now: `iptables-save` of the
    /// node's `filter` and `nat` tables.
    ///
    /// # Errors
    /// If iptables-save cannot run or fails.
    pub fn iptables_save(&self) -> anyhow::Result<String> {
        let program = self.backend.save_program();
        in_netns(self.node_netns(), move || {
            let out = Command::new(program)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {program}"))?;
            if !out.status.success() {
                bail!(
                    "{program} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            String::from_utf8(out.stdout).with_context(|| format!("{program} output"))
        })
    }

    /// Connect/request/response/close transactions from the client pod to
    /// the target Service's [`TARGET_CRR_PORT`], each on a new TCP
    /// connection (so each one walks `KUBE-SERVICES`), for `duration`.
    /// The client reuses ports whose TIME_WAIT is over a second old, so
    /// runs can follow each other without running out of ports.
    ///
    /// # Errors
    /// The first failed transaction (see [`traffic::tcp_crr`]).
    pub fn measure_crr(&self, duration: Duration) -> anyhow::Result<CrrReport> {
        let dst = Self::crr_target();
        in_netns(self.client_netns(), move || {
            traffic::tcp_crr(dst, duration, CRR_MAX_TRANSACTIONS)
        })
        .with_context(|| format!("tcp crr from the client pod to {dst} for {duration:?}"))
    }

    /// The target Service's HTTP address.
    pub fn http_target() -> SocketAddr {
        SocketAddr::from((TARGET_CLUSTER_IP, TARGET_HTTP_PORT))
    }

    /// The target Service's request/response address.
    pub fn crr_target() -> SocketAddr {
        SocketAddr::from((TARGET_CLUSTER_IP, TARGET_CRR_PORT))
    }

    /// What loading the rules took and how many there are.
    pub fn load(&self) -> &RulesLoad {
        &self.load
    }

    /// The iptables the rules were loaded with.
    pub fn backend(&self) -> IptablesBackend {
        self.backend
    }

    /// The node namespace, which holds the rules.
    pub fn node_netns(&self) -> &Path {
        &self
            .node
            .as_ref()
            .expect("a lab handed out by up() has its node namespace")
            .path
    }

    /// The client pod's namespace.
    pub fn client_netns(&self) -> &Path {
        &self.pods[0].netns.path
    }

    /// The client pod's address.
    pub fn client_ip(&self) -> Ipv4Addr {
        self.pods[0].ip
    }

    /// The backend pods as (name, address); the name is what their echo
    /// answers with in `From=`.
    pub fn backends(&self) -> Vec<(String, Ipv4Addr)> {
        self.pods[1..]
            .iter()
            .map(|p| (p.name.clone(), p.ip))
            .collect()
    }

    /// Tears the lab down: kills the processes left in its namespaces and
    /// deletes them (pods first, then the node; the veths and the rules
    /// go with them).
    ///
    /// # Errors
    /// Every step is attempted; the error lists each one that failed.
    pub fn down(mut self) -> anyhow::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        let namespaces: Vec<OwnedNetns> = self
            .pods
            .drain(..)
            .map(|p| p.netns)
            .chain(self.node.take())
            .collect();
        for ns in &namespaces {
            kill_processes_in(&ns.path);
        }
        let mut failures = Vec::new();
        for ns in &namespaces {
            wait_processes_gone(&ns.path, KILL_WAIT);
            if let Err(e) = netns::delete(&ns.name) {
                failures.push(format!("deleting {:?}: {e}", ns.name));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("tearing down kube-proxy lab: {}", failures.join("; "))
        }
    }
}

impl Drop for KernelServiceLab {
    fn drop(&mut self) {
        if let Err(error) = self.teardown() {
            tracing::warn!("{error:#}");
        }
    }
}

/// Pod `i` at host `i + 2` of [`NODE_POD_CIDR`] (.1 stays free, as on a
/// Calico node).
fn pod_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(NODE_POD_CIDR.network()) + 2 + i as u32)
}

/// Creates a namespace, refusing to adopt a leftover of the same name.
fn create_netns(name: String) -> anyhow::Result<OwnedNetns> {
    let path = netns::create(&name).with_context(|| {
        format!("creating network namespace {name:?} (a leftover of an earlier run?)")
    })?;
    Ok(OwnedNetns { name, path })
}

/// Creates `cali{i}` in the node with its peer `eth0` directly in the pod
/// and routes the pod's /32 to it; gives the pod its /32 and a default
/// route via [`POD_GATEWAY`] on the link, as Calico's CNI plugin does.
fn wire_pod(node: &Netlink, i: usize, pod_path: &Path, ip: Ipv4Addr) -> anyhow::Result<()> {
    let host_ifname = format!("cali{i}");
    let pod_fd = netns::open(pod_path)?;
    node.create_veth_peer_in(&host_ifname, POD_IFNAME, pod_fd.as_fd())?;
    let host = link_index(node, &host_ifname)?;
    node.link_set_up(host)?;
    node.add_route(IpNet::V4(Ipv4Net::from(ip)), None, Some(host))?;

    let pod = Netlink::in_netns(pod_path)
        .with_context(|| format!("netlink in {}", pod_path.display()))?;
    pod.set_lo_up()?;
    let eth0 = link_index(&pod, POD_IFNAME)?;
    pod.add_address(eth0, IpAddr::V4(ip), 32)?;
    pod.link_set_up(eth0)?;
    pod.add_route(IpNet::V4(Ipv4Net::from(POD_GATEWAY)), None, Some(eth0))?;
    pod.add_route(
        IpNet::V4(Ipv4Net::default()),
        Some(IpAddr::V4(POD_GATEWAY)),
        Some(eth0),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    use podswitch_switch::testing::have_root;

    /// Paths of the lab's namespaces, to check they are gone.
    fn paths(lab: &KernelServiceLab) -> Vec<PathBuf> {
        lab.pods
            .iter()
            .map(|p| p.netns.path.clone())
            .chain(lab.node.as_ref().map(|n| n.path.clone()))
            .collect()
    }

    #[test]
    fn chain_names_match_kube_proxy() {
        // Names from kube-proxy's own tests (pkg/proxy/iptables).
        let svc = ServicePort {
            name: "ns1/svc1:p80".to_owned(),
            cluster_ip: Ipv4Addr::new(172, 30, 0, 41),
            port: 80,
            endpoints: vec![],
        };
        assert_eq!(svc.chain(), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            svc.endpoint_chain("10.180.0.1:80".parse().unwrap()),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            svc.endpoint_chain("10.180.0.2:80".parse().unwrap()),
            "KUBE-SEP-LXVODXWDISEETFEF"
        );
    }

    #[test]
    fn small_cluster_rules_read_like_kube_proxys() {
        let svc = ServicePort {
            name: "ns1/svc1:p80".to_owned(),
            cluster_ip: Ipv4Addr::new(172, 30, 0, 41),
            port: 80,
            endpoints: vec![
                "10.180.0.1:80".parse().unwrap(),
                "10.180.0.2:80".parse().unwrap(),
            ],
        };
        let rules = render_rules(&[svc], "10.0.0.0/8".parse().unwrap());
        let text = &rules.text;
        for line in [
            "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O",
            "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
            "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SXIVWICOYRO3J4NJ",
            "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.2:80\" -j KUBE-SEP-LXVODXWDISEETFEF",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            ":KUBE-SEP-LXVODXWDISEETFEF - [0:0]",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        // The NodePorts jump is the last rule of KUBE-SERVICES.
        let last = text
            .lines()
            .rev()
            .find(|l| l.starts_with("-A KUBE-SERVICES "))
            .unwrap();
        assert!(last.ends_with("-j KUBE-NODEPORTS"), "{last}");
        assert!(text.starts_with("*filter\n") && text.ends_with("COMMIT\n"));
        assert_eq!(text.matches("COMMIT\n").count(), 2);
        // nat: 3 jumps, 4 fixed rules, 1 + 1 + 2 + 2*2 for the service,
        // the NodePorts jump.
        assert_eq!(rules.nat_rules, 3 + 4 + 8 + 1);
        assert_eq!(rules.nat_chains, 4 + 1 + 2);
        assert_eq!(rules.endpoints, 2);
    }

    #[test]
    fn three_endpoints_get_kube_proxys_probabilities() {
        let svc = ServicePort {
            name: "a/b:c".to_owned(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 1),
            port: 1,
            endpoints: (1..=3)
                .map(|h| SocketAddrV4::new(Ipv4Addr::new(10, 244, 9, h), 1))
                .collect(),
        };
        let text = render_rules(&[svc], CLUSTER_CIDR).text;
        let probabilities: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split("--probability ").nth(1))
            .map(|rest| rest.split(' ').next().unwrap())
            .collect();
        assert_eq!(probabilities, ["0.3333333333", "0.5000000000"]);
    }

    #[test]
    fn synthetic_services_put_the_target_in_the_middle() {
        let backends = [Ipv4Addr::new(10, 244, 1, 3), Ipv4Addr::new(10, 244, 1, 4)];
        let ports = service_ports(1001, &backends).unwrap();
        assert_eq!(ports.len(), 1002);
        assert_eq!(
            ports,
            service_ports(1001, &backends).unwrap(),
            "deterministic"
        );
        let at = ports
            .iter()
            .position(|p| p.cluster_ip == TARGET_CLUSTER_IP)
            .unwrap();
        assert_eq!(at, 500);
        assert_eq!(ports[at].name, "default/echo:crr");
        assert_eq!(ports[at].port, TARGET_CRR_PORT);
        assert_eq!(
            ports[at].endpoints,
            [
                SocketAddrV4::new(backends[0], BACKEND_CRR_PORT),
                SocketAddrV4::new(backends[1], BACKEND_CRR_PORT)
            ]
        );
        assert_eq!(ports[at + 1].name, "default/echo:http");
        assert_eq!(ports[at + 1].port, TARGET_HTTP_PORT);
        let ips: HashSet<Ipv4Addr> = ports.iter().map(|p| p.cluster_ip).collect();
        assert_eq!(ips.len(), 1001, "ClusterIPs are unique per Service");
        for p in &ports {
            assert!(SERVICE_CIDR.contains(&p.cluster_ip), "{p:?}");
            assert!((2..=3).contains(&p.endpoints.len()), "{p:?}");
            for ep in &p.endpoints {
                assert!(CLUSTER_CIDR.contains(ep.ip()), "{p:?}");
                if p.cluster_ip != TARGET_CLUSTER_IP {
                    assert!(!NODE_POD_CIDR.contains(ep.ip()), "{p:?}");
                }
            }
        }
        // Spread over the /12, not bunched at its start.
        let high = ports
            .iter()
            .filter(|p| u32::from(p.cluster_ip) >= u32::from(Ipv4Addr::new(10, 104, 0, 0)))
            .count();
        assert!(
            (400..600).contains(&high),
            "{high} of 1002 in the upper half"
        );
        assert!(service_ports(0, &backends).is_err());
        assert!(service_ports(MAX_SERVICES + 1, &backends).is_err());
        assert!(service_ports(1, &[]).is_err());
        assert_eq!(service_ports(1, &backends).unwrap().len(), 2);
    }

    #[test]
    fn large_clusters_drop_endpoint_comments() {
        let ports = service_ports(1000, &[Ipv4Addr::new(10, 244, 1, 3)]).unwrap();
        let rules = render_rules(&ports, CLUSTER_CIDR);
        assert!(rules.endpoints > LARGE_CLUSTER_ENDPOINTS);
        assert!(!rules.text.contains(" -> "), "no per-endpoint comments");
        assert!(rules.text.contains("cluster IP\""));
    }

    /// ```text
    ///   client 10.244.1.2 ── cali0 ─ node (iptables) ─ cali1..3 ── echo-0..2
    ///   TCP to 10.96.0.10:8080 ──── DNAT ─────────────────────────> :80
    /// ```
    #[test]
    fn service_traffic_is_routed_and_load_balanced_by_the_kernel() {
        if !have_root("service_traffic_is_routed_and_load_balanced_by_the_kernel") {
            return;
        }
        let prefix = format!("pswt-kpu-{}", std::process::id());
        let lab = KernelServiceLab::up(&prefix, 10).expect("lab comes up");
        let load = lab.load().clone();
        assert_eq!(load.services, 10);
        assert_eq!(load.service_ports, 11);
        assert_eq!(load.target_position, 5);
        let saved = lab.iptables_save().unwrap();
        assert_eq!(
            saved
                .lines()
                .filter(|l| l.starts_with("-A KUBE-SERVICES ") && l.contains("cluster IP"))
                .count(),
            11,
            "{saved}"
        );
        let dst = KernelServiceLab::http_target();
        let client = lab.client_ip();
        let (status, body) = in_netns(lab.client_netns(), move || {
            super::super::probe::http_get(dst, "echo", "/", Duration::from_secs(5))
        })
        .unwrap();
        assert_eq!(status, 200);
        assert!(body.contains(&format!("ClientIP={client} ")), "{body}");
        let crr = lab.measure_crr(Duration::from_millis(200)).unwrap();
        assert!(crr.count > 0, "{crr:?}");
        let paths = paths(&lab);
        lab.down().unwrap();
        assert!(paths.iter().all(|p| !p.exists()), "{paths:?}");
    }
}

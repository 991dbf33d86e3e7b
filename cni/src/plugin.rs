//! The plugin's commands: what ADD, DEL, CHECK, STATUS, GC and VERSION do
//! with the node's switch (its control socket), the IPAM store and the
//! pod's network namespace.
//!
//! ADD asks the switch first (so a switch that is down fails the call at
//! once, before anything is allocated), then allocates the address, then
//! has the switch create the pod's tap inside `CNI_NETNS`; a failure after
//! the allocation frees it again, so a failed ADD leaves nothing behind.
//! DEL undoes ADD in reverse and succeeds when there is nothing left to
//! undo.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use podswitch_api::client::{Client, ClientError};
use podswitch_api::{ErrorCode as ApiCode, Mac, PodSpec, PortInfo, Request, Topology};
use podswitch_netns as netns;
use serde::de::DeserializeOwned;

use crate::delegate::Delegate;
use crate::ipam::{IpamError, Range, Record, Store};
use crate::spec::{
    parse_config, version_info, CniError, CniResult, Command, Dns, ErrorCode, Interface,
    Invocation, IpConfig, IpamConf, NetConf, Route, SpecVersion, LATEST_VERSION,
};

/// How long one request to the switch may take. The switch handles
/// requests one at a time, so a request made while many pods start waits
/// for the ports created before it (50 at once took 1.7 s here). A switch
/// that is not running fails at once: its socket refuses the connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one invocation: the environment through `env`, the configuration
/// in `stdin`. Returns what to print on stdout on success (ADD's result,
/// VERSION's reply), or the CNI error.
///
/// # Errors
/// The [`CniError`] to print; see [`ErrorCode`] for the codes.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<String>, CniError> {
    let inv = Invocation::from_env(env)?;
    if inv.command == Command::Version {
        // A runtime may probe with any version, or none: always answer.
        let v = super::spec::sniff_version(stdin).unwrap_or_else(|| LATEST_VERSION.to_string());
        return Ok(Some(pretty(&version_info(&v))));
    }
    let conf = parse_config(stdin)?;
    let needs = |min: SpecVersion| {
        if conf.cni_version < min {
            Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "config version {} does not allow {}",
                    conf.cni_version_raw,
                    inv.command.as_str()
                ),
            )
            .with_details(format!(
                "{} needs cniVersion {min} or later",
                inv.command.as_str()
            )))
        } else {
            Ok(())
        }
    };
    match inv.command {
        Command::Add => add(&inv, &conf, stdin).map(|r| {
            Some(pretty(
                &r.versioned(conf.cni_version, &conf.cni_version_raw),
            ))
        }),
        Command::Del => del(&inv, &conf, stdin).map(|()| None),
        Command::Check => {
            needs(SpecVersion::V0_4_0)?;
            check(&inv, &conf, stdin).map(|()| None)
        }
        Command::Status => {
            needs(SpecVersion::V1_1_0)?;
            status(&inv, &conf, stdin).map(|()| None)
        }
        Command::Gc => {
            needs(SpecVersion::V1_1_0)?;
            gc(&inv, &conf, stdin).map(|()| None)
        }
        Command::Version => Ok(Some(pretty(&version_info(&conf.cni_version_raw)))),
    }
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The switch port's name: `namespace/pod` from the Kubernetes `CNI_ARGS`,
/// else the container ID; `@ifname` is appended for interfaces other than
/// `eth0`, so a pod may have several.
pub fn port_name(inv: &Invocation) -> String {
    let base = match (inv.arg("K8S_POD_NAMESPACE"), inv.arg("K8S_POD_NAME")) {
        (Some(ns), Some(pod)) if !ns.is_empty() && !pod.is_empty() => format!("{ns}/{pod}"),
        _ => inv.container_id().to_string(),
    };
    match inv.ifname() {
        "eth0" => base,
        other => format!("{base}@{other}"),
    }
}

/// An error and its sources, joined with ": ".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// A connection to the node's switch.
struct Switch {
    path: PathBuf,
    client: Client,
}

impl Switch {
    /// Connects. Every request carries the API version, so a switch that
    /// speaks another one refuses the first request.
    ///
    /// # Errors
    /// Code 11 if the switch is not running.
    fn connect(path: &Path) -> Result<Switch, CniError> {
        let client =
            Client::connect(path, REQUEST_TIMEOUT).map_err(|e| switch_error(path, "connect", e))?;
        Ok(Switch {
            path: path.to_path_buf(),
            client,
        })
    }

    /// The `hello` handshake (STATUS): the switch answers requests.
    fn hello(&mut self) -> Result<(), CniError> {
        self.client
            .hello()
            .map(|_| ())
            .map_err(|e| switch_error(&self.path, "hello", e))
    }

    fn call<T: DeserializeOwned>(&mut self, req: &Request, what: &str) -> Result<T, CniError> {
        self.client
            .call(req)
            .map_err(|e| switch_error(&self.path, what, e))
    }

    fn ports(&mut self) -> Result<Vec<PortInfo>, CniError> {
        self.client
            .list_ports()
            .map_err(|e| switch_error(&self.path, "list_ports", e))
    }

    /// Removes port `name`; one that is already gone is fine.
    fn remove_port(&mut self, name: &str) -> Result<(), CniError> {
        match self.client.remove_port(name) {
            Ok(()) => Ok(()),
            Err(ClientError::Api(e)) if e.code == ApiCode::NotFound => Ok(()),
            Err(e) => Err(switch_error(&self.path, "remove_port", e)),
        }
    }
}

/// Maps a control-socket failure to a CNI error: the switch being down or
/// silent is "try again later" (11), a refusal is 100.
fn switch_error(path: &Path, what: &str, e: ClientError) -> CniError {
    match e {
        ClientError::Connect { source, .. } => CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "the podswitch switch is not running (cannot connect to {})",
                path.display()
            ),
        )
        .with_details(source.to_string()),
        ClientError::Io { source, .. } => CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "the podswitch switch at {} did not answer {what}",
                path.display()
            ),
        )
        .with_details(source.to_string()),
        ClientError::Protocol { .. } => CniError::new(
            ErrorCode::SwitchRefused,
            format!("bad answer from the switch to {what}"),
        )
        .with_details(chain(&e)),
        ClientError::Api(api) => CniError::new(
            ErrorCode::SwitchRefused,
            format!("the switch refused {what}: {}", api.message),
        )
        .with_details(api.to_string()),
    }
}

fn ipam_error(e: IpamError) -> CniError {
    let code = match &e {
        IpamError::InvalidRange(_) => ErrorCode::InvalidConfig,
        IpamError::Exhausted { .. } => ErrorCode::RangeExhausted,
        IpamError::AlreadyAllocated { .. } => ErrorCode::AlreadyAttached,
        IpamError::Io { .. } => ErrorCode::IpamStore,
    };
    CniError::new(code, chain(&e))
}

/// An address held for an ADD in progress, freed again if the ADD fails.
enum Lease {
    Builtin {
        store: Store,
        ip: Ipv4Addr,
    },
    Delegated {
        delegate: Delegate,
        ip: Ipv4Addr,
        /// The IPAM plugin's DNS settings.
        dns: Dns,
    },
}

impl Lease {
    fn ip(&self) -> Ipv4Addr {
        match self {
            Lease::Builtin { ip, .. } | Lease::Delegated { ip, .. } => *ip,
        }
    }

    /// Frees the address; returns why that failed, if it did.
    fn undo(&self, inv: &Invocation, stdin: &[u8]) -> Option<String> {
        let r = match self {
            Lease::Builtin { store, ip } => store
                .release_ip(*ip, inv.container_id(), inv.ifname())
                .map(|_| ())
                .map_err(|e| chain(&e)),
            Lease::Delegated { delegate, .. } => delegate
                .run(inv, Command::Del, stdin)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        r.err()
    }
}

/// Allocates the pod's address from the built-in store or the delegated
/// IPAM plugin. `node_cidr` and `gateway` are the switch's.
fn lease(
    inv: &Invocation,
    conf: &NetConf,
    stdin: &[u8],
    port: &str,
    node_cidr: ipnet::Ipv4Net,
    gateway: Ipv4Addr,
) -> Result<Lease, CniError> {
    match &conf.ipam {
        IpamConf::Builtin(b) => {
            let subnet = b.subnet.unwrap_or(node_cidr);
            if !(node_cidr.contains(&subnet.network()) && node_cidr.contains(&subnet.broadcast())) {
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("ipam.subnet {subnet} is not inside the node's pod CIDR {node_cidr}"),
                ));
            }
            let range = Range::new(subnet, b.range_start, b.range_end, Some(gateway))
                .map_err(ipam_error)?;
            let store = Store::open(&conf.data_dir, &conf.name).map_err(ipam_error)?;
            let ip = store
                .allocate(
                    &range,
                    &Record {
                        container_id: inv.container_id().to_string(),
                        ifname: inv.ifname().to_string(),
                        port: port.to_string(),
                    },
                )
                .map_err(ipam_error)?;
            Ok(Lease::Builtin { store, ip })
        }
        IpamConf::Delegate { plugin } => {
            let delegate = Delegate::find(plugin, &inv.path)?;
            let result = delegate.add(inv, stdin)?;
            let ip = result.ips.iter().find_map(|c| match c.address.addr() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            });
            let lease = |ip| Lease::Delegated {
                delegate: delegate.clone(),
                ip,
                dns: result.dns.clone(),
            };
            match ip {
                Some(ip) => Ok(lease(ip)),
                None => {
                    let e = CniError::new(
                        ErrorCode::DelegateFailed,
                        format!("IPAM plugin {plugin} returned no IPv4 address (podswitch pods need one)"),
                    );
                    Err(match lease(Ipv4Addr::UNSPECIFIED).undo(inv, stdin) {
                        None => e,
                        Some(u) => e.with_details(format!("releasing it failed too: {u}")),
                    })
                }
            }
        }
    }
}

/// Asks the switch to create the port. A port left by a pod whose network
/// namespace is gone (a missed DEL) that holds the same name, address or
/// interface is removed first, once.
fn attach(sw: &mut Switch, spec: &PodSpec) -> Result<PortInfo, CniError> {
    let req = Request::AddPort(podswitch_api::AddPortArgs { pod: spec.clone() });
    match sw.client.call::<PortInfo>(&req) {
        Ok(info) => return Ok(info),
        Err(ClientError::Api(e)) if e.code == ApiCode::AlreadyExists => {
            let mut removed = 0;
            for p in sw.ports()? {
                let clashes = p.pod == spec.name
                    || p.ipv4 == spec.ipv4
                    || (p.netns == spec.netns && p.ifname == spec.ifname);
                if clashes && !p.netns.exists() {
                    eprintln!(
                        "podswitch-cni: removing stale port {} (its netns {} is gone)",
                        p.pod,
                        p.netns.display()
                    );
                    sw.remove_port(&p.pod)?;
                    removed += 1;
                }
            }
            if removed == 0 {
                return Err(switch_error(&sw.path, "add_port", ClientError::Api(e)));
            }
        }
        Err(e) => return Err(switch_error(&sw.path, "add_port", e)),
    }
    sw.call(&req, "add_port")
}

/// After `add_port` timed out, the switch may still create the port: it
/// serves requests in order, so a `list_ports` on a new connection answers
/// after it, and a port it made for `spec` is removed before the address
/// is freed. Best effort: a switch that is really gone has no port to keep.
fn remove_late_port(socket: &Path, spec: &PodSpec) {
    let Ok(mut sw) = Switch::connect(socket) else {
        return;
    };
    let Ok(ports) = sw.ports() else {
        return;
    };
    if ports
        .iter()
        .any(|p| p.pod == spec.name && p.ipv4 == spec.ipv4 && p.netns == spec.netns)
    {
        let _ = sw.remove_port(&spec.name);
    }
}

fn add(inv: &Invocation, conf: &NetConf, stdin: &[u8]) -> Result<CniResult, CniError> {
    let netns = inv.netns.clone().unwrap_or_default();
    if !netns.exists() {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            format!("network namespace {} does not exist", netns.display()),
        ));
    }
    let port = port_name(inv);
    // The switch first: when it is down nothing is allocated.
    let mut sw = Switch::connect(&conf.switch_socket)?;
    let topo: Topology = sw.call(&Request::GetTopology, "get_topology")?;
    let refused = |what: &str| {
        CniError::new(
            ErrorCode::SwitchRefused,
            format!("switch node {}: {what}", topo.node.name),
        )
    };
    let node_cidr = topo
        .node
        .ipv4_cidr()
        .ok_or_else(|| refused("no IPv4 pod CIDR"))?;
    let gateway = topo
        .node
        .gateway_ipv4()
        .ok_or_else(|| refused("no IPv4 gateway"))?;
    let lease = lease(inv, conf, stdin, &port, node_cidr, gateway)?;
    let spec = PodSpec {
        name: port.clone(),
        netns: netns.clone(),
        ifname: inv.ifname().to_string(),
        ipv4: Some(lease.ip()),
        ipv6: None,
        mac: None,
        mtu: conf.mtu,
    };
    let info = match attach(&mut sw, &spec) {
        Ok(info) => info,
        Err(e) => {
            if e.code == ErrorCode::TryAgainLater as u32 {
                remove_late_port(&conf.switch_socket, &spec);
            }
            return Err(match lease.undo(inv, stdin) {
                None => e,
                Some(u) => {
                    let d = format!("{}; freeing {} failed too: {u}", e.details, lease.ip());
                    e.with_details(d)
                }
            });
        }
    };
    let mut result = conf.prev_result.clone().unwrap_or_default();
    let index = result.interfaces.len();
    result.interfaces.push(Interface {
        name: info.ifname.clone(),
        mac: info.mac.to_string(),
        mtu: Some(info.mtu),
        sandbox: netns.display().to_string(),
        ..Default::default()
    });
    // The switch gives the pod its address as a /32 with an on-link route
    // to the gateway and a default route through it (switch/src/port/pod.rs);
    // the result says exactly that.
    result.ips.push(IpConfig {
        version: None,
        address: IpNet::new(IpAddr::V4(lease.ip()), 32).expect("32 is a valid prefix"),
        gateway: Some(IpAddr::V4(gateway)),
        interface: Some(index),
    });
    result.routes.push(Route {
        dst: "0.0.0.0/0".parse().expect("valid"),
        gw: Some(IpAddr::V4(gateway)),
        mtu: None,
        advmss: None,
        priority: None,
        table: None,
        scope: None,
    });
    if !conf.dns.is_empty() {
        result.dns = conf.dns.clone();
    } else if let Lease::Delegated { dns, .. } = &lease {
        if result.dns.is_empty() {
            result.dns = dns.clone();
        }
    }
    Ok(result)
}

fn open_store(conf: &NetConf) -> Result<Store, CniError> {
    Store::open(&conf.data_dir, &conf.name).map_err(ipam_error)
}

/// The IPv4 addresses `prev` gives the interface `ifname`.
fn prev_ipv4(prev: Option<&CniResult>, ifname: &str) -> Vec<Ipv4Addr> {
    let Some(prev) = prev else {
        return Vec::new();
    };
    prev.ips
        .iter()
        .filter(|c| {
            c.interface
                .and_then(|i| prev.interfaces.get(i))
                .is_none_or(|i| i.name == ifname)
        })
        .filter_map(|c| match c.address.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

fn del(inv: &Invocation, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let port = port_name(inv);
    let netns_alive = inv.netns.as_ref().is_some_and(|n| n.exists());
    let store = match conf.ipam {
        IpamConf::Builtin(_) => Some(open_store(conf)?),
        IpamConf::Delegate { .. } => None,
    };
    // The addresses of this attachment tell its port from a newer pod's
    // port of the same name.
    let mut ips = prev_ipv4(conf.prev_result.as_ref(), inv.ifname());
    if let Some(store) = &store {
        ips.extend(
            store
                .find(inv.container_id(), inv.ifname())
                .map_err(ipam_error)?
                .into_iter()
                .map(|(ip, _)| ip),
        );
    }
    match Switch::connect(&conf.switch_socket) {
        Ok(mut sw) => {
            for p in sw.ports()?.into_iter().filter(|p| p.pod == port) {
                let same_netns = inv.netns.as_ref() == Some(&p.netns) && p.ifname == inv.ifname();
                let same_ip = p.ipv4.is_some_and(|ip| ips.contains(&ip));
                if same_netns || same_ip || !p.netns.exists() {
                    sw.remove_port(&p.pod)?;
                } else {
                    eprintln!(
                        "podswitch-cni: port {} belongs to another sandbox ({}); left alone",
                        p.pod,
                        p.netns.display()
                    );
                }
            }
        }
        // The pod's namespace is gone, so its interface is too: free the
        // address now; the switch drops its port when it notices.
        Err(e) if e.code == ErrorCode::TryAgainLater as u32 && !netns_alive => {
            eprintln!("podswitch-cni: {e}; the pod's netns is gone, freeing its address anyway");
        }
        Err(e) => return Err(e),
    }
    match &conf.ipam {
        IpamConf::Builtin(_) => {
            if let Some(store) = &store {
                store
                    .release(inv.container_id(), inv.ifname())
                    .map_err(ipam_error)?;
            }
        }
        IpamConf::Delegate { plugin } => {
            Delegate::find(plugin, &inv.path)?.run(inv, Command::Del, stdin)?;
        }
    }
    Ok(())
}

fn check_failed(msg: String) -> CniError {
    CniError::new(ErrorCode::CheckFailed, msg)
}

fn netns_error(netns: &Path, e: &dyn std::error::Error) -> CniError {
    CniError::new(
        ErrorCode::Netns,
        format!("cannot read network namespace {}", netns.display()),
    )
    .with_details(chain(e))
}

/// An interface as the kernel of a pod's namespace shows it.
struct LinkView {
    mac: Option<[u8; 6]>,
    ipv4: Vec<Ipv4Addr>,
}

/// The interface `ifname` of `netns_path` (none if it has no such
/// interface), read on a thread inside the namespace with getifaddrs(3),
/// which asks the kernel over netlink as `ip addr` does.
fn link_view(netns_path: &Path, ifname: &str) -> Result<Option<LinkView>, CniError> {
    let name = ifname.to_string();
    netns::run_in(netns_path, move || -> nix::Result<Option<LinkView>> {
        match nix::net::if_::if_nametoindex(name.as_str()) {
            Ok(_) => {}
            Err(nix::errno::Errno::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut view = LinkView {
            mac: None,
            ipv4: Vec::new(),
        };
        for ifa in nix::ifaddrs::getifaddrs()? {
            if ifa.interface_name != name {
                continue;
            }
            let Some(addr) = ifa.address else { continue };
            if let Some(link) = addr.as_link_addr() {
                view.mac = view.mac.or(link.addr());
            } else if let Some(v4) = addr.as_sockaddr_in() {
                view.ipv4.push(v4.ip());
            }
        }
        Ok(Some(view))
    })
    .map_err(|e| netns_error(netns_path, &e))?
    .map_err(|e| netns_error(netns_path, &e))
}

/// IPv4 routes of `netns` as (interface, destination, gateway), from
/// `/proc/thread-self/net/route` read on a thread inside it.
fn ipv4_routes(netns_path: &Path) -> Result<Vec<(String, IpNet, Option<Ipv4Addr>)>, CniError> {
    let text = netns::run_in(netns_path, || {
        std::fs::read_to_string("/proc/thread-self/net/route")
    })
    .map_err(|e| netns_error(netns_path, &e))?
    .map_err(|e| netns_error(netns_path, &e))?;
    Ok(parse_proc_routes(&text))
}

/// Parses `/proc/net/route`: addresses are printed as the in-memory
/// (network order) 32-bit value in hex.
fn parse_proc_routes(text: &str) -> Vec<(String, IpNet, Option<Ipv4Addr>)> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (iface, dst, gw, mask) = (
                f.first()?,
                hex(f.get(1)?)?,
                hex(f.get(2)?)?,
                hex(f.get(7)?)?,
            );
            let prefix = u32::from(mask).leading_ones() as u8;
            let dst = IpNet::new(IpAddr::V4(dst), prefix).ok()?;
            Some((iface.to_string(), dst, (!gw.is_unspecified()).then_some(gw)))
        })
        .collect()
}

fn check(inv: &Invocation, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "CHECK needs prevResult (the result of the ADD)",
        )
    })?;
    let netns = inv.netns.clone().unwrap_or_default();
    if !netns.exists() {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            format!("network namespace {} does not exist", netns.display()),
        ));
    }
    let ifname = inv.ifname();
    let (index, iface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && Path::new(&i.sandbox) == netns)
        .ok_or_else(|| {
            check_failed(format!(
                "prevResult lists no interface {ifname} in {}",
                netns.display()
            ))
        })?;
    let ours: Vec<&IpConfig> = prev
        .ips
        .iter()
        .filter(|c| c.interface == Some(index) && c.address.addr().is_ipv4())
        .collect();
    let ips: Vec<Ipv4Addr> = ours
        .iter()
        .filter_map(|c| match c.address.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    if ips.is_empty() {
        return Err(check_failed(format!(
            "prevResult has no IPv4 address on {ifname}"
        )));
    }
    let where_ = || format!("{ifname} in {}", netns.display());

    // The kernel's view: the interface, its MAC and addresses.
    let link = link_view(&netns, ifname)?
        .ok_or_else(|| check_failed(format!("there is no interface {}", where_())))?;
    if !iface.mac.is_empty() {
        let want: Mac = iface.mac.parse().map_err(|e: String| {
            CniError::new(ErrorCode::InvalidConfig, format!("prevResult: {e}"))
        })?;
        let have = link.mac.map(Mac);
        if have != Some(want) {
            let have = have.map_or("no MAC".to_string(), |m| format!("MAC {m}"));
            return Err(check_failed(format!(
                "{} has {have}, prevResult says {want}",
                where_()
            )));
        }
    }
    for ip in &ips {
        if !link.ipv4.contains(ip) {
            return Err(check_failed(format!("{} does not have {ip}", where_())));
        }
    }
    // The default route this plugin created (others may have changed the
    // rest, spec §2 CHECK).
    let gateways: HashSet<IpAddr> = ours.iter().filter_map(|c| c.gateway).collect();
    let routes = ipv4_routes(&netns)?;
    for r in &prev.routes {
        let (IpNet::V4(dst), Some(IpAddr::V4(gw))) = (r.dst, r.gw) else {
            continue;
        };
        if dst.prefix_len() != 0 || !gateways.contains(&IpAddr::V4(gw)) {
            continue;
        }
        let present = routes
            .iter()
            .any(|(dev, d, g)| dev == ifname && *d == IpNet::V4(dst) && *g == Some(gw));
        if !present {
            return Err(check_failed(format!(
                "{} has no route {dst} via {gw}",
                where_()
            )));
        }
    }

    // The switch's view: the port exists and matches.
    let port = port_name(inv);
    let mut sw = Switch::connect(&conf.switch_socket)?;
    let p = sw
        .ports()?
        .into_iter()
        .find(|p| p.pod == port)
        .ok_or_else(|| check_failed(format!("the switch has no port {port}")))?;
    if p.netns != netns || p.ifname != ifname || !p.ipv4.is_some_and(|ip| ips.contains(&ip)) {
        return Err(check_failed(format!(
            "the switch's port {port} is {} in {} with {:?}, not {} with {ips:?}",
            p.ifname,
            p.netns.display(),
            p.ipv4,
            where_()
        )));
    }

    // The address reservation.
    match &conf.ipam {
        IpamConf::Builtin(_) => {
            let held: Vec<Ipv4Addr> = open_store(conf)?
                .find(inv.container_id(), ifname)
                .map_err(ipam_error)?
                .into_iter()
                .map(|(ip, _)| ip)
                .collect();
            if let Some(ip) = ips.iter().find(|ip| !held.contains(ip)) {
                return Err(check_failed(format!(
                    "{ip} is not reserved for container {} {ifname}",
                    inv.container_id()
                )));
            }
        }
        IpamConf::Delegate { plugin } => {
            Delegate::find(plugin, &inv.path)?.run(inv, Command::Check, stdin)?;
        }
    }
    Ok(())
}

fn status(inv: &Invocation, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let unavailable = |e: CniError| CniError {
        code: ErrorCode::NotAvailable as u32,
        msg: e.msg,
        details: e.details,
    };
    Switch::connect(&conf.switch_socket)
        .and_then(|mut sw| sw.hello())
        .map_err(unavailable)?;
    match &conf.ipam {
        IpamConf::Builtin(_) => {
            open_store(conf).map_err(unavailable)?;
        }
        IpamConf::Delegate { plugin } => {
            let d = Delegate::find(plugin, &inv.path).map_err(unavailable)?;
            if d.supports(inv, SpecVersion::V1_1_0) {
                d.run(inv, Command::Status, stdin)?;
            }
        }
    }
    Ok(())
}

fn gc(inv: &Invocation, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    // Without the list, everything would look stale: refuse.
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "GC needs cni.dev/valid-attachments",
        )
    })?;
    match &conf.ipam {
        IpamConf::Builtin(_) => {
            let keep: HashSet<(String, String)> = valid
                .iter()
                .map(|a| (a.container_id.clone(), a.ifname.clone()))
                .collect();
            let store = open_store(conf)?;
            let mut sw = Switch::connect(&conf.switch_socket)?;
            let ports = sw.ports()?;
            let mut failures = Vec::new();
            let freed = store
                .gc(&keep, |ip, rec| {
                    // Its port goes first; if that fails the address stays
                    // reserved so it is not handed to another pod.
                    for p in ports.iter().filter(|p| {
                        p.ipv4 == Some(ip) && (rec.port.is_empty() || p.pod == rec.port)
                    }) {
                        if let Err(e) = sw.remove_port(&p.pod) {
                            failures.push(e.to_string());
                            return false;
                        }
                    }
                    true
                })
                .map_err(ipam_error)?;
            for (ip, rec) in &freed {
                eprintln!(
                    "podswitch-cni: GC freed {ip} of container {} {}",
                    rec.container_id, rec.ifname
                );
            }
            if let Some(first) = failures.first() {
                return Err(CniError::new(
                    ErrorCode::SwitchRefused,
                    format!("GC could not remove {} stale port(s)", failures.len()),
                )
                .with_details(first.clone()));
            }
        }
        IpamConf::Delegate { plugin } => {
            let d = Delegate::find(plugin, &inv.path)?;
            if d.supports(inv, SpecVersion::V1_1_0) {
                d.run(inv, Command::Gc, stdin)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn port_names() {
        let inv = |args: &str, ifname: &str| {
            Invocation::from_env(env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c0ffee"),
                ("CNI_IFNAME", ifname),
                ("CNI_ARGS", args),
            ]))
            .unwrap()
        };
        assert_eq!(
            port_name(&inv(
                "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns-1;IgnoreUnknown=1",
                "eth0"
            )),
            "kube-system/dns-1"
        );
        assert_eq!(port_name(&inv("", "eth0")), "c0ffee");
        assert_eq!(port_name(&inv("K8S_POD_NAME=x", "eth0")), "c0ffee");
        assert_eq!(
            port_name(&inv("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", "net1")),
            "a/b@net1"
        );
    }

    #[test]
    fn version_answers_without_config() {
        let version = |stdin: &[u8]| -> Value {
            serde_json::from_str(
                &run(env(&[("CNI_COMMAND", "VERSION")]), stdin)
                    .unwrap()
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(version(b"")["cniVersion"], LATEST_VERSION);
        let out = version(br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(out["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("1.1.0")));
    }

    #[test]
    fn commands_need_their_spec_version() {
        let conf = |v: &str| {
            format!(
                r#"{{"cniVersion":"{v}","name":"n","type":"podswitch-cni","switchSocket":"/nonexistent/s.sock"}}"#
            )
        };
        for cmd in ["STATUS", "GC"] {
            let e = run(env(&[("CNI_COMMAND", cmd)]), conf("1.0.0").as_bytes()).unwrap_err();
            assert_eq!(e.code, 1, "{cmd}: {e}");
        }
        let e = run(
            env(&[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/nonexistent"),
                ("CNI_IFNAME", "eth0"),
            ]),
            conf("0.3.1").as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.code, 1, "{e}");
        // STATUS with 1.1.0 and no switch: 50.
        let e = run(env(&[("CNI_COMMAND", "STATUS")]), conf("1.1.0").as_bytes()).unwrap_err();
        assert_eq!(e.code, 50, "{e}");
        assert!(e.msg.contains("/nonexistent/s.sock"), "{e}");
    }

    #[test]
    fn add_without_switch_is_try_again_later() {
        let e = run(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/proc/self/ns/net"),
                ("CNI_IFNAME", "eth0"),
            ]),
            br#"{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni","switchSocket":"/nonexistent/s.sock","dataDir":"/nonexistent/ipam"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, 11, "{e}");
        assert!(!Path::new("/nonexistent/ipam").exists());
    }

    #[test]
    fn add_with_missing_netns_is_unknown_container() {
        let e = run(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/run/netns/psw-does-not-exist"),
                ("CNI_IFNAME", "eth0"),
            ]),
            br#"{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, 3, "{e}");
    }

    #[test]
    fn proc_routes_parse() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0101F40A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t0101F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        // The file holds network-order bytes read as a native integer.
        let gw_hex = format!("{:08X}", u32::from_ne_bytes([10, 244, 1, 1]));
        let text = text.replace("0101F40A", &gw_hex);
        let routes = parse_proc_routes(&text);
        let gw: Ipv4Addr = "10.244.1.1".parse().unwrap();
        assert_eq!(
            routes,
            vec![
                ("eth0".to_string(), "0.0.0.0/0".parse().unwrap(), Some(gw)),
                ("eth0".to_string(), "10.244.1.1/32".parse().unwrap(), None),
            ]
        );
        assert!(parse_proc_routes("garbage\nx y z\n").is_empty());
    }

    #[test]
    fn prev_addresses_of_an_interface() {
        let prev: CniResult = serde_json::from_value(serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}, {"name": "net1", "sandbox": "/x"}],
            "ips": [
                {"address": "10.244.1.5/32", "interface": 0},
                {"address": "10.9.0.5/24", "interface": 1},
                {"address": "fd00::5/128", "interface": 0},
                {"address": "10.244.1.6/24"}
            ]
        }))
        .unwrap();
        let got = prev_ipv4(Some(&prev), "eth0");
        assert_eq!(
            got,
            ["10.244.1.5", "10.244.1.6"].map(|s| s.parse::<Ipv4Addr>().unwrap())
        );
        assert!(prev_ipv4(None, "eth0").is_empty());
    }
}

//! The kernel baseline the lab measures podswitch against: the layout the
//! CNI `bridge` plugin builds on a node (`isGateway: true`, host-local IPAM).
//!
//! ```text
//!   {prefix}-kb-node                         {prefix}-kb-pod{i}
//!   lo up                                    lo up
//!   cni0 (Linux bridge) 10.244.X.1/24
//!    ├── veth0 ────────── veth ─────────────  eth0 10.244.X.2/24
//!    ├── veth1 ────────── veth ─────────────  eth0 10.244.X.3/24
//!    └── ...                                  default via 10.244.X.1
//! ```
//!
//! Same-node pod-to-pod traffic is switched by the bridge at L2, exactly as
//! with the CNI plugin. Offloads stay at the kernel's defaults (veths do
//! TSO/GSO and checksum offload), which is what a real cluster gets and so
//! the fair comparison. Everything is built through the switch crate's
//! netlink and netns helpers, without `ip` commands, and every namespace
//! carries the caller's prefix (../shared/TESTBED.md): a [`KernelBridgeLab`]
//! removes them again in [`KernelBridgeLab::down`] or, best effort, on drop.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use ipnet::{IpNet, Ipv4Net};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use podswitch_switch::port::netlink::Netlink;
use podswitch_switch::port::netns;

/// The bridge's name, as the CNI bridge plugin names it by default.
pub const BRIDGE_NAME: &str = "cni0";
/// The pod end of each veth.
pub const POD_IFNAME: &str = "eth0";
/// How long [`KernelBridgeLab::down`] waits for killed processes to exit.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(2);

/// A named network namespace this lab created.
#[derive(Debug)]
pub(super) struct OwnedNetns {
    pub(super) name: String,
    pub(super) path: PathBuf,
}

/// One pod of the lab.
#[derive(Debug)]
struct BridgePod {
    netns: OwnedNetns,
    ip: Ipv4Addr,
}

/// A node namespace with a Linux bridge `cni0` (gateway address .1 of the
/// pod CIDR) and `pods` pod namespaces, each with a veth `eth0` (pod `i`
/// at address `i + 2` of the CIDR, default route via .1) whose peer
/// `veth{i}` is enslaved to the bridge. Namespace names:
/// `{prefix}-kb-node`, `{prefix}-kb-pod{i}`.
///
/// Dropping it tears everything down (best effort, failures logged); call
/// [`KernelBridgeLab::down`] to see them.
#[derive(Debug)]
pub struct KernelBridgeLab {
    node: Option<OwnedNetns>,
    pods: Vec<BridgePod>,
    gateway: Ipv4Net,
}

impl KernelBridgeLab {
    /// Builds the lab: `pods` pods in `pod_cidr` with links of MTU `mtu`.
    ///
    /// # Errors
    /// If the CIDR cannot hold a gateway and `pods` pods, if a namespace
    /// with one of the names exists already, or if any netlink step fails;
    /// whatever was created by then is torn down again.
    pub fn up(prefix: &str, pods: usize, pod_cidr: Ipv4Net, mtu: u32) -> anyhow::Result<Self> {
        let addrs = plan_addresses(pod_cidr, pods)?;
        let mut lab = KernelBridgeLab {
            node: None,
            pods: Vec::with_capacity(pods),
            gateway: addrs.gateway,
        };
        // On error `lab` drops here and removes what was built.
        lab.build(prefix, &addrs.pods, mtu).with_context(|| {
            format!("building kernel bridge lab {prefix:?} ({pods} pods in {pod_cidr}, MTU {mtu})")
        })?;
        Ok(lab)
    }

    fn build(&mut self, prefix: &str, pod_ips: &[Ipv4Net], mtu: u32) -> anyhow::Result<()> {
        let node = self.create_netns(format!("{prefix}-kb-node"))?;
        self.node = Some(node);
        let node_path = self.node_netns().to_owned();
        let nl = Netlink::in_netns(&node_path)
            .with_context(|| format!("netlink in {}", node_path.display()))?;
        nl.set_lo_up()?;
        nl.create_bridge(BRIDGE_NAME)?;
        let bridge = link_index(&nl, BRIDGE_NAME)?;
        nl.link_set_mtu(bridge, mtu)?;
        nl.add_address(
            bridge,
            IpAddr::V4(self.gateway.addr()),
            self.gateway.prefix_len(),
        )?;
        nl.link_set_up(bridge)?;

        for (i, ip) in pod_ips.iter().enumerate() {
            let pod_ns = self.create_netns(format!("{prefix}-kb-pod{i}"))?;
            let pod_path = pod_ns.path.clone();
            self.pods.push(BridgePod {
                netns: pod_ns,
                ip: ip.addr(),
            });
            self.wire_pod(&nl, bridge, i, &pod_path, *ip, mtu)
                .with_context(|| format!("wiring pod {i} ({}) to {BRIDGE_NAME}", ip.addr()))?;
        }
        Ok(())
    }

    /// Creates `veth{i}` in the node with its peer `eth0` directly in the
    /// pod, enslaves the node end to the bridge and configures the pod end,
    /// as the CNI bridge plugin's ADD does.
    fn wire_pod(
        &self,
        node: &Netlink,
        bridge: u32,
        i: usize,
        pod_path: &Path,
        ip: Ipv4Net,
        mtu: u32,
    ) -> anyhow::Result<()> {
        let host_ifname = format!("veth{i}");
        let pod_fd = netns::open(pod_path)?;
        node.create_veth_peer_in(&host_ifname, POD_IFNAME, pod_fd.as_fd())?;
        let host = link_index(node, &host_ifname)?;
        node.link_set_mtu(host, mtu)?;
        node.link_set_master(host, bridge)?;
        node.link_set_up(host)?;

        let pod = Netlink::in_netns(pod_path)
            .with_context(|| format!("netlink in {}", pod_path.display()))?;
        pod.set_lo_up()?;
        let eth0 = link_index(&pod, POD_IFNAME)?;
        pod.link_set_mtu(eth0, mtu)?;
        pod.add_address(eth0, IpAddr::V4(ip.addr()), ip.prefix_len())?;
        pod.link_set_up(eth0)?;
        pod.add_route(
            IpNet::V4(Ipv4Net::default()),
            Some(IpAddr::V4(self.gateway.addr())),
            Some(eth0),
        )?;
        Ok(())
    }

    /// Creates a namespace, refusing to adopt a leftover of the same name.
    fn create_netns(&self, name: String) -> anyhow::Result<OwnedNetns> {
        let path = netns::create(&name).with_context(|| {
            format!("creating network namespace {name:?} (a leftover of an earlier run?)")
        })?;
        Ok(OwnedNetns { name, path })
    }

    /// The node namespace, which holds the bridge.
    pub fn node_netns(&self) -> &Path {
        &self
            .node
            .as_ref()
            .expect("a lab handed out by up() has its node namespace")
            .path
    }

    /// The gateway address (on `cni0`) with the pod CIDR's prefix length.
    pub fn gateway(&self) -> Ipv4Net {
        self.gateway
    }

    /// How many pods the lab has.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// The network namespace of pod `i`.
    ///
    /// # Panics
    /// If `i >= self.pod_count()`.
    pub fn pod_netns(&self, i: usize) -> &Path {
        &self.pod(i).netns.path
    }

    /// The address of pod `i` on its `eth0`.
    ///
    /// # Panics
    /// If `i >= self.pod_count()`.
    pub fn pod_ip(&self, i: usize) -> Ipv4Addr {
        self.pod(i).ip
    }

    fn pod(&self, i: usize) -> &BridgePod {
        let count = self.pods.len();
        self.pods
            .get(i)
            .unwrap_or_else(|| panic!("pod {i} out of range: the lab has {count} pods"))
    }

    /// Tears the lab down: kills the processes left in its namespaces and
    /// deletes them (pods first, then the node; the veths and the bridge go
    /// with them).
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
        let mut failures = Vec::new();
        for ns in &namespaces {
            kill_processes_in(&ns.path);
        }
        for ns in &namespaces {
            wait_processes_gone(&ns.path, KILL_WAIT);
            if let Err(e) = netns::delete(&ns.name) {
                failures.push(format!("deleting {:?}: {e}", ns.name));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("tearing down kernel bridge lab: {}", failures.join("; "))
        }
    }
}

impl Drop for KernelBridgeLab {
    fn drop(&mut self) {
        if let Err(error) = self.teardown() {
            tracing::warn!("{error:#}");
        }
    }
}

/// The addresses a lab uses.
#[derive(Debug)]
struct AddressPlan {
    gateway: Ipv4Net,
    pods: Vec<Ipv4Net>,
}

/// Gateway at host 1 of `cidr`, pod `i` at host `i + 2`, all with the
/// CIDR's prefix length; the broadcast address is never handed out.
fn plan_addresses(cidr: Ipv4Net, pods: usize) -> anyhow::Result<AddressPlan> {
    ensure!(pods > 0, "a kernel bridge lab needs at least one pod");
    let cidr = cidr.trunc();
    let with_host = |host: u64| -> Option<Ipv4Net> {
        let addr = u64::from(u32::from(cidr.network())) + host;
        let addr = Ipv4Addr::from(u32::try_from(addr).ok()?);
        (addr < cidr.broadcast())
            .then(|| Ipv4Net::new(addr, cidr.prefix_len()).expect("prefix length from a CIDR"))
    };
    let gateway =
        with_host(1).with_context(|| format!("pod CIDR {cidr} has no room for a gateway"))?;
    let pods = (0..pods as u64)
        .map(|i| {
            with_host(i + 2).with_context(|| {
                format!(
                    "pod CIDR {cidr} holds at most {} pods besides the gateway, {pods} asked for",
                    cidr.hosts().count().saturating_sub(1)
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(AddressPlan { gateway, pods })
}

/// Index of link `name`, which the lab has just created.
pub(super) fn link_index(nl: &Netlink, name: &str) -> anyhow::Result<u32> {
    nl.link_index(name)?.with_context(|| {
        format!(
            "link {name:?} missing right after creating it in {}",
            nl.netns()
        )
    })
}

/// Sends SIGKILL to every process whose network namespace is `path`,
/// except this one (never in a lab namespace, but never killed either).
pub(super) fn kill_processes_in(path: &Path) {
    let own = std::process::id() as i32;
    for pid in netns::pids_in(path).into_iter().filter(|&pid| pid != own) {
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pid, netns = %path.display(), "cannot kill: {e}"),
        }
    }
}

/// Waits, bounded by `limit`, until no process is left in `path`, so the
/// namespace is really released once its name is deleted.
pub(super) fn wait_processes_gone(path: &Path, limit: Duration) {
    let own = std::process::id() as i32;
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<i32> = netns::pids_in(path)
            .into_iter()
            .filter(|&pid| pid != own)
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(netns = %path.display(), ?left, "processes still alive after SIGKILL");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

    use super::*;

    use podswitch_switch::testing::have_root;
    /// Bound on every blocking socket call in the tests.
    const IO_TIMEOUT: Duration = Duration::from_secs(20);

    #[test]
    fn address_plan_follows_the_cni_layout() {
        let plan = plan_addresses("10.244.7.0/24".parse().unwrap(), 3).unwrap();
        assert_eq!(plan.gateway, "10.244.7.1/24".parse::<Ipv4Net>().unwrap());
        let pods: Vec<String> = plan.pods.iter().map(ToString::to_string).collect();
        assert_eq!(pods, ["10.244.7.2/24", "10.244.7.3/24", "10.244.7.4/24"]);
        // Host bits in the CIDR are ignored.
        let plan = plan_addresses("10.244.7.9/24".parse().unwrap(), 1).unwrap();
        assert_eq!(plan.pods[0].addr(), Ipv4Addr::new(10, 244, 7, 2));
    }

    #[test]
    fn address_plan_rejects_what_does_not_fit() {
        let cidr: Ipv4Net = "10.244.7.0/24".parse().unwrap();
        assert!(plan_addresses(cidr, 253).is_ok());
        let err = plan_addresses(cidr, 254).unwrap_err().to_string();
        assert!(err.contains("at most 253 pods"), "{err}");
        assert!(plan_addresses(cidr, 0).is_err());
        assert!(plan_addresses("10.244.7.0/31".parse().unwrap(), 1).is_err());
        // /30: gateway .1, one pod .2, broadcast .3.
        assert!(plan_addresses("10.244.7.0/30".parse().unwrap(), 1).is_ok());
        assert!(plan_addresses("10.244.7.0/30".parse().unwrap(), 2).is_err());
    }

    #[test]
    fn failed_up_removes_what_it_built_and_nothing_else() {
        if !have_root("failed_up_removes_what_it_built_and_nothing_else") {
            return;
        }
        let prefix = format!("pswt-kbf-{}", std::process::id());
        // Someone else's namespace in the way of pod 1.
        let squatter = format!("{prefix}-kb-pod1");
        netns::create(&squatter).unwrap();
        let err = KernelBridgeLab::up(&prefix, 3, "10.244.2.0/24".parse().unwrap(), 1500)
            .expect_err("pod 1's name is taken");
        let msg = format!("{err:#}");
        assert!(msg.contains(&squatter), "{msg}");
        let left = netns::list_with_prefix(&format!("{prefix}-kb-"));
        netns::delete(&squatter).unwrap();
        assert_eq!(left, [squatter], "the lab's own namespaces must be gone");
    }

    /// ```text
    ///   pod0 10.244.1.2 ──veth── cni0 10.244.1.1 ──veth── pod1 10.244.1.3
    ///   TCP client, 10 MiB ───────────────────────────────> listener
    /// ```
    #[test]
    fn kernel_bridge_moves_tcp_between_pods() {
        if !have_root("kernel_bridge_moves_tcp_between_pods") {
            return;
        }
        const BYTES: usize = 10 << 20;
        let prefix = format!("pswt-kb-{}", std::process::id());
        let lab = KernelBridgeLab::up(&prefix, 2, "10.244.1.0/24".parse().unwrap(), 1500)
            .expect("lab comes up");
        assert_eq!(lab.pod_count(), 2);
        assert_eq!(lab.pod_ip(1), Ipv4Addr::new(10, 244, 1, 3));
        let paths: Vec<PathBuf> = [lab.node_netns(), lab.pod_netns(0), lab.pod_netns(1)]
            .into_iter()
            .map(Path::to_owned)
            .collect();
        assert!(paths.iter().all(|p| p.exists()));

        // lo is up in the pods: a loopback connection works.
        netns::run_in(lab.pod_netns(0), || {
            let l = TcpListener::bind("127.0.0.1:0")?;
            TcpStream::connect(l.local_addr()?).map(drop)
        })
        .unwrap()
        .expect("loopback in pod0");

        // Bind in pod1 first; the connect then completes against the
        // listen backlog, before anyone calls accept.
        let server = SocketAddr::from((lab.pod_ip(1), 5201));
        let listener = netns::run_in(lab.pod_netns(1), move || TcpListener::bind(server))
            .unwrap()
            .expect("listener in pod1");
        let client = netns::run_in(lab.pod_netns(0), move || {
            TcpStream::connect_timeout(&server, IO_TIMEOUT)
        })
        .unwrap()
        .expect("pod0 connects to pod1 across the bridge");
        assert_eq!(client.local_addr().unwrap().ip(), IpAddr::V4(lab.pod_ip(0)));
        client.set_write_timeout(Some(IO_TIMEOUT)).unwrap();

        let (mut conn, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let receiver = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 << 10];
            let mut total = 0usize;
            loop {
                match conn.read(&mut buf)? {
                    0 => return Ok::<_, std::io::Error>(total),
                    n => total += n,
                }
            }
        });
        let mut client = client;
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..BYTES / chunk.len() {
            client.write_all(&chunk).expect("send");
        }
        client.shutdown(Shutdown::Write).unwrap();
        let received = receiver.join().unwrap().expect("receive");
        assert_eq!(received, BYTES);
        drop(client);
        drop(listener);

        // A process left in a pod (a forgotten iperf3, say) is killed by
        // down(). A child forked from a thread inside pod0 lives in pod0.
        let mut straggler = netns::run_in(lab.pod_netns(0), || {
            std::process::Command::new("sleep").arg("30").spawn()
        })
        .unwrap()
        .expect("spawn sleep in pod0");
        assert!(netns::pids_in(lab.pod_netns(0)).contains(&(straggler.id() as i32)));

        lab.down().expect("teardown");
        let status = straggler.wait().unwrap();
        assert!(
            !status.success(),
            "sleep was killed, not left running: {status}"
        );
        for p in &paths {
            assert!(!p.exists(), "{} left behind", p.display());
        }
        assert!(netns::list_with_prefix(&format!("{prefix}-kb-")).is_empty());
    }
}

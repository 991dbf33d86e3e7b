//! The kernel baselines between two nodes: flannel's `host-gw` backend
//! (native routing) and its `vxlan` backend, built with iproute2 in
//! namespaces only, in the same shape as the podswitch lab's two nodes.
//!
//! ```text
//!   {prefix}-u: br0 (the underlay segment, 198.18.0.0/24)
//!      |  n1                                   |  n2
//!   {prefix}-n1: eth0 198.18.0.1            {prefix}-n2: eth0 198.18.0.2
//!     cni0 10.244.A.1/24                      cni0 10.244.B.1/24
//!      └ veth0 ─ {prefix}-p1: eth0 .2          └ veth0 ─ {prefix}-p2: eth0 .2
//!
//!   host-gw: n1  10.244.B.0/24 via 198.18.0.2 dev eth0   (and back)
//!   vxlan:   n1  flannel.1 (VNI 1, UDP 8472, nolearning, MTU 1450,
//!                MAC 02:56:c6:12:00:01)
//!                10.244.B.0/24 via 10.244.B.0 dev flannel.1 onlink
//!                neigh 10.244.B.0 lladdr <n2's VTEP MAC> nud permanent
//!                fdb <n2's VTEP MAC> dst 198.18.0.2
//! ```
//!
//! These are exactly the routes, neighbour and FDB entries flannel's
//! backends install for each remote node (flannel `backend/hostgw`,
//! `backend/vxlan`: `AddARP`, `AddFDB`, the onlink route). Offloads stay at
//! the kernel's defaults. Namespace names carry the caller's prefix
//! (TESTBED.md); [`KernelNodesLab`] deletes them again on drop.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use podswitch_switch::port::netns;

/// Which flannel backend the lab copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `host-gw`: pod CIDRs routed via the other node's underlay address.
    HostGw,
    /// `vxlan`: a kernel `vxlan` device per node, VNI 1, port 8472.
    Vxlan,
}

/// The VXLAN device's MTU (1500 - 50), also the pods' in VXLAN mode.
pub const VXLAN_MTU: u32 = 1450;
/// flannel's VXLAN UDP port (the Linux default).
pub const VXLAN_PORT: u16 = 8472;

/// Two nodes and one pod on each, built as flannel builds them.
#[derive(Debug)]
pub struct KernelNodesLab {
    backend: Backend,
    /// Every namespace created, in creation order.
    namespaces: Vec<String>,
    pods: [(PathBuf, Ipv4Addr); 2],
    mtu: u32,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install the Debian package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn sh_ip(line: &str) -> anyhow::Result<()> {
    ip(&line.split_whitespace().collect::<Vec<_>>())
}

impl KernelNodesLab {
    /// Builds the lab. Node `i` (1, 2) has underlay 198.18.0.`i` and pod
    /// CIDR 10.244.`base + i`.0/24; its pod is .2 of it.
    ///
    /// # Errors
    /// A namespace that exists already or an iproute2 step that fails;
    /// whatever was built by then is removed again.
    pub fn up(prefix: &str, backend: Backend, cidr_base: u8) -> anyhow::Result<Self> {
        let mtu = match backend {
            Backend::HostGw => 1500,
            Backend::Vxlan => VXLAN_MTU,
        };
        let pod_ip = |i: u8| Ipv4Addr::new(10, 244, cidr_base + i, 2);
        let mut lab = KernelNodesLab {
            backend,
            namespaces: Vec::new(),
            pods: [
                (netns::path(&format!("{prefix}-p1")), pod_ip(1)),
                (netns::path(&format!("{prefix}-p2")), pod_ip(2)),
            ],
            mtu,
        };
        lab.build(prefix, cidr_base)
            .with_context(|| format!("building kernel {backend:?} lab {prefix:?}"))?;
        Ok(lab)
    }

    fn create(&mut self, name: String) -> anyhow::Result<()> {
        netns::create(&name)
            .with_context(|| format!("creating netns {name} (a leftover of an earlier run?)"))?;
        self.namespaces.push(name);
        Ok(())
    }

    fn build(&mut self, prefix: &str, base: u8) -> anyhow::Result<()> {
        let u = format!("{prefix}-u");
        self.create(u.clone())?;
        sh_ip(&format!("-n {u} link set lo up"))?;
        sh_ip(&format!("-n {u} link add br0 type bridge"))?;
        sh_ip(&format!("-n {u} link set br0 up"))?;
        let mtu = self.mtu;
        for i in 1..=2u8 {
            let (n, p) = (format!("{prefix}-n{i}"), format!("{prefix}-p{i}"));
            self.create(n.clone())?;
            self.create(p.clone())?;
            let cidr = format!("10.244.{}", base + i);
            for line in [
                format!("-n {u} link add n{i} type veth peer name eth0 netns {n}"),
                format!("-n {u} link set n{i} master br0 up"),
                format!("-n {n} link set lo up"),
                format!("-n {n} addr add 198.18.0.{i}/24 dev eth0"),
                format!("-n {n} link set eth0 up"),
                format!("-n {n} link add cni0 type bridge"),
                format!("-n {n} addr add {cidr}.1/24 dev cni0"),
                format!("-n {n} link set cni0 mtu {mtu} up"),
                format!(
                    "-n {n} link add veth0 mtu {mtu} type veth peer name eth0 mtu {mtu} netns {p}"
                ),
                format!("-n {n} link set veth0 master cni0 up"),
                format!("-n {p} link set lo up"),
                format!("-n {p} addr add {cidr}.2/24 dev eth0"),
                format!("-n {p} link set eth0 up"),
                format!("-n {p} route add default via {cidr}.1"),
            ] {
                sh_ip(&line)?;
            }
            let node_path = netns::path(&n);
            podswitch_lab::demo::in_netns(&node_path, || {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                    .context("setting net.ipv4.ip_forward=1")
            })?;
            if self.backend == Backend::Vxlan {
                for line in [
                    format!("-n {n} link add flannel.1 type vxlan id 1 local 198.18.0.{i} dev eth0 dstport {VXLAN_PORT} nolearning"),
                    format!("-n {n} link set flannel.1 address {} mtu {VXLAN_MTU} up", vtep_mac(i)),
                ] {
                    sh_ip(&line)?;
                }
            }
        }
        // Each node's entries for the other.
        for (i, j) in [(1u8, 2u8), (2, 1)] {
            let n = format!("{prefix}-n{i}");
            let remote = format!("10.244.{}", base + j);
            match self.backend {
                Backend::HostGw => sh_ip(&format!(
                    "-n {n} route add {remote}.0/24 via 198.18.0.{j} dev eth0"
                ))?,
                Backend::Vxlan => {
                    let mac = vtep_mac(j);
                    sh_ip(&format!(
                        "-n {n} route add {remote}.0/24 via {remote}.0 dev flannel.1 onlink"
                    ))?;
                    sh_ip(&format!(
                        "-n {n} neigh add {remote}.0 lladdr {mac} dev flannel.1 nud permanent"
                    ))?;
                    let out = Command::new("ip")
                        .args(["netns", "exec", &n, "bridge", "fdb", "add", &mac])
                        .args(["dev", "flannel.1", "dst", &format!("198.18.0.{j}")])
                        .output()
                        .context("running bridge (iproute2)")?;
                    if !out.status.success() {
                        bail!(
                            "bridge fdb add {mac} in {n}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The client pod (on node 1): its namespace.
    pub fn client_netns(&self) -> &Path {
        &self.pods[0].0
    }

    /// The server pod (on node 2): its namespace.
    pub fn server_netns(&self) -> &Path {
        &self.pods[1].0
    }

    /// The server pod's address.
    pub fn server_ip(&self) -> Ipv4Addr {
        self.pods[1].1
    }

    /// The pods' MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        // Pods first, then nodes, then the underlay: the reverse order.
        for name in self.namespaces.drain(..).rev() {
            for pid in netns::pids_in(&netns::path(&name)) {
                if pid != std::process::id() as i32 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if let Err(e) = netns::delete(&name) {
                failures.push(format!("deleting {name}: {e}"));
            }
        }
        failures
    }

    /// Removes every namespace of the lab.
    ///
    /// # Errors
    /// Every namespace is attempted; the error lists those that failed.
    pub fn down(mut self) -> anyhow::Result<()> {
        let failures = self.teardown();
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("tearing down kernel lab: {}", failures.join("; "))
        }
    }
}

impl Drop for KernelNodesLab {
    fn drop(&mut self) {
        for f in self.teardown() {
            tracing::warn!("{f}");
        }
    }
}

/// Node `i`'s VTEP MAC: 02:56 + its underlay address, as the podswitch
/// lab derives it.
fn vtep_mac(i: u8) -> String {
    format!("02:56:c6:12:00:{i:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_follow_the_underlay_address() {
        assert_eq!(vtep_mac(1), "02:56:c6:12:00:01");
        assert_eq!(vtep_mac(2), "02:56:c6:12:00:02");
    }
}

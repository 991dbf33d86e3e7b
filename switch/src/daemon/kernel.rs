//! The kernel side of the daemon: pods' taps and netns wiring, routes to
//! the host port, NodePort and masquerade steering, the node's addresses.
//! Every call goes through [`NodeKernel`], so the control logic that
//! decides what to create and what to roll back runs in unit tests
//! against a fake.

use super::*;

/// What the daemon asks of the node's kernel. [`LinuxKernel`] does it
/// with netlink, taps and tc filters; the unit tests use a fake that
/// records the calls and fails on demand, to check that a request is
/// applied whole or not at all.
pub trait NodeKernel: Send {
    /// Whether the pod's interface can be created (its netns exists, the
    /// name is free).
    fn precheck_pod(&self, w: &PodWiring<'_>) -> Result<(), pod::WiringError>;
    /// Creates the pod's tap with `queues` queues, moved into its netns
    /// and addressed.
    fn create_pod(
        &mut self,
        w: &PodWiring<'_>,
        queues: usize,
    ) -> Result<Vec<crate::port::tap::TapQueue>, pod::WiringError>;
    /// Removes the pod's interface (nothing to do if its netns is gone).
    fn delete_pod(&mut self, w: &PodWiring<'_>) -> Result<(), pod::WiringError>;
    /// Routes `cidr` from the node's stack to the host port `host`.
    fn route_to_host_port(&mut self, host: &str, cidr: IpNet) -> Result<(), String>;
    /// Steers traffic to `addr` into the host port; returns the filters
    /// installed.
    fn steer_to_host_port(
        &mut self,
        host: &str,
        addr: &SteerAddress,
        slot: u16,
    ) -> Result<usize, String>;
    /// The node's IPv4 addresses, but the host port's.
    fn local_ipv4_addresses(&self, host: Option<&str>) -> Result<Vec<Ipv4Addr>, String>;
}

/// The real node: [`crate::port::pod`]'s netlink and tap calls.
pub struct LinuxKernel;

impl NodeKernel for LinuxKernel {
    fn precheck_pod(&self, w: &PodWiring<'_>) -> Result<(), pod::WiringError> {
        pod::precheck(w)
    }

    fn create_pod(
        &mut self,
        w: &PodWiring<'_>,
        queues: usize,
    ) -> Result<Vec<crate::port::tap::TapQueue>, pod::WiringError> {
        pod::create(w, queues)
    }

    fn delete_pod(&mut self, w: &PodWiring<'_>) -> Result<(), pod::WiringError> {
        pod::delete(w.pod, w.netns, w.ifname, w.mac)
    }

    fn route_to_host_port(&mut self, host: &str, cidr: IpNet) -> Result<(), String> {
        pod::add_host_route(host, cidr).map_err(|e| error_chain(&e))
    }

    fn steer_to_host_port(
        &mut self,
        host: &str,
        addr: &SteerAddress,
        slot: u16,
    ) -> Result<usize, String> {
        pod::steer_to_host_port(host, addr, slot)
    }

    fn local_ipv4_addresses(&self, host: Option<&str>) -> Result<Vec<Ipv4Addr>, String> {
        pod::local_ipv4_addresses(host)
    }
}

impl SwitchState {
    pub(super) fn wiring<'a>(&self, spec: &'a PodSpec) -> PodWiring<'a> {
        PodWiring {
            pod: &spec.name,
            netns: &spec.netns,
            ifname: &spec.ifname,
            mac: spec.mac.map(|m| m.0).unwrap_or_default(),
            mtu: spec.mtu.unwrap_or(self.node.mtu),
            ipv4: spec.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            gateway: self.node.gateway_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// Creates the taps of already-validated pods; all or nothing.
    pub(super) fn create_ports(
        &mut self,
        specs: &[PodSpec],
    ) -> Result<Vec<(PodSpec, Vec<crate::port::tap::TapQueue>)>, ApiError> {
        for s in specs {
            self.kernel
                .precheck_pod(&self.wiring(s))
                .map_err(|e| match e {
                    pod::WiringError::InterfaceExists { .. } => {
                        ApiError::new(ErrorCode::AlreadyExists, e.to_string())
                    }
                    other => ApiError::internal(error_chain(&other)),
                })?;
        }
        let mut made = Vec::new();
        for s in specs {
            let (w, queues) = (self.wiring(s), self.workers());
            match self.kernel.create_pod(&w, queues) {
                Ok(q) => made.push((s.clone(), q)),
                Err(e) => {
                    for (done, _) in &made {
                        let w = self.wiring(done);
                        let _ = self.kernel.delete_pod(&w);
                    }
                    return Err(ApiError::internal(error_chain(&e)));
                }
            }
        }
        Ok(made)
    }

    pub(super) fn delete_links(&mut self, removed: &[PortState]) {
        for st in removed {
            let w = self.wiring(&st.spec);
            if let Err(e) = self.kernel.delete_pod(&w) {
                tracing::warn!(error = %e, "removing pod interface");
            }
        }
    }

    /// Routes the service CIDRs from the node's stack into the switch, so
    /// host-network clients reach cluster IPs.
    pub(super) fn route_service_cidrs(&mut self, settings: &ServiceSettings) {
        // External and load-balancer IPs arrive at the node routed to it
        // (not addressed to it): the node's stack hands them to the switch.
        let external = self
            .services
            .values()
            .flat_map(|s| s.external_ips.iter())
            .map(|ip| IpNet::from(std::net::IpAddr::V4(*ip)));
        let cidrs: Vec<IpNet> = settings
            .service_cidrs
            .iter()
            .copied()
            .chain(external)
            .collect();
        self.route_to_host_port(&cidrs);
    }

    /// Routes `cidrs` from the node's stack to the host port (idempotent).
    pub(super) fn route_to_host_port(&mut self, cidrs: &[IpNet]) {
        let Some(host) = &self.host else { return };
        for cidr in cidrs {
            if let Err(e) = self.kernel.route_to_host_port(&host.name, *cidr) {
                tracing::warn!(error = %e, %cidr, "cannot route the service CIDR to the host port");
            }
        }
    }

    /// The addresses to steer into the switch: the node address (replies
    /// to translated flows, and NodePorts if they open there) and every
    /// other address NodePorts open on.
    pub(super) fn steer_addresses(&self, node_ports: (u16, u16)) -> Vec<SteerAddress> {
        let mut out: Vec<SteerAddress> = self
            .node_port_ips
            .iter()
            .map(|&ip| SteerAddress {
                ip,
                node_ports: Some(node_ports),
                translation: Some(ip) == self.node.underlay_ipv4,
            })
            .collect();
        if let Some(ip) = self.node.underlay_ipv4 {
            if !self.node_port_ips.contains(&ip) {
                out.push(SteerAddress {
                    ip,
                    node_ports: None,
                    translation: true,
                });
            }
        }
        out
    }

    /// Installs NodePort and masquerade steering for every address that
    /// needs it and does not have it yet (a no-op when all do).
    pub(super) fn steer(&mut self, node_ports: (u16, u16)) {
        let Some(host) = &self.host else { return };
        for addr in self.steer_addresses(node_ports) {
            let slot = match self.steered.get(&addr.ip) {
                Some((_, done)) if *done == addr => continue,
                Some((slot, _)) => *slot,
                None => self
                    .steered
                    .values()
                    .map(|(slot, _)| slot + 1)
                    .max()
                    .unwrap_or(0),
            };
            match self.kernel.steer_to_host_port(&host.name, &addr, slot) {
                Ok(n) => {
                    tracing::info!(filters = n, ip = %addr.ip, node_ports = addr.node_ports.is_some(), "NodePort and masquerade traffic steered into the switch");
                    self.steered.insert(addr.ip, (slot, addr));
                }
                Err(e) => {
                    tracing::warn!(error = %e, ip = %addr.ip, "steering not installed; NodePorts and masquerade replies to this address will not reach the switch")
                }
            }
        }
    }

    /// The addresses NodePorts open on now, from the node's addresses;
    /// `None` if the list has no CIDR (nothing to re-read) or the
    /// addresses cannot be listed (logged).
    pub(super) fn resolve_node_port_ips(&self) -> Option<Vec<Ipv4Addr>> {
        if !node_ports::needs_local_addresses(&self.node_port_addresses) {
            return None;
        }
        let local = self
            .kernel
            .local_ipv4_addresses(self.host.as_ref().map(|h| h.name.as_str()))
            .map_err(
                |e| tracing::warn!(error = %e, "cannot list the node's addresses for NodePorts"),
            )
            .ok()?;
        Some(node_ports::resolve(
            &self.node_port_addresses,
            self.node.underlay_ipv4,
            &local,
        ))
    }
}

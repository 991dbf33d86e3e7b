//! Status views: what `ctl` shows (ports, nodes, routes, Service state)
//! and what `/metrics` scrapes, read from the daemon's state.

use super::*;

impl SwitchState {
    pub(super) fn port_info(&self, st: &PortState) -> PortInfo {
        PortInfo {
            id: st.id,
            pod: st.spec.name.clone(),
            netns: st.spec.netns.clone(),
            ifname: st.spec.ifname.clone(),
            mac: st.spec.mac.unwrap_or(Mac([0; 6])),
            ipv4: st.spec.ipv4,
            ipv6: st.spec.ipv6,
            mtu: st.spec.mtu.unwrap_or(self.node.mtu),
            queues: st.io.queues.len(),
            stats: crate::metrics::port_stats(&st.io.counters),
        }
    }

    /// The handles a metrics scrape reads; cheap (`Arc` clones), so the
    /// scrape holds the state's lock only briefly.
    pub(super) fn scrape_sources(&self) -> crate::exporter::ScrapeSources {
        let mut ports: Vec<_> = self
            .ports
            .values()
            .map(|p| (p.spec.name.clone(), Arc::clone(&p.io)))
            .collect();
        if let Some(h) = &self.host {
            ports.push((format!("host/{}", h.name), Arc::clone(&h.io)));
        }
        crate::exporter::ScrapeSources {
            workers: self.counters.clone(),
            ports,
            conntrack: Arc::clone(&self.conntrack),
            services: Arc::clone(&self.service_table),
            service_count: self.services.len(),
        }
    }

    /// What a capture's `port` names: a pod, the host port (`host/psw0`
    /// or `psw0`), or `underlay` (VXLAN mode only).
    pub(super) fn capture_target(
        &self,
        port: &str,
    ) -> Result<(crate::capture::CaptureTarget, String), ApiError> {
        use crate::capture::CaptureTarget;
        if port == "underlay" {
            return match self.vtep {
                Some(_) => Ok((CaptureTarget::Underlay, port.to_string())),
                None => Err(ApiError::invalid(
                    "port",
                    format!(
                        "node {} runs in native mode: there is no VXLAN underlay to capture \
                         (capture host/{} instead)",
                        self.node.name,
                        self.node.host_interface.as_deref().unwrap_or("psw0")
                    ),
                )),
            };
        }
        if let Some(p) = self.ports.get(port) {
            return Ok((CaptureTarget::Port(p.id), p.spec.name.clone()));
        }
        if let Some(h) = self
            .host
            .as_ref()
            .filter(|h| port == h.name || port == format!("host/{}", h.name))
        {
            return Ok((CaptureTarget::Port(h.id), format!("host/{}", h.name)));
        }
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no port {port} (a pod as namespace/name, host/psw0, or underlay)"),
        )
        .with_field("port"))
    }

    /// This node and the others, read from the published snapshot (the
    /// overlay's nodes in VXLAN mode; in native mode the remote nodes
    /// live in the node's kernel routes, so they come from the desired
    /// state the switch installed them from).
    pub(super) fn nodes(&self) -> Nodes {
        let snapshot = self.publisher.load_full();
        let t = &snapshot.tables;
        let local = LocalNodeState {
            name: t.node.clone(),
            underlay_ipv4: self.node.underlay_ipv4,
            pod_cidrs: t.pod_cidrs.clone(),
            gateway_ipv4: t.gateway.ipv4,
            gateway_mac: Mac(t.gateway.mac),
            mtu: self.node.mtu,
            mode: self.node.mode,
            host_interface: self.host.as_ref().map(|h| h.name.clone()),
            vxlan: t.overlay.as_ref().map(|o| VtepState {
                vni: o.vni,
                udp_port: o.udp_port,
                local_ipv4: o.local_ipv4,
                vtep_mac: Mac(o.vtep_mac),
            }),
        };
        let remote = match &t.overlay {
            Some(o) => o
                .nodes
                .iter()
                .map(|n| RemoteNodeState {
                    name: n.name.clone(),
                    underlay_ipv4: n.underlay_ipv4,
                    pod_cidrs: n.pod_cidrs.clone(),
                    vtep_mac: Some(Mac(n.vtep_mac)),
                })
                .collect(),
            None => self
                .remote_nodes
                .iter()
                .map(|n| RemoteNodeState {
                    name: n.name.clone(),
                    underlay_ipv4: n.underlay_ipv4,
                    pod_cidrs: n.pod_cidrs.clone(),
                    vtep_mac: None,
                })
                .collect(),
        };
        Nodes {
            generation: t.generation,
            local,
            remote,
        }
    }

    /// The route stage's table as the published snapshot holds it, and
    /// what `lookup` matches.
    pub(super) fn routes(&self, lookup: Option<std::net::IpAddr>) -> Routes {
        let snapshot = self.publisher.load_full();
        let t = &snapshot.tables;
        let hop = |target: RouteTarget| -> RouteHop {
            match target {
                RouteTarget::Local(id) => match t.port(id) {
                    Some(p) if p.kind == PortKind::Host => RouteHop::Host {
                        port: id,
                        interface: p.ifname.clone(),
                    },
                    Some(p) => RouteHop::Pod {
                        port: id,
                        pod: p.pod.clone(),
                    },
                    // A port removed under a stale route: forwarded nowhere.
                    None => RouteHop::Unassigned,
                },
                RouteTarget::Node(i) => {
                    match t.overlay.as_ref().and_then(|o| o.nodes.get(usize::from(i))) {
                        Some(n) => RouteHop::Overlay {
                            node: n.name.clone(),
                            underlay_ipv4: n.underlay_ipv4,
                            vtep_mac: Mac(n.vtep_mac),
                        },
                        None => RouteHop::NoRoute,
                    }
                }
                RouteTarget::Unassigned => RouteHop::Unassigned,
            }
        };
        let routes: Vec<RouteEntry> = t
            .routes
            .entries()
            .into_iter()
            .map(|(prefix, target)| RouteEntry {
                prefix,
                hop: hop(target),
            })
            .collect();
        let kernel_routes: Vec<KernelRoute> = if t.overlay.is_none() && self.host.is_some() {
            self.remote_nodes
                .iter()
                .flat_map(|n| {
                    n.pod_cidrs.iter().map(|c| KernelRoute {
                        prefix: *c,
                        node: n.name.clone(),
                        via: n.underlay_ipv4,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let svc = &t.services;
        let settings = &self.service_settings;
        let lookup = lookup.map(|dst| {
            let route = t
                .routes
                .lookup_entry(dst)
                .map(|(prefix, target)| RouteEntry {
                    prefix,
                    hop: hop(target),
                });
            let owner = if t.pod_cidrs.iter().any(|c| c.contains(&dst)) {
                Some((t.node.clone(), None))
            } else {
                self.remote_nodes
                    .iter()
                    .find(|n| n.pod_cidrs.iter().any(|c| c.contains(&dst)))
                    .map(|n| (n.name.clone(), Some(n.underlay_ipv4)))
            };
            // The kernel next hop matters only where the switch hands the
            // packet to the node's stack (native mode).
            let via = match (&route, &owner) {
                (
                    Some(RouteEntry {
                        hop: RouteHop::Host { .. },
                        ..
                    }),
                    Some((_, via)),
                ) => *via,
                _ => None,
            };
            let v4 = match dst {
                std::net::IpAddr::V4(a) => Some(a),
                std::net::IpAddr::V6(_) => None,
            };
            let mut services: Vec<String> = v4
                .map(|a| {
                    svc.fronts
                        .iter()
                        .filter(|f| {
                            f.ip == a && f.kind != crate::tables::services::FrontendKind::NodePort
                        })
                        .filter_map(|f| svc.names.get(f.service as usize).cloned())
                        .collect()
                })
                .unwrap_or_default();
            services.sort();
            services.dedup();
            RouteLookup {
                dst,
                route,
                node: owner.map(|o| o.0),
                via,
                gateway: v4 == Some(t.gateway.ipv4),
                services,
                masquerade: v4.is_some_and(|a| svc.masquerades(a)),
            }
        });
        Routes {
            generation: t.generation,
            mode: self.node.mode,
            routes,
            kernel_routes,
            services: ServiceRouting {
                node_ip: svc.node_ip,
                masquerade: svc.masquerade,
                cluster_cidrs: settings.cluster_cidrs.clone(),
                service_cidrs: settings.service_cidrs.clone(),
                masquerade_exclude: settings.masquerade_exclude.clone(),
                node_port_range: settings.node_port_range,
                frontends: svc.fronts.len(),
            },
            lookup,
        }
    }

    /// Each Service's frontends with their Maglev state, from the
    /// published service table; endpoint nodes come from the specs.
    pub(super) fn service_state(&self, name: Option<&str>) -> Result<Vec<ServiceState>, ApiError> {
        if let Some(n) = name {
            if !self.services.contains_key(n) {
                return Err(
                    ApiError::new(ErrorCode::NotFound, format!("no service {n}"))
                        .with_field("name"),
                );
            }
        }
        // The published table, by Service name and each Service's
        // frontends in spec order (the table's own order is not name order
        // once patched).
        let table = &self.service_table;
        let names: Vec<&str> = match name {
            Some(n) => vec![n],
            None => self.services.keys().map(String::as_str).collect(),
        };
        let mut out: Vec<ServiceState> = Vec::new();
        for fi in names
            .into_iter()
            .flat_map(|n| self.service_layout.frontends_of(n))
        {
            let f = &table.fronts[fi as usize];
            let Some(svc_name) = table.names.get(f.service as usize) else {
                continue;
            };
            let spec = self.services.get(svc_name);
            let node_of = |ip: Ipv4Addr, port: u16| {
                spec.into_iter()
                    .flat_map(|s| s.ports.iter())
                    .flat_map(|p| p.endpoints.iter())
                    .find(|e| e.ip == ip && e.port == port)
                    .and_then(|e| e.node.clone())
            };
            let m = f.maglev.size();
            let shares = f.maglev_shares();
            let backends = (f.backends.start..f.backends.end)
                .filter_map(|i| table.backends.get(i as usize).map(|b| (i, b)))
                .map(|(i, b)| {
                    let slots = shares
                        .iter()
                        .find(|s| s.backend == i)
                        .map_or(0, |s| s.slots);
                    BackendState {
                        ip: b.ip,
                        port: b.port,
                        node: node_of(b.ip, b.port),
                        local: b.local,
                        ready: b.ready,
                        terminating: b.terminating,
                        serving: b.ready || b.serving_terminating,
                        eligible: f.eligible.contains(&i),
                        slots,
                        share: if m == 0 { 0.0 } else { slots as f64 / m as f64 },
                    }
                })
                .collect();
            let front = FrontendState {
                kind: f.kind,
                ip: f.ip,
                port: f.port,
                protocol: if f.proto == podswitch_api::Protocol::Udp.number() {
                    podswitch_api::Protocol::Udp
                } else {
                    podswitch_api::Protocol::Tcp
                },
                table_size: m,
                eligible: f.eligible.len(),
                affinity_secs: f.affinity_secs,
                local_only: f.local_only,
                backends,
            };
            match out.last_mut().filter(|s| &s.name == svc_name) {
                Some(s) => s.frontends.push(front),
                None => out.push(ServiceState {
                    name: svc_name.clone(),
                    frontends: vec![front],
                }),
            }
        }
        // A Service without frontends (headless) is still listed by name.
        if let Some(n) = name {
            if out.is_empty() {
                out.push(ServiceState {
                    name: n.to_string(),
                    frontends: Vec::new(),
                });
            }
        }
        Ok(out)
    }
}

//! Request dispatch: one control request to the state change or view it
//! names, timed when it changes the switch.

use super::*;

impl SwitchState {
    /// Handles one control request, timing those that change the switch.
    pub fn handle(&mut self, req: Request) -> Result<Reply, ApiError> {
        let mutating = matches!(
            req,
            Request::AddPort(podswitch_api::AddPortArgs { .. })
                | Request::RemovePort(podswitch_api::RemovePortArgs { .. })
                | Request::ReplaceTopology(podswitch_api::ReplaceTopologyArgs { .. })
                | Request::PatchTopology(podswitch_api::PatchTopologyArgs { .. })
                | Request::SetServices(podswitch_api::SetServicesArgs { .. })
                | Request::PatchServices(podswitch_api::PatchServicesArgs { .. })
                | Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs { .. })
        );
        let start = std::time::Instant::now();
        let result = self.dispatch(req);
        if mutating {
            self.apply_seconds.observe(start.elapsed().as_secs_f64());
        }
        result
    }

    pub(super) fn dispatch(&mut self, req: Request) -> Result<Reply, ApiError> {
        match req {
            Request::Hello => Ok(Reply::Hello(Hello {
                api_version: podswitch_api::API_VERSION,
                switch_version: env!("CARGO_PKG_VERSION").to_string(),
                node: self.node.name.clone(),
                workers: self.workers(),
            })),
            Request::AddPort(podswitch_api::AddPortArgs { pod }) => {
                if self.ports.contains_key(&pod.name) {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("pod {} already has a port", pod.name),
                    )
                    .with_field("pod.name"));
                }
                let spec = Self::resolve_pod(&self.node, &pod, "pod")?;
                let keep = self
                    .ports
                    .values()
                    .map(|p| (&p.spec, format!("existing pod {}", p.spec.name)));
                Self::check_unique(keep.chain(std::iter::once((&spec, "pod".to_string()))))?;
                let made = self.create_ports(std::slice::from_ref(&spec))?;
                self.install(made);
                self.publish();
                let st = &self.ports[&spec.name];
                Ok(Reply::AddPort(self.port_info(st)))
            }
            Request::RemovePort(podswitch_api::RemovePortArgs { name }) => {
                let st = self.remove(&name).ok_or_else(|| {
                    ApiError::new(ErrorCode::NotFound, format!("no pod {name}")).with_field("name")
                })?;
                self.publish();
                self.delete_links(&[st]);
                Ok(Reply::RemovePort)
            }
            Request::ReplaceTopology(podswitch_api::ReplaceTopologyArgs { topology }) => {
                self.validate_remote_nodes(&topology.remote_nodes, &topology.node)?;
                let applied = self.apply(Some(topology.node), &topology.pods, &[], true)?;
                self.set_remote_nodes(topology.remote_nodes)?;
                self.publish();
                Ok(Reply::ReplaceTopology(applied))
            }
            Request::PatchTopology(podswitch_api::PatchTopologyArgs { add, remove }) => {
                let applied = self.apply(None, &add, &remove, false)?;
                Ok(Reply::PatchTopology(applied))
            }
            Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs { nodes }) => {
                self.set_remote_nodes(nodes)?;
                self.publish();
                Ok(Reply::SetRemoteNodes)
            }
            Request::SetServices(podswitch_api::SetServicesArgs { settings, services }) => {
                let mut next = BTreeMap::new();
                for (i, svc) in services.into_iter().enumerate() {
                    if next.contains_key(&svc.name) {
                        return Err(ApiError::new(
                            ErrorCode::AlreadyExists,
                            format!("service {} listed twice", svc.name),
                        )
                        .with_field(format!("services[{i}].name")));
                    }
                    next.insert(svc.name.clone(), svc);
                }
                let settings = settings.unwrap_or_else(|| self.service_settings.clone());
                let applied = self.apply_services(settings, next)?;
                Ok(Reply::SetServices(applied))
            }
            Request::PatchServices(podswitch_api::PatchServicesArgs { upsert, remove }) => {
                let applied = self.patch_services(upsert, remove)?;
                Ok(Reply::PatchServices(applied))
            }
            Request::GetServices => Ok(Reply::GetServices(Services {
                settings: self.service_settings.clone(),
                services: self.services.values().cloned().collect(),
            })),
            Request::ListFlows(podswitch_api::ListFlowsArgs { filter, limit }) => {
                let pred = flow_predicate(&filter)?;
                let limit = limit.unwrap_or(1000);
                let mut matched = 0;
                let flows = self.conntrack.list(usize::MAX, |f| {
                    let m = pred(f);
                    matched += usize::from(m);
                    m
                });
                Ok(Reply::ListFlows(Flows {
                    total: self.conntrack.len(),
                    capacity: self.conntrack.capacity(),
                    matched,
                    flows: flows.into_iter().take(limit).collect(),
                }))
            }
            Request::Trace(podswitch_api::TraceArgs { ingress, packet }) => {
                let id = self
                    .ports
                    .get(&ingress)
                    .map(|p| p.id)
                    .or_else(|| {
                        self.host
                            .as_ref()
                            .filter(|h| ingress == format!("host/{}", h.name))
                            .map(|h| h.id)
                    })
                    .ok_or_else(|| {
                        ApiError::new(ErrorCode::NotFound, format!("no port {ingress}"))
                            .with_field("ingress")
                    })?;
                let snapshot = self.publisher.load_full();
                let t = crate::pipeline::trace::trace(
                    &snapshot.tables,
                    id,
                    &packet,
                    Some(&self.conntrack),
                )
                .map_err(|e| ApiError::invalid("packet", e))?;
                Ok(Reply::Trace(t))
            }
            Request::FlushFlows(podswitch_api::FlushFlowsArgs { filter }) => {
                let pred = flow_predicate(&filter)?;
                let removed = self.conntrack.remove_where(|f| pred(f));
                Ok(Reply::FlushFlows(FlowsRemoved { removed }))
            }
            Request::CaptureStart(spec) => {
                let (target, name) = self.capture_target(&spec.port)?;
                let started =
                    self.captures
                        .start(target, &name, &spec, Some(self.node.vxlan.port))?;
                Ok(Reply::CaptureStart(started))
            }
            Request::CaptureRead(podswitch_api::CaptureReadArgs { id, max_bytes }) => {
                Ok(Reply::CaptureRead(self.captures.read(id, max_bytes)?))
            }
            Request::CaptureStop(podswitch_api::CaptureStopArgs { id }) => {
                Ok(Reply::CaptureStop(self.captures.stop(id)?))
            }
            Request::GetNodes => Ok(Reply::GetNodes(self.nodes())),
            Request::GetRoutes(podswitch_api::GetRoutesArgs { lookup }) => {
                Ok(Reply::GetRoutes(self.routes(lookup)))
            }
            Request::GetServiceState(podswitch_api::GetServiceStateArgs { name }) => {
                Ok(Reply::GetServiceState(self.service_state(name.as_deref())?))
            }
            Request::GetConfig => Ok(Reply::GetConfig(self.running_config.clone())),
            Request::GetTopology => Ok(Reply::GetTopology(Topology {
                node: self.node.clone(),
                pods: self.ports.values().map(|p| p.spec.clone()).collect(),
                remote_nodes: self.remote_nodes.clone(),
            })),
            Request::ListPorts => Ok(Reply::ListPorts(
                self.ports.values().map(|p| self.port_info(p)).collect(),
            )),
            Request::SetIoBackend(podswitch_api::SetIoBackendArgs { backend }) => {
                let has_rings = self.io_backend_rings == self.workers();
                let batched = match backend {
                    IoBackend::Syscalls => false,
                    IoBackend::Auto => has_rings,
                    IoBackend::IoUring if has_rings => true,
                    IoBackend::IoUring => {
                        return Err(ApiError::invalid(
                            "backend",
                            "the workers have no io_uring (the switch started with io_backend = \"syscalls\" or the kernel refused it)",
                        ))
                    }
                };
                self.poll_control.set_batched_io(batched);
                self.io_backend_in_use = if batched { "io_uring" } else { "syscalls" };
                self.running_config.config.io_backend = backend;
                tracing::info!(%backend, in_use = self.io_backend_in_use, "tap I/O set");
                Ok(Reply::SetIoBackend(IoBackendSet {
                    in_use: self.io_backend_in_use.to_string(),
                }))
            }
            Request::SetVxlanTunnelGso(podswitch_api::SetVxlanTunnelGsoArgs { on }) => {
                if on && !self.tunnel_gso_available {
                    return Err(ApiError::invalid(
                        "on",
                        "the switch has no tunnel port (not VXLAN mode, vxlan_tunnel_gso = false at start, or a kernel before 6.17)",
                    ));
                }
                self.poll_control.set_tunnel_gso(on);
                self.running_config.config.vxlan_tunnel_gso = on;
                tracing::info!(on, "VXLAN UDP-tunnel GSO set");
                Ok(Reply::SetVxlanTunnelGso(VxlanTunnelGsoSet { in_use: on }))
            }
            Request::SetPollMode(podswitch_api::SetPollModeArgs { mode, budget_us }) => {
                let budget_us = budget_us.unwrap_or(self.running_config.config.adaptive_poll_us);
                check_budget_us(budget_us)
                    .map_err(|e| ApiError::invalid("budget_us", e.to_string()))?;
                self.poll_control.set(mode, budget_us);
                // A parked worker picks the change up now, not after its park.
                for w in &self.wakers {
                    let _ = w.wake();
                }
                self.running_config.config.poll_mode = mode;
                self.running_config.config.adaptive_poll_us = budget_us;
                tracing::info!(%mode, budget_us, "poll mode set");
                Ok(Reply::SetPollMode(PollSettings { mode, budget_us }))
            }
            Request::GetStats => Ok(Reply::GetStats(Stats {
                generation: self.generation,
                workers: self.workers(),
                io_backend: self.io_backend_in_use.to_string(),
                vxlan_tunnel_gso: self.tunnel_gso_available && self.poll_control.tunnel_gso(),
                datapath: crate::metrics::datapath_stats(&self.counters),
                ports: self.ports.values().map(|p| self.port_info(p)).collect(),
            })),
        }
    }
}

impl crate::control::server::Handler for SwitchState {
    fn handle(&mut self, req: Request) -> Result<Reply, ApiError> {
        SwitchState::handle(self, req)
    }
}

/// A service table's refusal as the control API reports it: the field it
/// names, and `invalid_argument`, but for a patch with no table to patch,
/// which is the switch's own fault (`internal`). The message is the
/// refusal's own, without the field.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let code = match e.kind {
            ServiceErrorKind::NoTableToPatch => ErrorCode::Internal,
            ServiceErrorKind::MaglevSizeNotPrime(_)
            | ServiceErrorKind::BadNodePortRange { .. }
            | ServiceErrorKind::EmptyName
            | ServiceErrorKind::ClusterIpOutsideServiceCidrs(_)
            | ServiceErrorKind::PortZero
            | ServiceErrorKind::NodePortOutsideRange { .. }
            | ServiceErrorKind::Maglev(_)
            | ServiceErrorKind::FrontendTaken { .. } => ErrorCode::InvalidArgument,
        };
        ApiError {
            code,
            field: e.field,
            message: e.kind.to_string(),
        }
    }
}

impl From<crate::capture::CaptureError> for ApiError {
    fn from(e: crate::capture::CaptureError) -> ApiError {
        use crate::capture::CaptureErrorKind as K;
        let code = match e.kind {
            K::SessionsPoisoned | K::SessionPoisoned => ErrorCode::Internal,
            K::TooManySessions => ErrorCode::AlreadyExists,
            K::NoSuchCapture(_) => ErrorCode::NotFound,
            K::MaxFramesOutOfRange(_)
            | K::DurationOutOfRange(_)
            | K::SnaplenOutOfRange(_)
            | K::BadFilter(_) => ErrorCode::InvalidArgument,
        };
        ApiError {
            code,
            field: e.field.map(str::to_string),
            message: e.kind.to_string(),
        }
    }
}

/// The predicate a [`FlowFilter`] describes; a bad field is an error
/// naming it.
fn flow_predicate(
    f: &FlowFilter,
) -> Result<impl Fn(&crate::conntrack::FlowInfo) -> bool, ApiError> {
    let proto = match f.proto.as_deref() {
        None => None,
        Some("tcp") => Some(6u8),
        Some("udp") => Some(17),
        Some("icmp") => Some(1),
        Some(p) => {
            return Err(ApiError::invalid(
                "filter.proto",
                format!("{p:?} is not tcp, udp or icmp"),
            ))
        }
    };
    let state = match &f.state {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<crate::conntrack::FlowState>(serde_json::Value::String(
                s.clone(),
            ))
            .map_err(|_| ApiError::invalid("filter.state", format!("unknown state {s:?}")))?,
        ),
    };
    let (addr, port) = (f.addr, f.port);
    Ok(move |fl: &crate::conntrack::FlowInfo| {
        let keys = [Some(fl.orig), fl.reply];
        let keys = keys.iter().flatten();
        proto.is_none_or(|p| fl.orig.proto == p)
            && state.is_none_or(|s| fl.state == s)
            && addr.is_none_or(|a| {
                keys.clone().any(|k| {
                    a.contains(&std::net::IpAddr::V4(k.src))
                        || a.contains(&std::net::IpAddr::V4(k.dst))
                })
            })
            && port.is_none_or(|p| keys.clone().any(|k| k.sport == p || k.dport == p))
    })
}

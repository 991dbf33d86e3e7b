//! What each operation answers: the typed `result` of a successful
//! response line, one variant per [`Request`] variant.
//!
//! The switch's handler returns a [`Reply`] and the server writes it into
//! the line ([`crate::Response::answer`]); a client that knows which
//! request it sent decodes `result` straight into the variant's type
//! ([`crate::client::Client`]'s typed calls), or into a [`Reply`] with
//! [`Reply::decode`]. A variant serializes as its content alone, so the
//! JSON on the wire is exactly what the result type serializes to
//! (`null` for the operations that answer nothing).

use serde::Serialize;

use crate::capture::CaptureCounts;
use crate::trace::Trace;
use crate::{
    Applied, CaptureBatch, CaptureStarted, Flows, FlowsRemoved, Hello, IoBackendSet, Nodes,
    PollSettings, PortInfo, Request, Routes, RunningConfig, ServiceState, Services,
    ServicesApplied, Stats, Topology, VxlanTunnelGsoSet,
};

/// The result of one request, by operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// `hello`.
    Hello(Hello),
    /// `add_port`: the new port.
    AddPort(PortInfo),
    /// `remove_port`: `null`.
    RemovePort,
    /// `replace_topology`.
    ReplaceTopology(Applied),
    /// `patch_topology`.
    PatchTopology(Applied),
    /// `set_remote_nodes`: `null`.
    SetRemoteNodes,
    /// `set_services`.
    SetServices(ServicesApplied),
    /// `patch_services`.
    PatchServices(ServicesApplied),
    /// `get_services`.
    GetServices(Services),
    /// `list_flows`.
    ListFlows(Flows),
    /// `trace`.
    Trace(Trace),
    /// `flush_flows`.
    FlushFlows(FlowsRemoved),
    /// `capture_start`.
    CaptureStart(CaptureStarted),
    /// `capture_read`.
    CaptureRead(CaptureBatch),
    /// `capture_stop`: the capture's totals.
    CaptureStop(CaptureCounts),
    /// `get_nodes`.
    GetNodes(Nodes),
    /// `get_routes`.
    GetRoutes(Routes),
    /// `get_service_state`: one entry per Service, in name order.
    GetServiceState(Vec<ServiceState>),
    /// `get_config`.
    GetConfig(RunningConfig),
    /// `get_topology`.
    GetTopology(Topology),
    /// `list_ports`.
    ListPorts(Vec<PortInfo>),
    /// `get_stats`.
    GetStats(Stats),
    /// `set_poll_mode`.
    SetPollMode(PollSettings),
    /// `set_io_backend`.
    SetIoBackend(IoBackendSet),
    /// `set_vxlan_tunnel_gso`.
    SetVxlanTunnelGso(VxlanTunnelGsoSet),
}

/// A `result` that does not decode as the reply of its operation.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// No operation of API version 1 has this name.
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// The JSON is not the shape of the operation's result.
    #[error("result of {op}: {source}")]
    Shape {
        op: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Reply {
    /// The operation this replies to, as on the wire ([`Request::op`]).
    pub fn op(&self) -> &'static str {
        match self {
            Reply::Hello(_) => "hello",
            Reply::AddPort(_) => "add_port",
            Reply::RemovePort => "remove_port",
            Reply::ReplaceTopology(_) => "replace_topology",
            Reply::PatchTopology(_) => "patch_topology",
            Reply::SetRemoteNodes => "set_remote_nodes",
            Reply::SetServices(_) => "set_services",
            Reply::PatchServices(_) => "patch_services",
            Reply::GetServices(_) => "get_services",
            Reply::ListFlows(_) => "list_flows",
            Reply::Trace(_) => "trace",
            Reply::FlushFlows(_) => "flush_flows",
            Reply::CaptureStart(_) => "capture_start",
            Reply::CaptureRead(_) => "capture_read",
            Reply::CaptureStop(_) => "capture_stop",
            Reply::GetNodes(_) => "get_nodes",
            Reply::GetRoutes(_) => "get_routes",
            Reply::GetServiceState(_) => "get_service_state",
            Reply::GetConfig(_) => "get_config",
            Reply::GetTopology(_) => "get_topology",
            Reply::ListPorts(_) => "list_ports",
            Reply::GetStats(_) => "get_stats",
            Reply::SetPollMode(_) => "set_poll_mode",
            Reply::SetIoBackend(_) => "set_io_backend",
            Reply::SetVxlanTunnelGso(_) => "set_vxlan_tunnel_gso",
        }
    }

    /// Decodes the `result` of a response to `op` (the request's
    /// [`Request::op`]) into that operation's reply.
    pub fn decode(op: &str, result: serde_json::Value) -> Result<Reply, ReplyError> {
        let v = result;
        let decoded = match op {
            "hello" => serde_json::from_value(v).map(Reply::Hello),
            "add_port" => serde_json::from_value(v).map(Reply::AddPort),
            "remove_port" => serde_json::from_value::<()>(v).map(|()| Reply::RemovePort),
            "replace_topology" => serde_json::from_value(v).map(Reply::ReplaceTopology),
            "patch_topology" => serde_json::from_value(v).map(Reply::PatchTopology),
            "set_remote_nodes" => serde_json::from_value::<()>(v).map(|()| Reply::SetRemoteNodes),
            "set_services" => serde_json::from_value(v).map(Reply::SetServices),
            "patch_services" => serde_json::from_value(v).map(Reply::PatchServices),
            "get_services" => serde_json::from_value(v).map(Reply::GetServices),
            "list_flows" => serde_json::from_value(v).map(Reply::ListFlows),
            "trace" => serde_json::from_value(v).map(Reply::Trace),
            "flush_flows" => serde_json::from_value(v).map(Reply::FlushFlows),
            "capture_start" => serde_json::from_value(v).map(Reply::CaptureStart),
            "capture_read" => serde_json::from_value(v).map(Reply::CaptureRead),
            "capture_stop" => serde_json::from_value(v).map(Reply::CaptureStop),
            "get_nodes" => serde_json::from_value(v).map(Reply::GetNodes),
            "get_routes" => serde_json::from_value(v).map(Reply::GetRoutes),
            "get_service_state" => serde_json::from_value(v).map(Reply::GetServiceState),
            "get_config" => serde_json::from_value(v).map(Reply::GetConfig),
            "get_topology" => serde_json::from_value(v).map(Reply::GetTopology),
            "list_ports" => serde_json::from_value(v).map(Reply::ListPorts),
            "get_stats" => serde_json::from_value(v).map(Reply::GetStats),
            "set_poll_mode" => serde_json::from_value(v).map(Reply::SetPollMode),
            "set_io_backend" => serde_json::from_value(v).map(Reply::SetIoBackend),
            "set_vxlan_tunnel_gso" => serde_json::from_value(v).map(Reply::SetVxlanTunnelGso),
            other => return Err(ReplyError::UnknownOp(other.to_string())),
        };
        decoded.map_err(|source| ReplyError::Shape {
            op: op.to_string(),
            source,
        })
    }

    /// Decodes the `result` of a response to `req`.
    pub fn decode_for(req: &Request, result: serde_json::Value) -> Result<Reply, ReplyError> {
        Reply::decode(req.op(), result)
    }
}

#[cfg(test)]
mod tests;

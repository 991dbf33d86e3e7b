//! A blocking client for the control socket, used by the lab, the agent
//! and `podswitch ctl`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::capture::CaptureCounts;
use crate::trace::Trace;
use crate::{
    encode_request, AddPortArgs, ApiError, Applied, CaptureBatch, CaptureReadArgs, CaptureSpec,
    CaptureStarted, CaptureStopArgs, FlowFilter, Flows, FlowsRemoved, FlushFlowsArgs,
    GetRoutesArgs, GetServiceStateArgs, Hello, IoBackendSet, ListFlowsArgs, Nodes,
    PatchServicesArgs, PatchTopologyArgs, PodSpec, PollSettings, PortInfo, RemoteNode,
    RemovePortArgs, ReplaceTopologyArgs, Request, Response, Routes, RunningConfig, ServiceState,
    Services, ServicesApplied, SetIoBackendArgs, SetPollModeArgs, SetRemoteNodesArgs,
    SetServicesArgs, SetVxlanTunnelGsoArgs, Stats, Topology, TraceArgs, VxlanTunnelGsoSet,
};

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the switch control socket {path} (is the switch running?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: malformed response: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("switch refused the request: {0}")]
    Api(#[from] ApiError),
}

/// One connection to a switch.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects, with `timeout` for every read and write.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let io = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request and decodes its result.
    pub fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, ClientError> {
        self.call_line(&encode_request(req))
    }

    /// Sends one request already encoded as a request line (without its
    /// newline; a caller that encodes borrowed data straight into the
    /// line, as the agent does, need not build a [`Request`]) and decodes
    /// its result.
    pub fn call_line<T: DeserializeOwned>(&mut self, line: &str) -> Result<T, ClientError> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        // One write for the line and its newline: two would wake the
        // server's connection thread twice per request.
        let parts = [
            std::io::IoSlice::new(line.as_bytes()),
            std::io::IoSlice::new(b"\n"),
        ];
        write_all_vectored(&mut self.writer, &parts).map_err(io)?;
        let mut resp = String::new();
        let n = self
            .reader
            .read_line(&mut resp)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ClientError::Protocol {
                path: self.path.clone(),
                message: "connection closed".into(),
            });
        }
        let r: Response = serde_json::from_str(&resp).map_err(|e| ClientError::Protocol {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        if !r.ok {
            return Err(ClientError::Api(
                r.error
                    .unwrap_or_else(|| ApiError::internal("error without details")),
            ));
        }
        serde_json::from_value(r.result.unwrap_or(serde_json::Value::Null)).map_err(|e| {
            ClientError::Protocol {
                path: self.path.clone(),
                message: e.to_string(),
            }
        })
    }
}

/// One typed call per operation: the request built from its arguments,
/// the result decoded as the operation's reply type (see
/// [`crate::Reply`]).
impl Client {
    /// `hello`: the switch's versions, node and workers.
    pub fn hello(&mut self) -> Result<Hello, ClientError> {
        self.call(&Request::Hello)
    }

    /// `add_port`: attaches `pod`.
    pub fn add_port(&mut self, pod: PodSpec) -> Result<PortInfo, ClientError> {
        self.call(&Request::AddPort(AddPortArgs { pod }))
    }

    /// `remove_port`: detaches pod `name`.
    pub fn remove_port(&mut self, name: impl Into<String>) -> Result<(), ClientError> {
        self.call(&Request::RemovePort(RemovePortArgs { name: name.into() }))
    }

    /// `replace_topology`.
    pub fn replace_topology(&mut self, topology: Topology) -> Result<Applied, ClientError> {
        self.call(&Request::ReplaceTopology(ReplaceTopologyArgs { topology }))
    }

    /// `patch_topology`.
    pub fn patch_topology(&mut self, args: PatchTopologyArgs) -> Result<Applied, ClientError> {
        self.call(&Request::PatchTopology(args))
    }

    /// `set_remote_nodes`.
    pub fn set_remote_nodes(&mut self, nodes: Vec<RemoteNode>) -> Result<(), ClientError> {
        self.call(&Request::SetRemoteNodes(SetRemoteNodesArgs { nodes }))
    }

    /// `set_services`.
    pub fn set_services(&mut self, args: SetServicesArgs) -> Result<ServicesApplied, ClientError> {
        self.call(&Request::SetServices(args))
    }

    /// `patch_services`.
    pub fn patch_services(
        &mut self,
        args: PatchServicesArgs,
    ) -> Result<ServicesApplied, ClientError> {
        self.call(&Request::PatchServices(args))
    }

    /// `get_services`: the settings and Services the switch holds.
    pub fn get_services(&mut self) -> Result<Services, ClientError> {
        self.call(&Request::GetServices)
    }

    /// `list_flows`.
    pub fn list_flows(&mut self, args: ListFlowsArgs) -> Result<Flows, ClientError> {
        self.call(&Request::ListFlows(args))
    }

    /// `trace`.
    pub fn trace(&mut self, args: TraceArgs) -> Result<Trace, ClientError> {
        self.call(&Request::Trace(args))
    }

    /// `flush_flows`: removes the flows `filter` selects.
    pub fn flush_flows(&mut self, filter: FlowFilter) -> Result<FlowsRemoved, ClientError> {
        self.call(&Request::FlushFlows(FlushFlowsArgs { filter }))
    }

    /// `capture_start`.
    pub fn capture_start(&mut self, spec: CaptureSpec) -> Result<CaptureStarted, ClientError> {
        self.call(&Request::CaptureStart(spec))
    }

    /// `capture_read`.
    pub fn capture_read(&mut self, args: CaptureReadArgs) -> Result<CaptureBatch, ClientError> {
        self.call(&Request::CaptureRead(args))
    }

    /// `capture_stop`: stops capture `id`, returning its totals.
    pub fn capture_stop(&mut self, id: u64) -> Result<CaptureCounts, ClientError> {
        self.call(&Request::CaptureStop(CaptureStopArgs { id }))
    }

    /// `get_nodes`.
    pub fn get_nodes(&mut self) -> Result<Nodes, ClientError> {
        self.call(&Request::GetNodes)
    }

    /// `get_routes`, with what `lookup` matches if given.
    pub fn get_routes(&mut self, lookup: Option<std::net::IpAddr>) -> Result<Routes, ClientError> {
        self.call(&Request::GetRoutes(GetRoutesArgs { lookup }))
    }

    /// `get_service_state`: every Service, or only `name`.
    pub fn get_service_state(
        &mut self,
        name: Option<String>,
    ) -> Result<Vec<ServiceState>, ClientError> {
        self.call(&Request::GetServiceState(GetServiceStateArgs { name }))
    }

    /// `get_config`.
    pub fn get_config(&mut self) -> Result<RunningConfig, ClientError> {
        self.call(&Request::GetConfig)
    }

    /// `get_topology`.
    pub fn get_topology(&mut self) -> Result<Topology, ClientError> {
        self.call(&Request::GetTopology)
    }

    /// `list_ports`.
    pub fn list_ports(&mut self) -> Result<Vec<PortInfo>, ClientError> {
        self.call(&Request::ListPorts)
    }

    /// `get_stats`.
    pub fn get_stats(&mut self) -> Result<Stats, ClientError> {
        self.call(&Request::GetStats)
    }

    /// `set_poll_mode`.
    pub fn set_poll_mode(&mut self, args: SetPollModeArgs) -> Result<PollSettings, ClientError> {
        self.call(&Request::SetPollMode(args))
    }

    /// `set_io_backend`.
    pub fn set_io_backend(
        &mut self,
        backend: crate::io::IoBackend,
    ) -> Result<IoBackendSet, ClientError> {
        self.call(&Request::SetIoBackend(SetIoBackendArgs { backend }))
    }

    /// `set_vxlan_tunnel_gso`.
    pub fn set_vxlan_tunnel_gso(&mut self, on: bool) -> Result<VxlanTunnelGsoSet, ClientError> {
        self.call(&Request::SetVxlanTunnelGso(SetVxlanTunnelGsoArgs { on }))
    }
}

impl Client {
    /// Whether the switch has closed this connection (it exited or
    /// restarted), found without a request: a non-blocking peek at the
    /// socket, which costs the switch nothing. An idle agent used to ask
    /// `hello` four times a second to learn the same, and each answer woke
    /// the switch's connection thread (#29: an idle switch's budget).
    /// Bytes the switch sent unasked also count as closed: the stream is
    /// out of step and only a new connection can be trusted.
    pub fn peer_closed(&self) -> bool {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let mut byte = [0u8; 1];
        match recv(
            self.writer.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => false,
            Ok(_) | Err(_) => true,
        }
    }
}

/// Connects, sends one request, returns its result.
pub fn call<T: DeserializeOwned>(path: &Path, req: &Request) -> Result<T, ClientError> {
    Client::connect(path, Duration::from_secs(30))?.call(req)
}

/// `write_all` over several slices, in one `writev` when the socket takes
/// it all (a request line and its newline, always, below the socket
/// buffer).
fn write_all_vectored(w: &mut impl Write, parts: &[std::io::IoSlice<'_>]) -> std::io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let n = w.write_vectored(parts)?;
    if n == total {
        return Ok(());
    }
    // A short write: finish byte-wise from where it stopped.
    let mut skip = n;
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        w.write_all(&p[skip..])?;
        skip = 0;
    }
    Ok(())
}

//! The real sink: this node's switch, over its control socket, with the
//! switch's own client (`api/src/client.rs`, JSON lines); the
//! request lines are encoded here, borrowing what they carry.
//!
//! Requests are the API's own ([`Request`], from the translator's
//! [`FullSync::requests`] and [`TopologyPatch::requests`]), encoded
//! straight into the request line. One connection is kept. On connecting, `hello` checks that the switch
//! serves this agent's node. A full sync is `set_remote_nodes` then
//! `set_services` (with the settings); a patch is `set_remote_nodes` if
//! the nodes changed and one atomic `patch_services`. A switch that
//! restarts closes the connection: the push loop's next look at it
//! ([`TopologySink::needs_full_sync`], every few hundred milliseconds: a
//! non-blocking peek at the socket, which does not wake the switch) sees
//! the close, and the agent sends a full sync to the new switch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use podswitch_api::client::{Client, ClientError};
use podswitch_api::Request;
use serde::de::IgnoredAny;

use super::{SinkError, TopologySink};
use crate::translate::{FullSync, TopologyPatch};

/// How long one control call may take (a 10k-Service table is built and
/// published in well under this).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The switch on `socket`, serving `node`.
pub struct SwitchSink {
    socket: PathBuf,
    node: String,
    timeout: Duration,
    client: Option<Client>,
}

impl SwitchSink {
    /// Does not connect yet: the first push does.
    pub fn new(socket: &Path, node: &str) -> Self {
        SwitchSink {
            socket: socket.to_path_buf(),
            node: node.to_owned(),
            timeout: CALL_TIMEOUT,
            client: None,
        }
    }

    fn connected(&mut self) -> Result<&mut Client, SinkError> {
        if self.client.is_none() {
            let mut client =
                Client::connect(&self.socket, self.timeout).map_err(SinkError::Unreachable)?;
            let hello = client.hello().map_err(SinkError::Unreachable)?;
            if hello.node != self.node {
                return Err(SinkError::WrongSwitch {
                    expected: self.node.clone(),
                    found: hello.node,
                });
            }
            tracing::info!(socket = %self.socket.display(), switch_version = %hello.switch_version,
                "connected to the switch");
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Sends `requests` in order; all are tried (a refused node list must
    /// not hold back the Services), the first error is returned. A
    /// connection error drops the connection and stops.
    fn send(&mut self, requests: &[Request]) -> Result<(), SinkError> {
        let mut first_error = None;
        for req in requests {
            let client = self.connected()?;
            match client.call::<IgnoredAny>(req) {
                Ok(_) => {}
                Err(ClientError::Api(source)) => {
                    let e = SinkError::Refused {
                        op: req.op(),
                        source,
                    };
                    tracing::error!(error = %super::error_chain(&e), "the switch refused a translated request");
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    self.client = None;
                    return Err(SinkError::Unreachable(e));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl TopologySink for SwitchSink {
    fn full_sync(&mut self, sync: &FullSync) -> Result<(), SinkError> {
        self.send(&sync.requests())
    }

    fn apply_patch(&mut self, patch: &TopologyPatch) -> Result<(), SinkError> {
        self.send(&patch.requests())
    }

    fn needs_full_sync(&mut self) -> bool {
        let Some(client) = self.client.as_mut() else {
            return true;
        };
        // A peek, not a `hello`: the switch is not woken to say it is alive.
        if client.peer_closed() {
            tracing::info!("lost the switch connection (it closed the control socket)");
            self.client = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    use podswitch_api::{decode_request, ServiceSettings};

    use super::*;

    /// A stand-in switch: answers `hello` for `node`, records the ops of
    /// the other requests, refuses `set_remote_nodes`; serves `conns`
    /// connections one after the other.
    fn fake_switch(
        path: &Path,
        node: &'static str,
        conns: usize,
    ) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let mut ops = Vec::new();
            for _ in 0..conns {
                let (stream, _) = listener.accept().unwrap();
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let req = decode_request(&line).unwrap();
                    let reply = match req {
                        Request::Hello => serde_json::json!({"ok": true, "result":
                            {"api_version": 1, "switch_version": "0", "node": node, "workers": 1}}),
                        Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs { .. }) => {
                            serde_json::json!({"ok": false, "error":
                            {"code": "invalid_argument", "field": "nodes[0].pod_cidrs", "message": "overlap"}})
                        }
                        other => {
                            let op = match other {
                                Request::SetServices(podswitch_api::SetServicesArgs { .. }) => {
                                    "set_services"
                                }
                                Request::PatchServices(podswitch_api::PatchServicesArgs {
                                    ..
                                }) => "patch_services",
                                _ => "other",
                            };
                            ops.push(op.to_string());
                            serde_json::json!({"ok": true, "result": null})
                        }
                    };
                    writeln!(writer, "{reply}").unwrap();
                }
            }
            ops
        })
    }

    fn sync() -> FullSync {
        FullSync {
            settings: ServiceSettings::default(),
            remote_nodes: Vec::new(),
            services: Vec::new(),
        }
    }

    #[test]
    fn a_refused_node_list_does_not_hold_back_the_services() {
        let dir = std::env::temp_dir().join(format!("podswitch-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        let _ = std::fs::remove_file(&path);
        let server = fake_switch(&path, "node-1", 1);
        let mut sink = SwitchSink::new(&path, "node-1");
        assert!(sink.needs_full_sync(), "not connected yet");
        let e = sink.full_sync(&sync()).unwrap_err();
        assert!(
            matches!(
                e,
                SinkError::Refused {
                    op: "set_remote_nodes",
                    ..
                }
            ),
            "{e}"
        );
        assert!(!sink.needs_full_sync(), "still connected");
        sink.apply_patch(&TopologyPatch {
            remove: vec!["ns/a".into()],
            ..Default::default()
        })
        .unwrap();
        drop(sink);
        assert_eq!(server.join().unwrap(), ["set_services", "patch_services"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_switch_of_another_node_or_none_at_all_is_an_error() {
        let dir = std::env::temp_dir().join(format!("podswitch-sink2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.sock");
        let _ = std::fs::remove_file(&path);
        let mut sink = SwitchSink::new(&path, "node-1");
        assert!(matches!(
            sink.full_sync(&sync()),
            Err(SinkError::Unreachable(_))
        ));
        let server = fake_switch(&path, "node-9", 1);
        let e = sink.full_sync(&sync()).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"node-9\", not this agent's node \"node-1\""),
            "{e}"
        );
        drop(sink);
        assert!(server.join().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_closed_connection_is_noticed_without_asking_the_switch() {
        use std::io::Read;
        let dir = std::env::temp_dir().join(format!("podswitch-sink3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut lines = Vec::new();
            // The connect's hello, the full sync's two requests.
            for _ in 0..3 {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let reply = match decode_request(line.trim_end()).unwrap() {
                    Request::Hello => serde_json::json!({"ok": true, "result":
                        {"api_version": 1, "switch_version": "0", "node": "node-1", "workers": 1}}),
                    _ => serde_json::json!({"ok": true, "result": null}),
                };
                writeln!(writer, "{reply}").unwrap();
                lines.push(line);
            }
            close_rx.recv().unwrap();
            // Nothing was asked while the agent checked the connection.
            reader.get_ref().set_nonblocking(true).unwrap();
            let mut rest = Vec::new();
            let unasked = reader.read_to_end(&mut rest);
            assert!(
                matches!(&unasked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "the sink sent {rest:?} ({unasked:?})"
            );
        });
        let mut sink = SwitchSink::new(&path, "node-1");
        sink.full_sync(&sync()).unwrap();
        for _ in 0..5 {
            assert!(!sink.needs_full_sync(), "the switch is still there");
        }
        close_tx.send(()).unwrap();
        server.join().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sink.needs_full_sync() {
            assert!(
                std::time::Instant::now() < deadline,
                "a closed connection went unnoticed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

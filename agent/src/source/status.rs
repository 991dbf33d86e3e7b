//! The agent's status file: what `podswitch agent status` shows.
//!
//! [`StatusFileSink`] wraps the real sink: it passes every push through,
//! notes when the last one succeeded, and on each
//! [`TopologySink::report`] hands the source's status to a writer thread
//! that replaces the file atomically (write to a temporary name, then
//! rename), so a reader never sees half a file and the push loop never
//! waits on the disk. The file is JSON ([`AgentStatus`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{SinkError, SourceStatus, TopologySink};
use crate::translate::{FullSync, TopologyPatch};

/// Where a DaemonSet's agent writes its status (the hostPath
/// `/run/podswitch`, so `podswitch agent status` on the node finds it).
pub const DEFAULT_STATUS_FILE: &str = "/run/podswitch/agent-status.json";

/// The status file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The node the agent serves.
    pub node: String,
    /// `kubernetes` or `files:<path>`.
    pub source: String,
    pub pid: u32,
    pub started_unix_ms: u64,
    /// When this status was written.
    pub updated_unix_ms: u64,
    /// The last successful push to the switch, and whether it was a full
    /// sync.
    pub last_push_unix_ms: Option<u64>,
    pub last_push_full: Option<bool>,
    /// The source's own status (problems per object, errors, counters).
    /// Kept as JSON: problems are written for people and tools, not read
    /// back into types.
    pub source_status: serde_json::Value,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why the status file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusFileError {
    #[error("cannot read the agent status {path} (is the agent running with this --status-file?)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an agent status file")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads a status file.
pub fn read_status(path: &Path) -> Result<AgentStatus, StatusFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| StatusFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| StatusFileError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

fn write_atomically(path: &Path, status: &AgentStatus) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// A sink that also keeps the status file up to date.
pub struct StatusFileSink<S> {
    inner: S,
    template: AgentStatus,
    writer: mpsc::Sender<AgentStatus>,
}

impl<S: TopologySink> StatusFileSink<S> {
    /// Wraps `inner`; the status goes to `path` (written once now, with
    /// nothing pushed yet, so `agent status` sees a starting agent).
    pub fn new(inner: S, path: &Path, node: &str, source: &str) -> Self {
        let (writer, rx) = mpsc::channel::<AgentStatus>();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("agent-status".into())
            .spawn(move || {
                while let Ok(mut status) = rx.recv() {
                    // Only the newest matters.
                    while let Ok(newer) = rx.try_recv() {
                        status = newer;
                    }
                    if let Err(e) = write_atomically(&path, &status) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot write the agent status");
                    }
                }
            })
            .expect("spawning a thread");
        let now = unix_ms();
        let template = AgentStatus {
            node: node.to_owned(),
            source: source.to_owned(),
            pid: std::process::id(),
            started_unix_ms: now,
            updated_unix_ms: now,
            last_push_unix_ms: None,
            last_push_full: None,
            source_status: serde_json::to_value(SourceStatus::default())
                .unwrap_or(serde_json::Value::Null),
        };
        let _ = writer.send(template.clone());
        StatusFileSink {
            inner,
            template,
            writer,
        }
    }

    fn pushed(&mut self, full: bool) {
        self.template.last_push_unix_ms = Some(unix_ms());
        self.template.last_push_full = Some(full);
    }
}

impl<S: TopologySink> TopologySink for StatusFileSink<S> {
    fn full_sync(&mut self, sync: &FullSync) -> Result<(), SinkError> {
        self.inner.full_sync(sync)?;
        self.pushed(true);
        Ok(())
    }

    fn apply_patch(&mut self, patch: &TopologyPatch) -> Result<(), SinkError> {
        self.inner.apply_patch(patch)?;
        self.pushed(false);
        Ok(())
    }

    fn needs_full_sync(&mut self) -> bool {
        self.inner.needs_full_sync()
    }

    fn report(&mut self, status: &SourceStatus) {
        self.inner.report(status);
        self.template.updated_unix_ms = unix_ms();
        self.template.source_status =
            serde_json::to_value(status).unwrap_or(serde_json::Value::Null);
        let _ = self.writer.send(self.template.clone());
    }
}

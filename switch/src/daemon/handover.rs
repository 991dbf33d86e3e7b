//! What a stopping switch hands to the next one: its flow table and
//! Services (`<state_dir>/handover.bin`), loaded once and only for its node.

use super::*;

/// The file a stopping switch hands its flows and Services over in
/// (`<state_dir>/handover.bin`, [`crate::conntrack::persist`]); the next
/// switch loads it before forwarding and removes it.
pub const HANDOVER_FILE: &str = "handover.bin";
/// A handover older than this is refused: it is meant for a restart, not
/// for a switch started again after a long stop (whose agent resyncs it).
const HANDOVER_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// The Services a handover carries (its extra section, JSON): with them
/// the new switch translates from its first packet, not from its agent's
/// first push.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HandoverServices {
    /// The node the file was written for.
    pub(super) node: String,
    pub(super) settings: ServiceSettings,
    pub(super) services: Vec<ServiceSpec>,
}

/// Loads the flows and Services a previous switch handed over, into the
/// still unshared `conntrack`. A missing file is a cold start; a bad one
/// is logged, set aside as `handover.bin.rejected`, and the switch starts
/// empty. The file is consumed either way.
pub(super) fn take_handover(
    state_dir: &Path,
    node: &str,
    conntrack: &mut ConnTrack,
) -> Option<HandoverServices> {
    let path = state_dir.join(HANDOVER_FILE);
    if !path.exists() {
        return None;
    }
    let started = std::time::Instant::now();
    let loaded = crate::conntrack::persist::load(
        conntrack,
        &path,
        started,
        std::time::SystemTime::now(),
        HANDOVER_MAX_AGE,
    );
    let restored = match loaded {
        Ok(r) => {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "cannot remove the loaded handover file");
            }
            r
        }
        Err(e) => {
            let aside = path.with_extension("bin.rejected");
            let _ = std::fs::rename(&path, &aside);
            tracing::error!(error = %error_chain(&e), kept_as = %aside.display(), "handover file refused; starting with an empty flow table");
            return None;
        }
    };
    tracing::info!(
        flows = restored.flows,
        expired = restored.expired,
        no_room = restored.no_room,
        age_ms = restored.age.as_millis() as u64,
        load_ms = started.elapsed().as_millis() as u64,
        "flows handed over by the previous switch restored"
    );
    match serde_json::from_slice::<HandoverServices>(&restored.extra) {
        Ok(s) if s.node == node => Some(s),
        Ok(s) => {
            tracing::warn!(file_node = %s.node, %node, "handover Services are another node's; waiting for the agent's");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "handover Services unreadable; waiting for the agent's");
            None
        }
    }
}

/// Writes the flow table and the Services for the next switch. Called
/// once the workers have stopped, so the table is final.
pub(super) fn write_handover(state_dir: &Path, state: &SwitchState) {
    let path = state_dir.join(HANDOVER_FILE);
    let started = std::time::Instant::now();
    let services = HandoverServices {
        node: state.node.name.clone(),
        settings: state.service_settings.clone(),
        services: state.services.values().cloned().collect(),
    };
    let extra = match serde_json::to_vec(&services) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the Services for the handover");
            Vec::new()
        }
    };
    match crate::conntrack::persist::save(
        &state.conntrack,
        &path,
        &extra,
        started,
        std::time::SystemTime::now(),
    ) {
        Ok(s) => tracing::info!(
            flows = s.flows,
            services = services.services.len(),
            bytes = s.bytes,
            save_ms = started.elapsed().as_millis() as u64,
            path = %path.display(),
            "flows and Services written for the next switch"
        ),
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "flow handover not written; the next switch starts with an empty flow table")
        }
    }
}

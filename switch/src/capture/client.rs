//! The reading side of a capture, for `podswitch ctl capture`: arms it
//! over the control socket (`capture_start`), polls `capture_read` on the
//! same connection and writes each frame to a pcap or pcapng file as it
//! arrives, until the switch answers `done` (count or duration reached)
//! or the caller asks to stop (Ctrl-C: `capture_stop`, then the rest is
//! read).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::file::{CaptureFileWriter, CaptureFormat, CaptureInterface};
use super::{CaptureCounts, CapturePoint};
use podswitch_api::client::{Client, ClientError};
use podswitch_api::{CaptureBatch, CaptureSpec, CaptureStarted, Request};

/// How long the reader waits before asking again when nothing came.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Grace beyond the capture's own duration before the reader gives up on
/// a switch that never says `done`.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// How a capture went.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureSummary {
    pub started: CaptureStarted,
    /// Frames written to the file.
    pub written: u64,
    /// The switch's counts at the end.
    pub counts: CaptureCounts,
    /// Whether the caller stopped it before its count or duration.
    pub interrupted: bool,
}

/// Words for a capture point, for files and messages.
pub fn describe_point(point: CapturePoint) -> &'static str {
    match point {
        CapturePoint::Ingress => "ingress",
        CapturePoint::Egress => "egress",
        CapturePoint::Both => "ingress and egress",
    }
}

/// A control call's error for a person: the switch's refusal as it
/// stated it, anything else with its cause chain.
fn call_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Api(refused) => anyhow::Error::new(refused),
        other => anyhow::Error::new(other),
    }
}

/// Runs one capture on the switch at `socket` into the output `open`
/// returns (called once the capture is armed), in `format`. `on_started`
/// is called once the file header is written (traffic sent after it is
/// seen); `stop` ends the capture early.
pub fn run<W: Write>(
    socket: &Path,
    spec: &CaptureSpec,
    format: CaptureFormat,
    open: impl FnOnce() -> anyhow::Result<W>,
    stop: &AtomicBool,
    on_started: impl FnOnce(&CaptureStarted),
) -> anyhow::Result<(W, CaptureSummary)> {
    let mut client = Client::connect(socket, Duration::from_secs(30)).map_err(call_error)?;
    let started: CaptureStarted = client
        .call(&Request::CaptureStart(spec.clone()))
        .map_err(call_error)
        .with_context(|| format!("arming a capture on {}", spec.port))?;
    let id = started.id;
    let start_ns = super::wall_clock_ns();
    let iface = CaptureInterface {
        name: started.port.clone(),
        description: format!(
            "podswitch {} of {}",
            describe_point(started.point),
            started.port
        ),
        filter: started.filter.clone(),
        snaplen: started.snaplen,
    };
    let result = (|| -> anyhow::Result<(W, CaptureSummary)> {
        let mut file = CaptureFileWriter::new(open()?, format, &iface)?;
        file.flush()?;
        on_started(&started);
        let give_up = Instant::now() + Duration::from_millis(started.duration_ms) + GIVE_UP_AFTER;
        let mut stop_sent = false;
        let counts = loop {
            if !stop_sent && stop.load(Ordering::Relaxed) {
                client
                    .call::<CaptureCounts>(&Request::CaptureStop(podswitch_api::CaptureStopArgs {
                        id,
                    }))
                    .map_err(call_error)
                    .with_context(|| format!("stopping capture {id}"))?;
                stop_sent = true;
            }
            let batch: CaptureBatch = client
                .call(&Request::CaptureRead(podswitch_api::CaptureReadArgs {
                    id,
                    max_bytes: None,
                }))
                .map_err(call_error)
                .with_context(|| format!("reading capture {id}"))?;
            for f in &batch.frames {
                let data = data_encoding::BASE64
                    .decode(f.data.as_bytes())
                    .with_context(|| format!("capture {id}: a frame is not base64"))?;
                file.write_frame(f.ts_ns, f.orig_len, f.direction, &data)?;
            }
            if !batch.frames.is_empty() {
                file.flush()?;
            }
            if batch.done {
                break CaptureCounts {
                    captured: batch.captured,
                    dropped: batch.dropped,
                    filtered: batch.filtered,
                };
            }
            if Instant::now() > give_up {
                anyhow::bail!("capture {id}: the switch never reported the end of the capture");
            }
            if batch.frames.is_empty() {
                std::thread::sleep(POLL_INTERVAL);
            }
        };
        let written = file.frames();
        let out = file.finish(&counts, start_ns, super::wall_clock_ns())?;
        Ok((
            out,
            CaptureSummary {
                started: started.clone(),
                written,
                counts,
                interrupted: stop_sent,
            },
        ))
    })();
    if result.is_err() {
        // Free the switch's ring now rather than when it notices silence.
        let _ = client
            .call::<CaptureCounts>(&Request::CaptureStop(podswitch_api::CaptureStopArgs { id }));
    }
    result
}

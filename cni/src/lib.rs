//! `podswitch-cni`: the CNI plugin that wires pods to the node's switch
//! (CNI spec 1.0.0 and 1.1.0, <https://www.cni.dev/docs/spec/>).
//!
//! A container runtime runs the plugin once per pod operation, with the
//! command and the pod in `CNI_*` variables and the network configuration
//! on stdin. The plugin is a short-lived client of two things that outlive
//! it: the switch daemon (`podswitch switch run`, over its control socket),
//! which owns the pod's tap and moves it into the pod's namespace, and the
//! IPAM store on disk.
//!
//! - [`spec`]: the protocol's data (versions, environment, configuration,
//!   results, errors and their codes);
//! - [`ipam`]: the built-in allocator (`host-local`'s on-disk layout);
//! - [`delegate`]: running another plugin (`host-local`) for IPAM;
//! - [`plugin`]: the commands.
//!
//! Error codes: the spec's well-known ones (1 incompatible version,
//! 2 unsupported field, 3 unknown container, 4 invalid environment,
//! 5 I/O, 6 decode failure, 7 invalid configuration, 11 try again later,
//! 50 not available) and this plugin's own from 100 up, listed in
//! [`spec::ErrorCode`].

pub mod delegate;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod ipam;
pub mod plugin;
pub mod spec;

use std::io::{Read, Write};

use spec::{CniError, ErrorCode, LATEST_VERSION, MAX_CONFIG_BYTES};

/// The binary's body: reads stdin and the process environment, runs the
/// command, prints the result or the error on stdout (spec §2) and returns
/// the exit code (0 on success, 1 on error).
pub fn main() -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut stdin);
    let version = spec::sniff_version(&stdin).unwrap_or_else(|| LATEST_VERSION.to_string());
    let outcome = match read {
        Ok(_) => plugin::run(|k| std::env::var(k).ok(), &stdin),
        Err(e) => Err(CniError::new(
            ErrorCode::Io,
            "cannot read the network configuration from stdin",
        )
        .with_details(e.to_string())),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(None) => 0,
        Ok(Some(text)) => {
            // Nothing sensible is left to do if stdout is gone.
            let _ = writeln!(out, "{text}");
            0
        }
        Err(e) => {
            let text = serde_json::to_string_pretty(&e.reply(&version)).unwrap_or_default();
            let _ = writeln!(out, "{text}");
            eprintln!("podswitch-cni: {e}");
            1
        }
    }
}

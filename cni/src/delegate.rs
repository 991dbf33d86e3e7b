//! Delegation to another CNI plugin (an IPAM plugin such as the reference
//! `host-local`), as the spec describes it (spec §4 "Delegated plugins"):
//! the plugin is looked up by its type in `CNI_PATH`, run with the same
//! environment and the same configuration on stdin, with only
//! `CNI_COMMAND` changed when needed (a DEL to undo an ADD).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::spec::{CniError, CniResult, Command, ErrorCode, Invocation, SpecVersion};

/// A plugin found in `CNI_PATH`.
#[derive(Debug, Clone)]
pub struct Delegate {
    pub name: String,
    pub path: PathBuf,
}

impl Delegate {
    /// Finds the executable `name` in `cni_path`.
    ///
    /// # Errors
    /// Code 4 if `CNI_PATH` is empty, 103 if no directory holds `name`.
    pub fn find(name: &str, cni_path: &[PathBuf]) -> Result<Delegate, CniError> {
        if cni_path.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_PATH is required to find the IPAM plugin {name:?}"),
            ));
        }
        for dir in cni_path {
            let p = dir.join(name);
            if is_executable(&p) {
                return Ok(Delegate {
                    name: name.to_string(),
                    path: p,
                });
            }
        }
        Err(CniError::new(
            ErrorCode::DelegateFailed,
            format!("IPAM plugin {name:?} not found in CNI_PATH"),
        )
        .with_details(format!(
            "searched {}",
            cni_path
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        )))
    }

    /// Runs the plugin for `command` with `stdin`; returns its stdout on
    /// success.
    ///
    /// # Errors
    /// The plugin's own CNI error (its code kept, its message prefixed with
    /// its name), or code 103 if it cannot be run or its output is no CNI
    /// error.
    pub fn run(
        &self,
        inv: &Invocation,
        command: Command,
        stdin: &[u8],
    ) -> Result<Vec<u8>, CniError> {
        let mut p = Process::new(&self.path);
        p.env("CNI_COMMAND", command.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let set = |p: &mut Process, key: &str, v: Option<String>| match v {
            Some(v) => {
                p.env(key, v);
            }
            None => {
                p.env_remove(key);
            }
        };
        set(&mut p, "CNI_CONTAINERID", inv.container_id.clone());
        set(
            &mut p,
            "CNI_NETNS",
            inv.netns.as_ref().map(|n| n.display().to_string()),
        );
        set(&mut p, "CNI_IFNAME", inv.ifname.clone());
        set(&mut p, "CNI_ARGS", inv.args_raw.clone());
        set(
            &mut p,
            "CNI_PATH",
            Some(
                inv.path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
        );
        let failed = |what: String| {
            CniError::new(
                ErrorCode::DelegateFailed,
                format!("IPAM plugin {} {}: {what}", self.name, command.as_str()),
            )
        };
        let mut child = p
            .spawn()
            .map_err(|e| failed(format!("cannot run {}: {e}", self.path.display())))?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading stdin closes the pipe;
            // its exit status and output tell what happened.
            let _ = input.write_all(stdin);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| failed(format!("waiting for it: {e}")))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(v) if v.get("code").and_then(Value::as_u64).is_some() => {
                let code = v["code"].as_u64().unwrap_or(0);
                let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
                let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
                Err(CniError {
                    code: u32::try_from(code).unwrap_or(ErrorCode::DelegateFailed as u32),
                    msg: format!("IPAM plugin {} {}: {msg}", self.name, command.as_str()),
                    details: details.to_string(),
                })
            }
            _ => Err(
                failed(format!("exited with {}", out.status)).with_details(format!(
                    "stdout: {} stderr: {stderr}",
                    String::from_utf8_lossy(&out.stdout).trim()
                )),
            ),
        }
    }

    /// ADD: the IPAM result.
    ///
    /// # Errors
    /// As [`Delegate::run`], or code 103 if the result does not parse.
    pub fn add(&self, inv: &Invocation, stdin: &[u8]) -> Result<CniResult, CniError> {
        let out = self.run(inv, Command::Add, stdin)?;
        serde_json::from_slice(&out).map_err(|e| {
            CniError::new(
                ErrorCode::DelegateFailed,
                format!("IPAM plugin {} ADD: unreadable result", self.name),
            )
            .with_details(format!("{e}: {}", String::from_utf8_lossy(&out)))
        })
    }

    /// Whether the plugin speaks spec `version` (from its VERSION reply);
    /// STATUS and GC are passed on only to plugins that speak 1.1.0.
    pub fn supports(&self, inv: &Invocation, version: SpecVersion) -> bool {
        let probe = serde_json::json!({"cniVersion": version.to_string()}).to_string();
        let Ok(out) = self.run(inv, Command::Version, probe.as_bytes()) else {
            return false;
        };
        serde_json::from_slice::<Value>(&out)
            .ok()
            .and_then(|v| v.get("supportedVersions").cloned())
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .any(|s| SpecVersion::parse(s) == Some(version))
            })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_plugins_are_named() {
        let e = Delegate::find("host-local", &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment as u32);
        let e = Delegate::find("no-such-plugin", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert_eq!(e.code, ErrorCode::DelegateFailed as u32);
        assert!(e.msg.contains("no-such-plugin"), "{e}");
        assert!(e.details.contains("/nonexistent"), "{e}");
    }
}

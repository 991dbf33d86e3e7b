//! The CNI protocol's data: spec versions, the `CNI_*` environment, the
//! network configuration on stdin, results and errors on stdout
//! (CNI spec 1.0.0 and 1.1.0, <https://www.cni.dev/docs/spec/>; results are
//! also written in the 0.3.x/0.4.0 shape for older runtimes).
//!
//! Nothing here talks to the switch or the kernel: [`super::plugin`] does.
//! Every parser returns a [`CniError`] with the spec's code and never panics
//! on outside input.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version this plugin speaks; used for replies when the
/// configuration's own version is unknown (spec §2 "Errors").
pub const LATEST_VERSION: &str = "1.1.0";

/// A CNI spec version (`MAJOR.MINOR.PATCH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpecVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl SpecVersion {
    /// 0.4.0: CHECK and prevResult on DEL were introduced.
    pub const V0_4_0: SpecVersion = SpecVersion::new(0, 4, 0);
    /// 1.0.0: `version` dropped from `ips`.
    pub const V1_0_0: SpecVersion = SpecVersion::new(1, 0, 0);
    /// 1.1.0: STATUS and GC, interface `mtu`, route attributes.
    pub const V1_1_0: SpecVersion = SpecVersion::new(1, 1, 0);

    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        SpecVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `MAJOR.MINOR.PATCH` (plain numbers, no pre-release suffix).
    pub fn parse(s: &str) -> Option<SpecVersion> {
        let mut parts = s.split('.');
        let mut next = || -> Option<u32> {
            let p = parts.next()?;
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let v = SpecVersion::new(next()?, next()?, next()?);
        match parts.next() {
            None => Some(v),
            Some(_) => None,
        }
    }

    /// Whether this plugin speaks `self`.
    pub fn is_supported(self) -> bool {
        SUPPORTED_VERSIONS
            .iter()
            .any(|s| SpecVersion::parse(s) == Some(self))
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The error codes this plugin returns: the spec's well-known codes (0-99,
/// spec §2 "Error codes") and its own (100 and up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// The configuration's `cniVersion` is not one this plugin speaks, or
    /// is too old for the command (CHECK needs 0.4.0, STATUS and GC 1.1.0).
    IncompatibleVersion = 1,
    /// The configuration has a field this plugin does not support (the
    /// message names the key and the details carry its value).
    UnsupportedField = 2,
    /// The container (its network namespace) does not exist; the runtime
    /// need not clean anything up.
    UnknownContainer = 3,
    /// A `CNI_*` environment variable is missing or invalid.
    InvalidEnvironment = 4,
    /// Reading stdin failed.
    Io = 5,
    /// stdin is not JSON (or not a JSON object).
    Decode = 6,
    /// A field of the configuration is missing or has an invalid value.
    InvalidConfig = 7,
    /// The switch is not running or did not answer: retry later.
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADD now (the switch is down).
    NotAvailable = 50,
    /// The switch refused a request (the details carry its error).
    SwitchRefused = 100,
    /// The IP range has no free address left.
    RangeExhausted = 101,
    /// The IPAM store on disk could not be read or written.
    IpamStore = 102,
    /// The delegated IPAM plugin could not be run or gave no usable answer.
    DelegateFailed = 103,
    /// CHECK found the pod's networking not as the previous result says.
    CheckFailed = 104,
    /// Reading the pod's namespace (netlink, routes) failed.
    Netns = 105,
    /// ADD for a container and interface that already hold an address
    /// (the runtime must DEL first).
    AlreadyAttached = 106,
}

/// A CNI error, printed on stdout as `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error as the spec's JSON object, in `version`, keys in the
    /// spec's order.
    pub fn reply<'a>(&'a self, version: &'a str) -> ErrorReply<'a> {
        ErrorReply {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        }
    }

    /// [`CniError::reply`] as a JSON value.
    pub fn to_json(&self, version: &str) -> Value {
        serde_json::to_value(self.reply(version)).unwrap_or(Value::Null)
    }
}

/// The spec's error object (spec §2 "Errors").
#[derive(Debug, Serialize)]
pub struct ErrorReply<'a> {
    #[serde(rename = "cniVersion")]
    pub cni_version: &'a str,
    pub code: u32,
    pub msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub details: &'a str,
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The `CNI_*` environment of one invocation, validated for its command
/// (spec §2 "Parameters").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: Option<String>,
    /// `CNI_NETNS` (ADD, CHECK; optional for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: Option<String>,
    /// `CNI_ARGS` as key/value pairs, in order.
    pub args: Vec<(String, String)>,
    /// The raw `CNI_ARGS`, passed on to delegated plugins unchanged.
    pub args_raw: Option<String>,
    /// `CNI_PATH`, split on ':'.
    pub path: Vec<PathBuf>,
}

impl Invocation {
    /// Reads and validates the environment through `get` (the process
    /// environment in the binary, a map in tests).
    ///
    /// # Errors
    /// Code 4 for a missing or invalid variable.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let invalid = |msg: String| CniError::new(ErrorCode::InvalidEnvironment, msg);
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = match non_empty("CNI_COMMAND") {
            None => return Err(invalid("CNI_COMMAND is not set".into())),
            Some(c) => Command::parse(&c).ok_or_else(|| {
                invalid(format!(
                    "unknown CNI_COMMAND {c:?} (expected ADD, DEL, CHECK, VERSION, STATUS or GC)"
                ))
            })?,
        };
        let mut inv = Invocation {
            command,
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS").map(PathBuf::from),
            ifname: non_empty("CNI_IFNAME"),
            args: Vec::new(),
            args_raw: get("CNI_ARGS"),
            path: non_empty("CNI_PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
        };
        let needs = |k: &str, present: bool| {
            if present {
                Ok(())
            } else {
                Err(invalid(format!("{k} is required for {}", command.as_str())))
            }
        };
        match command {
            Command::Add | Command::Check => {
                needs("CNI_CONTAINERID", inv.container_id.is_some())?;
                needs("CNI_NETNS", inv.netns.is_some())?;
                needs("CNI_IFNAME", inv.ifname.is_some())?;
            }
            Command::Del => {
                needs("CNI_CONTAINERID", inv.container_id.is_some())?;
                needs("CNI_IFNAME", inv.ifname.is_some())?;
            }
            Command::Version | Command::Status | Command::Gc => {}
        }
        if let Some(id) = &inv.container_id {
            validate_container_id(id)?;
        }
        if let Some(ifname) = &inv.ifname {
            validate_ifname(ifname)?;
        }
        if let Some(netns) = &inv.netns {
            if !netns.is_absolute() {
                return Err(invalid(format!(
                    "CNI_NETNS {} is not an absolute path",
                    netns.display()
                )));
            }
        }
        if let Some(raw) = &inv.args_raw {
            inv.args = parse_cni_args(raw)?;
        }
        Ok(inv)
    }

    /// The value of `key` in `CNI_ARGS`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `CNI_CONTAINERID` (validated present for ADD, DEL and CHECK).
    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }

    /// `CNI_IFNAME` (validated present for ADD, DEL and CHECK).
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
}

/// Spec §2: "must start with an alphanumeric character, optionally followed
/// by any combination of one or more alphanumeric characters, underscore,
/// dot or hyphen".
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.len() <= 1024
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(
            CniError::new(ErrorCode::InvalidEnvironment, "invalid CNI_CONTAINERID")
                .with_details(format!(
                    "{id:?}: must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
                )),
        )
    }
}

/// Spec §2: an interface name must not be empty, "." or "..", must be
/// shorter than 16 characters and must not contain '/', ':' or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is not a valid name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(r) => Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("invalid CNI_IFNAME {name:?}: {r}"),
        )),
    }
}

/// Parses `CNI_ARGS` (`K1=V1;K2=V2`). Empty pairs are skipped.
///
/// # Errors
/// Code 4 for a pair without `=` or with an empty key.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for pair in raw.split(';') {
        if pair.is_empty() {
            continue;
        }
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
            _ => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("invalid CNI_ARGS pair {pair:?} (expected KEY=VALUE)"),
                ))
            }
        }
    }
    Ok(out)
}

/// `dns` of the configuration and of results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// One attachment a runtime still considers valid (GC, spec 1.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The IPAM section as this plugin uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamConf {
    /// The built-in allocator (`ipam` absent, or `"type": "podswitch"`).
    Builtin(BuiltinIpam),
    /// Delegate to the IPAM plugin of this type, found in `CNI_PATH`
    /// (`host-local`, `static`, ...).
    Delegate { plugin: String },
}

/// The built-in allocator's settings (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuiltinIpam {
    /// The subnet to allocate from; default: the node's IPv4 pod CIDR as
    /// the switch reports it.
    pub subnet: Option<ipnet::Ipv4Net>,
    /// First and last address handed out (inclusive).
    pub range_start: Option<std::net::Ipv4Addr>,
    pub range_end: Option<std::net::Ipv4Addr>,
}

/// The plugin's network configuration (spec §1, one plugin object of a
/// list as the runtime passes it, with `name`, `cniVersion`,
/// `runtimeConfig` and `prevResult` filled in). Unknown top-level keys are
/// ignored: runtimes add their own.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: SpecVersion,
    /// The configuration's `cniVersion` exactly as written.
    pub cni_version_raw: String,
    pub name: String,
    pub plugin_type: String,
    /// The switch's control socket.
    pub switch_socket: PathBuf,
    /// Where the built-in IPAM keeps its allocations (one directory per
    /// network name below it).
    pub data_dir: PathBuf,
    /// Pod MTU; default: the node's.
    pub mtu: Option<u32>,
    pub ipam: IpamConf,
    pub dns: Dns,
    /// The previous plugin's result (chained ADD, DEL, CHECK).
    pub prev_result: Option<CniResult>,
    /// GC: `cni.dev/valid-attachments` (or the older `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Default control socket of the node's switch.
pub const DEFAULT_SWITCH_SOCKET: &str = "/run/podswitch/switch.sock";
/// Default IPAM directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/podswitch";

/// Largest configuration accepted on stdin.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// Reads `cniVersion` from a configuration, for replies (errors included)
/// in the caller's version. `None` if stdin has no supported version.
pub fn sniff_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let s = v.get("cniVersion")?.as_str()?;
    SpecVersion::parse(s)
        .filter(|v| v.is_supported())
        .map(|_| s.to_string())
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg)
}

/// Parses the network configuration on stdin.
///
/// # Errors
/// Code 6 if it is not a JSON object, 1 for an unsupported `cniVersion`,
/// 7 for a missing or invalid field (named in the message), 2 for a key of
/// the built-in `ipam` section this plugin does not know.
pub fn parse_config(stdin: &[u8]) -> Result<NetConf, CniError> {
    if stdin.len() > MAX_CONFIG_BYTES {
        return Err(CniError::new(
            ErrorCode::Decode,
            format!("network configuration is larger than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            ErrorCode::Decode,
            "cannot decode the network configuration: not JSON",
        )
        .with_details(e.to_string())
    })?;
    let Value::Object(obj) = value else {
        return Err(CniError::new(
            ErrorCode::Decode,
            "the network configuration must be a JSON object",
        ));
    };
    let cni_version_raw = match obj.get("cniVersion") {
        None => return Err(invalid("missing required field cniVersion")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(invalid(format!("cniVersion must be a string, not {other}"))),
    };
    let cni_version = SpecVersion::parse(&cni_version_raw)
        .filter(|v| v.is_supported())
        .ok_or_else(|| {
            CniError::new(ErrorCode::IncompatibleVersion, "incompatible CNI versions").with_details(
                format!(
                    "config is {cni_version_raw:?}, plugin supports {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )
        })?;
    let string = |key: &str, required: bool| -> Result<Option<String>, CniError> {
        match obj.get(key) {
            None | Some(Value::Null) if !required => Ok(None),
            None | Some(Value::Null) => Err(invalid(format!("missing required field {key}"))),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(format!("{key} must be a string, not {other}"))),
        }
    };
    let name = string("name", true)?.unwrap_or_default();
    validate_network_name(&name)?;
    let plugin_type = string("type", true)?.unwrap_or_default();
    let switch_socket = PathBuf::from(
        string("switchSocket", false)?.unwrap_or_else(|| DEFAULT_SWITCH_SOCKET.into()),
    );
    let data_dir =
        PathBuf::from(string("dataDir", false)?.unwrap_or_else(|| DEFAULT_DATA_DIR.into()));
    for (key, p) in [("switchSocket", &switch_socket), ("dataDir", &data_dir)] {
        if !p.is_absolute() {
            return Err(invalid(format!(
                "{key} {} must be an absolute path",
                p.display()
            )));
        }
    }
    let mtu = match obj.get("mtu") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(m) if (576..=65535).contains(&m) => Some(m as u32),
            _ => {
                return Err(invalid(format!(
                    "mtu {v} must be an integer in 576..=65535"
                )))
            }
        },
    };
    let ipam = parse_ipam(obj.get("ipam"))?;
    let dns = match obj.get("dns") {
        None | Some(Value::Null) => Dns::default(),
        Some(v) => decode_field::<Dns>("dns", v)?,
    };
    let prev_result = match obj.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v) => Some(decode_field::<CniResult>("prevResult", v)?),
    };
    let valid_attachments = match obj
        .get("cni.dev/valid-attachments")
        .or_else(|| obj.get("cni.dev/attachments"))
    {
        None | Some(Value::Null) => None,
        Some(v) => Some(decode_field::<Vec<Attachment>>(
            "cni.dev/valid-attachments",
            v,
        )?),
    };
    Ok(NetConf {
        cni_version,
        cni_version_raw,
        name,
        plugin_type,
        switch_socket,
        data_dir,
        mtu,
        ipam,
        dns,
        prev_result,
        valid_attachments,
    })
}

/// Decodes one field, naming it and the path inside it on error (code 7).
fn decode_field<T: serde::de::DeserializeOwned>(key: &str, v: &Value) -> Result<T, CniError> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." || path.is_empty() {
            key.to_string()
        } else {
            format!("{key}.{path}")
        };
        invalid(format!("invalid {at}")).with_details(e.into_inner().to_string())
    })
}

/// Spec §1: a network name "must start with an alphanumeric character,
/// optionally followed by any combination of one or more alphanumeric
/// characters, underscore, dot (.) or hyphen (-)". It names the IPAM
/// directory, so this matters.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    let ok = name.len() <= 253
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid network name {name:?}: must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        )))
    }
}

/// The built-in IPAM's keys.
const BUILTIN_IPAM_KEYS: &[&str] = &["type", "subnet", "rangeStart", "rangeEnd"];

fn parse_ipam(v: Option<&Value>) -> Result<IpamConf, CniError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(IpamConf::Builtin(BuiltinIpam::default())),
        Some(Value::Object(o)) => o,
        Some(other) => return Err(invalid(format!("ipam must be an object, not {other}"))),
    };
    let plugin = match obj.get("type") {
        None | Some(Value::Null) => "podswitch".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(invalid(format!("ipam.type must be a string, not {other}"))),
    };
    if plugin != "podswitch" && !plugin.is_empty() {
        if plugin.contains('/') || plugin == "." || plugin == ".." {
            return Err(invalid(format!(
                "ipam.type {plugin:?} must be a plugin name, not a path"
            )));
        }
        return Ok(IpamConf::Delegate { plugin });
    }
    for (key, value) in obj {
        if !BUILTIN_IPAM_KEYS.contains(&key.as_str()) {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                format!(
                    "unsupported field ipam.{key} for the built-in IPAM (it knows {})",
                    BUILTIN_IPAM_KEYS.join(", ")
                ),
            )
            .with_details(format!("ipam.{key} = {value}")));
        }
    }
    let field = |key: &str| -> Result<Option<String>, CniError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(format!("ipam.{key} must be a string, not {other}"))),
        }
    };
    let subnet = field("subnet")?
        .map(|s| {
            s.parse::<ipnet::Ipv4Net>()
                .map(|n| n.trunc())
                .map_err(|_| invalid(format!("ipam.subnet {s:?} is not an IPv4 CIDR")))
        })
        .transpose()?;
    let addr = |key: &str| -> Result<Option<std::net::Ipv4Addr>, CniError> {
        field(key)?
            .map(|s| {
                s.parse()
                    .map_err(|_| invalid(format!("ipam.{key} {s:?} is not an IPv4 address")))
            })
            .transpose()
    };
    Ok(IpamConf::Builtin(BuiltinIpam {
        subnet,
        range_start: addr("rangeStart")?,
        range_end: addr("rangeEnd")?,
    }))
}

/// A CNI result (spec §5 "Success"); also the abbreviated IPAM result
/// (no interfaces). Unknown keys of a prevResult are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Spec 1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for container interfaces; empty for host ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// Spec 1.1.
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// Spec 1.1.
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6": only in results before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Spec 1.1 route attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl CniResult {
    /// The result as JSON in spec version `version` (`raw` as written in
    /// the configuration): before 1.0.0 every IP carries `version`; before
    /// 1.1.0 the 1.1-only keys are left out.
    pub fn to_json(&self, version: SpecVersion, raw: &str) -> Value {
        serde_json::to_value(self.versioned(version, raw)).unwrap_or(Value::Null)
    }

    /// The result as [`CniResult::to_json`] shapes it, still a struct (so
    /// it prints with the keys in the spec's order).
    pub fn versioned(&self, version: SpecVersion, raw: &str) -> CniResult {
        let mut r = self.clone();
        r.cni_version = raw.to_string();
        for ip in &mut r.ips {
            ip.version = if version < SpecVersion::V1_0_0 {
                Some(
                    if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    }
                    .to_string(),
                )
            } else {
                None
            };
        }
        if version < SpecVersion::V1_1_0 {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for rt in &mut r.routes {
                rt.mtu = None;
                rt.advmss = None;
                rt.priority = None;
                rt.table = None;
                rt.scope = None;
            }
        }
        r
    }
}

/// The VERSION reply.
pub fn version_info(version: &str) -> Value {
    serde_json::json!({
        "cniVersion": version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(SpecVersion::parse("1.0.0"), Some(SpecVersion::V1_0_0));
        assert!(SpecVersion::parse("1.0").is_none());
        assert!(SpecVersion::parse("1.0.0.0").is_none());
        assert!(SpecVersion::parse("1.0.0-rc1").is_none());
        assert!(SpecVersion::parse("").is_none());
        assert!(SpecVersion::parse("99999999999.0.0").is_none());
        assert!(SpecVersion::V0_4_0 < SpecVersion::V1_0_0);
        assert!(SpecVersion::V1_0_0 < SpecVersion::V1_1_0);
        assert!(SpecVersion::parse("1.1.0").unwrap().is_supported());
        assert!(!SpecVersion::parse("0.2.0").unwrap().is_supported());
        assert!(!SpecVersion::parse("2.0.0").unwrap().is_supported());
    }

    #[test]
    fn environment_is_validated_per_command() {
        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.arg("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(inv.path.len(), 2);

        let code = |pairs: &[(&str, &str)]| Invocation::from_env(env(pairs)).unwrap_err().code;
        assert_eq!(code(&[]), 4);
        assert_eq!(code(&[("CNI_COMMAND", "FROB")]), 4);
        assert_eq!(
            code(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a")]),
            4,
            "ADD needs CNI_NETNS and CNI_IFNAME"
        );
        // DEL does not need CNI_NETNS.
        assert!(Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .is_ok());
        for bad_id in ["-abc", "a b", "a/b", "ä"] {
            assert_eq!(
                code(&[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", bad_id),
                    ("CNI_IFNAME", "eth0"),
                ]),
                4,
                "{bad_id}"
            );
        }
        for bad_if in ["..", "a/b", "a:b", "a b", "abcdefghijklmnop"] {
            assert_eq!(
                code(&[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", bad_if),
                ]),
                4,
                "{bad_if}"
            );
        }
        assert_eq!(
            code(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "novalue"),
            ]),
            4
        );
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).is_ok());
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", "GC")])).is_ok());
    }

    #[test]
    fn config_with_defaults() {
        let c =
            parse_config(br#"{"cniVersion":"1.0.0","name":"podswitch","type":"podswitch-cni"}"#)
                .unwrap();
        assert_eq!(c.cni_version, SpecVersion::V1_0_0);
        assert_eq!(c.switch_socket, PathBuf::from(DEFAULT_SWITCH_SOCKET));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.ipam, IpamConf::Builtin(BuiltinIpam::default()));
        assert!(c.prev_result.is_none());
        assert!(c.dns.is_empty());
    }

    #[test]
    fn config_with_everything() {
        let c = parse_config(
            br#"{
              "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "podswitch-cni",
              "switchSocket": "/run/podswitch/node-1.sock", "dataDir": "/tmp/ipam", "mtu": 1450,
              "ipam": {"type": "podswitch", "subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10", "rangeEnd": "10.244.1.20"},
              "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
              "runtimeConfig": {"portMappings": []},
              "capabilities": {"portMappings": true},
              "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}]
            }"#,
        )
        .unwrap();
        assert_eq!(c.switch_socket, PathBuf::from("/run/podswitch/node-1.sock"));
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(
            c.ipam,
            IpamConf::Builtin(BuiltinIpam {
                subnet: Some("10.244.1.0/24".parse().unwrap()),
                range_start: Some("10.244.1.10".parse().unwrap()),
                range_end: Some("10.244.1.20".parse().unwrap()),
            })
        );
        assert_eq!(c.dns.nameservers, vec!["10.96.0.10"]);
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![Attachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }]
        );
        let d = parse_config(
            br#"{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni",
                 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]}}"#,
        )
        .unwrap();
        assert_eq!(
            d.ipam,
            IpamConf::Delegate {
                plugin: "host-local".into()
            }
        );
    }

    #[test]
    fn broken_configs_get_the_spec_codes() {
        let code = |s: &str| parse_config(s.as_bytes()).unwrap_err().code;
        assert_eq!(code("{not json"), 6);
        assert_eq!(code(""), 6);
        assert_eq!(code("[1,2]"), 6);
        assert_eq!(code(r#"{"name":"n","type":"t"}"#), 7, "missing cniVersion");
        assert_eq!(code(r#"{"cniVersion":1,"name":"n","type":"t"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"bogus","name":"n","type":"t"}"#), 1);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","type":"t"}"#),
            7,
            "missing name"
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"../x","type":"t"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n"}"#),
            7,
            "missing type"
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","switchSocket":"rel.sock"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":"big"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"subnet":"10.0.0.0/33"}}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"../bin/sh"}}"#),
            7
        );
        let e = parse_config(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"routes":[{"dst":"0.0.0.0/0"}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.msg.contains("ipam.routes"), "{e}");
        assert!(e.details.contains("0.0.0.0/0"), "{e}");
        let e = parse_config(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{"ips":[{"address":"x"}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("prevResult.ips[0].address"), "{e}");
    }

    /// The example result of the CNI spec (1.1.0, section 5 "Success"):
    /// it parses, and serializes back to the same JSON.
    #[test]
    fn spec_example_result_round_trips() {
        let example = serde_json::json!({
          "cniVersion": "1.1.0",
          "interfaces": [
              {"name": "cni0", "mac": "00:11:22:33:44:55"},
              {"name": "veth3243", "mac": "55:44:33:22:11:11"},
              {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
          ],
          "ips": [
              {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}
          ],
          "routes": [
              {"dst": "0.0.0.0/0"}
          ],
          "dns": {
            "nameservers": ["10.1.0.1"]
          }
        });
        let r: CniResult = serde_json::from_value(example.clone()).unwrap();
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.to_json(SpecVersion::V1_1_0, "1.1.0"), example);
    }

    /// What ADD prints for a pod, per version.
    #[test]
    fn pod_result_serializes_per_version() {
        let r = CniResult {
            cni_version: String::new(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:f4:01:05".into(),
                mtu: Some(1500),
                sandbox: "/run/netns/pod".into(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                version: None,
                address: "10.244.1.5/32".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            },
            extra: BTreeMap::new(),
        };
        assert_eq!(
            r.to_json(SpecVersion::V1_0_0, "1.0.0"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": "/run/netns/pod"}],
                "ips": [{"address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {"nameservers": ["10.96.0.10"]}
            })
        );
        let v11 = r.to_json(SpecVersion::V1_1_0, "1.1.0");
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
        let v04 = r.to_json(SpecVersion::V0_4_0, "0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["cniVersion"], "0.4.0");
    }

    #[test]
    fn errors_serialize_like_the_spec() {
        let e = CniError::new(ErrorCode::TryAgainLater, "switch not running")
            .with_details("connect: no such file");
        assert_eq!(
            e.to_json("1.0.0"),
            serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "switch not running", "details": "connect: no such file"})
        );
        let e = CniError::new(ErrorCode::Decode, "bad");
        assert!(e.to_json("1.1.0").get("details").is_none());
    }

    #[test]
    fn version_reply() {
        let v = version_info("1.0.0");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
        assert_eq!(
            sniff_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(sniff_version(br#"{"cniVersion":"7.0.0"}"#), None);
        assert_eq!(sniff_version(b"junk"), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_stdin_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_config(&bytes);
            let _ = sniff_version(&bytes);
        }

        #[test]
        fn arbitrary_json_shapes_never_panic(s in r#"\{("[a-zA-Z./-]{1,12}":("[0-9a-z./:-]{0,16}"|[0-9]{1,6}|null|true|\[\]|\{\}),?){0,6}\}"#) {
            let _ = parse_config(s.as_bytes());
            let with_version = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{s},"prevResult":{s},"dns":{s}}}"#);
            let _ = parse_config(with_version.as_bytes());
        }

        #[test]
        fn arbitrary_environment_never_panics(cmd in ".{0,8}", id in ".{0,20}", ifname in ".{0,20}", args in ".{0,40}", path in ".{0,40}") {
            let _ = Invocation::from_env(env(&[
                ("CNI_COMMAND", &cmd), ("CNI_CONTAINERID", &id), ("CNI_IFNAME", &ifname),
                ("CNI_ARGS", &args), ("CNI_PATH", &path), ("CNI_NETNS", "/x"),
            ]));
            for c in ["ADD", "DEL", "CHECK"] {
                let _ = Invocation::from_env(env(&[
                    ("CNI_COMMAND", c), ("CNI_CONTAINERID", &id), ("CNI_IFNAME", &ifname),
                    ("CNI_ARGS", &args), ("CNI_NETNS", &path),
                ]));
            }
        }
    }
}

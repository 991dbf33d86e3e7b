//! Kubernetes manifests for the lab: parsing, validation and Deployment
//! expansion.
//!
//! The lab accepts the same files `kubectl apply -f` does: YAML streams
//! (documents separated by `---`), JSON (one or more concatenated objects)
//! and `kind: List` wrappers. Objects are decoded into the real
//! [`k8s_openapi`] types, so a manifest that works here works against a real
//! API server, and the reverse. Only the kinds the lab can run are accepted
//! (Pod, Deployment, Service); anything else is an error naming the kind and
//! the document, never silently ignored.
//!
//! [`expand_pods`] then turns Pods and Deployments into the flat list of
//! [`LabPod`]s the lab starts, naming Deployment replicas the way the
//! Deployment and ReplicaSet controllers do
//! (`<deployment>-<pod-template-hash>-<suffix>`), but deterministically so
//! that re-applying the same manifest yields the same pod names.

pub mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The most replicas one Deployment may ask for in the lab. Every replica is
/// a network namespace and a process on one machine, so a typo such as
/// `replicas: 10000` is refused instead of exhausting the host.
pub const MAX_REPLICAS: i32 = 1024;

/// Kubernetes' `rand.SafeEncodeString` alphabet: no vowels (no words) and no
/// easily confused characters. Used for `pod-template-hash` and pod suffixes.
const SAFE_ALPHABET: &[u8; 27] = b"bcdfghjklmnpqrstvwxz2456789";

/// Label the ReplicaSet controller adds to every pod of a Deployment.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// One Kubernetes object the lab understands.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A bare `v1/Pod`.
    Pod(Box<Pod>),
    /// An `apps/v1/Deployment`, expanded into pods by [`expand_pods`].
    Deployment(Box<Deployment>),
    /// A `v1/Service`.
    Service(Box<Service>),
}

impl Object {
    /// The object's `kind`, as written in manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Pod(_) => "Pod",
            Object::Deployment(_) => "Deployment",
            Object::Service(_) => "Service",
        }
    }

    /// `metadata.name`; empty if the object was built without one (objects
    /// from [`parse_manifests`] always have one).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }

    /// `metadata.namespace`, or `"default"` when unset or empty.
    pub fn namespace(&self) -> &str {
        match self.metadata().namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => "default",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Pod(p) => &p.metadata,
            Object::Deployment(d) => &d.metadata,
            Object::Service(s) => &s.metadata,
        }
    }
}

/// Where in the input an object or a problem was found. Every field is
/// optional because objects can also be built in code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file name (or other label) the text came from.
    pub source: Option<String>,
    /// 1-based position of the document in the YAML stream (or of the value
    /// in a JSON stream), counting empty documents too, so it matches what
    /// a reader counts between `---` lines.
    pub document: Option<usize>,
    /// 0-based index inside a `kind: List` document's `items`.
    pub item: Option<usize>,
    /// 1-based line in the source, when known.
    pub line: Option<u64>,
}

impl fmt::Display for Origin {
    /// Renders as a prefix ending in `": "`, or nothing when nothing is known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(s) = &self.source {
            parts.push(s.clone());
        }
        if let Some(d) = self.document {
            parts.push(format!("document {d}"));
        }
        if let Some(i) = self.item {
            parts.push(format!("items[{i}]"));
        }
        if let Some(l) = self.line {
            parts.push(format!("line {l}"));
        }
        if parts.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", parts.join(", "))
        }
    }
}

/// Why a manifest could not be used. Every variant says where (file,
/// document, list item, line when known) and, for invalid objects, which
/// object and which field.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A manifest file or directory could not be read.
    #[error("reading manifests from {}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML or JSON.
    #[error("{at}not valid {format}: {message}")]
    Syntax {
        /// Where.
        at: Box<Origin>,
        /// `"YAML"` or `"JSON"`.
        format: &'static str,
        /// The parser's message.
        message: String,
    },
    /// A document is not a mapping (for example a bare list or string).
    #[error(
        "{at}expected a Kubernetes object (a mapping with apiVersion and kind), found {found}"
    )]
    NotAnObject {
        /// Where.
        at: Box<Origin>,
        /// What was found instead.
        found: &'static str,
    },
    /// A document has no `kind`.
    #[error("{at}missing field `kind`")]
    MissingKind {
        /// Where.
        at: Box<Origin>,
    },
    /// A document's `kind` is one the lab does not run.
    #[error(
        "{at}unsupported kind {kind:?} (apiVersion {api_version:?}): the lab understands Pod, Deployment, Service and List"
    )]
    UnknownKind {
        /// Where.
        at: Box<Origin>,
        /// The `kind` found.
        kind: String,
        /// The `apiVersion` found (empty if none).
        api_version: String,
    },
    /// The object does not decode into its Kubernetes type (wrong field
    /// type, wrong apiVersion for the kind, ...).
    #[error("{at}{kind} {name:?}: field `{field}`: {message}")]
    Decode {
        /// Where.
        at: Box<Origin>,
        /// The object's kind.
        kind: String,
        /// `metadata.name` if it could be read, else empty.
        name: String,
        /// Dotted path of the field that failed (`spec.replicas`), `.` for
        /// the object itself.
        field: String,
        /// The decoder's message.
        message: String,
    },
    /// The object has no `metadata.name` (`generateName` is not supported:
    /// the lab needs stable names).
    #[error("{at}{kind} without metadata.name (generateName is not supported by the lab)")]
    MissingName {
        /// Where.
        at: Box<Origin>,
        /// The object's kind.
        kind: String,
    },
    /// A field has a value Kubernetes would reject.
    #[error("{at}{kind} {namespace}/{name}: field `{field}`: {reason}")]
    Invalid {
        /// Where (empty when the object was not parsed from text).
        at: Box<Origin>,
        /// The object's kind.
        kind: &'static str,
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
        /// Dotted path of the field, Kubernetes style
        /// (`spec.template.spec.containers[0].ports[1].containerPort`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two objects of one kind share a namespace and name (after
    /// Deployment expansion, for pods).
    #[error("{kind} {namespace}/{name} is defined more than once")]
    Duplicate {
        /// The kind.
        kind: &'static str,
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
    },
}

/// One pod the lab must run, after expanding Deployments.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabPod {
    /// Pod name (for Deployment replicas: `<deployment>-<hash>-<suffix>`).
    pub name: String,
    /// Namespace (`"default"` when the manifest gave none).
    pub namespace: String,
    /// Pod labels; for Deployment replicas the template labels plus
    /// `pod-template-hash`.
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`, if the manifest pins the pod to a node.
    pub node_name: Option<String>,
    /// The owning Deployment's name, for replicas.
    pub owner: Option<String>,
    /// The pod's (regular, non-init) containers.
    pub containers: Vec<LabContainer>,
    /// `spec.terminationGracePeriodSeconds` as the manifest gives it
    /// (validated non-negative); the lab applies its own default and cap
    /// (`service::grace_period`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
}

/// One container of a [`LabPod`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabContainer {
    /// Container name.
    pub name: String,
    /// Declared container ports.
    pub ports: Vec<LabPort>,
    /// `command` followed by `args`, if either is given.
    pub command: Option<Vec<String>>,
}

/// One declared container port.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabPort {
    /// The port's name (what a Service `targetPort` may refer to).
    pub name: Option<String>,
    /// The port number, 1..=65535.
    pub container_port: u16,
    /// The protocol (`TCP` when the manifest gave none).
    pub protocol: Protocol,
}

/// An L4 protocol as Kubernetes spells it in manifests.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// `TCP` (the Kubernetes default).
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
}

impl Protocol {
    /// Parses a manifest `protocol` field; `None` means the default, TCP.
    /// Kubernetes is case-sensitive here, and so are we.
    pub fn from_manifest(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Ok(Protocol::Sctp),
            Some(other) => Err(format!(
                "unsupported protocol {other:?}: must be one of TCP, UDP, SCTP"
            )),
        }
    }

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses every object in `text`: a YAML stream (`---`-separated
/// documents), or JSON (one or more concatenated objects). `kind: List`
/// documents are expanded into their items; empty documents are skipped.
/// `source` names the input in error messages (usually the file name).
///
/// Every object is validated (names, ports, protocols, replicas, selector);
/// the first problem is returned with its document and field.
pub fn parse_manifests(text: &str, source: &str) -> Result<Vec<Object>, ManifestError> {
    let documents = split_documents(text, source)?;
    let mut objects = Vec::new();
    for doc in documents {
        match doc.value {
            Value::Null => continue,
            Value::Object(_) => {}
            other => {
                return Err(ManifestError::NotAnObject {
                    at: Box::new(doc.at),
                    found: json_type_name(&other),
                })
            }
        }
        let kind = doc.value.get("kind").and_then(Value::as_str).unwrap_or("");
        // `kind: List`, and the typed lists `kubectl get -o yaml` writes
        // (`PodList`, ...), carry their objects in `items`.
        let is_list =
            kind == "List" || (kind.ends_with("List") && doc.value.get("items").is_some());
        if is_list {
            let items = match doc.value.get("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items.clone(),
                Some(other) => {
                    return Err(ManifestError::Decode {
                        at: Box::new(doc.at),
                        kind: kind.to_owned(),
                        name: String::new(),
                        field: "items".to_owned(),
                        message: format!("must be a list, found {}", json_type_name(other)),
                    })
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let at = Origin {
                    item: Some(i),
                    ..doc.at.clone()
                };
                if !item.is_object() {
                    return Err(ManifestError::NotAnObject {
                        at: Box::new(at),
                        found: json_type_name(&item),
                    });
                }
                objects.push(decode_object(item, None, at)?);
            }
        } else {
            let yaml = doc.yaml_text.as_deref().map(|t| (t, doc.first_line));
            objects.push(decode_object(doc.value, yaml, doc.at)?);
        }
    }
    Ok(objects)
}

/// Loads manifests from a file, or from every `*.yaml`, `*.yml` and
/// `*.json` file directly inside a directory (not recursive, sorted by file
/// name, like `kubectl apply -f DIR`).
pub fn load_path(path: &Path) -> Result<Vec<Object>, ManifestError> {
    let io_err = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_dir() {
        return load_file(path);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let file = entry.path();
        let wanted = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if wanted && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        objects.extend(load_file(&file)?);
    }
    Ok(objects)
}

fn load_file(path: &Path) -> Result<Vec<Object>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_manifests(&text, &path.display().to_string())
}

/// Turns Pods and Deployments into the pods the lab runs (Services are
/// skipped). Pods are taken as they are; a Deployment becomes
/// `spec.replicas` (default 1) pods named like the Kubernetes controllers
/// name them, `<deployment>-<pod-template-hash>-<suffix>`, where the suffix
/// is derived from (deployment, hash, replica index) instead of being
/// random, so re-applying a manifest gives the same names and scaling up
/// keeps the existing ones. Objects are validated again (they may have been
/// built in code), and duplicate pod names are an error.
pub fn expand_pods(objects: &[Object]) -> Result<Vec<LabPod>, ManifestError> {
    let mut pods = Vec::new();
    for object in objects {
        validate(object).map_err(|v| v.into_error(object, Origin::default()))?;
        match object {
            Object::Pod(pod) => {
                // validate() guarantees the spec.
                let Some(spec) = pod.spec.as_ref() else {
                    continue;
                };
                pods.push(LabPod {
                    name: object.name().to_owned(),
                    namespace: object.namespace().to_owned(),
                    labels: pod.metadata.labels.clone().unwrap_or_default(),
                    node_name: non_empty(spec.node_name.as_deref()),
                    owner: None,
                    containers: lab_containers(spec),
                    termination_grace_period_seconds: spec.termination_grace_period_seconds,
                });
            }
            Object::Deployment(deployment) => {
                pods.extend(expand_deployment(object, deployment));
            }
            Object::Service(_) => {}
        }
    }
    let mut seen = BTreeSet::new();
    for pod in &pods {
        if !seen.insert((pod.namespace.as_str(), pod.name.as_str())) {
            return Err(ManifestError::Duplicate {
                kind: "Pod",
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            });
        }
    }
    Ok(pods)
}

/// The ports the lab's echo workload should serve for `pod`: every declared
/// TCP and UDP container port (sorted, deduplicated; SCTP is not served).
/// If no container declares a port and no container has a command, the pod
/// is assumed to run a web server image like most examples (`nginx`) and
/// gets TCP 80 and 443.
pub fn echo_ports(pod: &LabPod) -> (Vec<u16>, Vec<u16>) {
    let mut tcp = BTreeSet::new();
    let mut udp = BTreeSet::new();
    for port in pod.containers.iter().flat_map(|c| &c.ports) {
        match port.protocol {
            Protocol::Tcp => {
                tcp.insert(port.container_port);
            }
            Protocol::Udp => {
                udp.insert(port.container_port);
            }
            Protocol::Sctp => {}
        }
    }
    let any_declared = pod.containers.iter().any(|c| !c.ports.is_empty());
    let any_command = pod.containers.iter().any(|c| c.command.is_some());
    if !any_declared && !any_command {
        return (vec![80, 443], Vec::new());
    }
    (tcp.into_iter().collect(), udp.into_iter().collect())
}

// ---------------------------------------------------------------------------
// Document splitting and decoding

/// One object of a manifest text, not yet decoded into its type: for
/// sources that accept more kinds than the lab runs (the agent's file
/// source reads Nodes and EndpointSlices too).
#[derive(Debug, Clone)]
pub struct RawObject {
    pub at: Origin,
    pub value: Value,
}

/// Splits `text` as [`parse_manifests`] does (YAML stream or JSON,
/// `kind: List` expanded, empty documents skipped) without decoding the
/// objects. A syntax error is the whole text's error.
pub fn split_objects(text: &str, source: &str) -> Result<Vec<RawObject>, ManifestError> {
    let mut out = Vec::new();
    for doc in split_documents(text, source)? {
        let kind = doc.value.get("kind").and_then(Value::as_str).unwrap_or("");
        let is_list =
            kind == "List" || (kind.ends_with("List") && doc.value.get("items").is_some());
        match (&doc.value, is_list) {
            (Value::Null, _) => {}
            (_, true) => {
                let items = doc.value.get("items").and_then(Value::as_array);
                for (i, item) in items.into_iter().flatten().enumerate() {
                    out.push(RawObject {
                        at: Origin {
                            item: Some(i),
                            ..doc.at.clone()
                        },
                        value: item.clone(),
                    });
                }
            }
            _ => out.push(RawObject {
                at: doc.at,
                value: doc.value,
            }),
        }
    }
    Ok(out)
}

/// Decodes a Pod, Deployment or Service as [`parse_manifests`] does
/// (typed, validated; errors name the field).
pub fn decode_raw_object(raw: RawObject) -> Result<Object, ManifestError> {
    decode_object(raw.value, None, raw.at)
}

/// One document of the input, decoded into a generic value.
struct Document {
    at: Origin,
    value: Value,
    /// The document's own YAML text (for re-decoding with line numbers).
    yaml_text: Option<String>,
    /// Line of the file on which the document's text starts.
    first_line: u64,
}

fn split_documents(text: &str, source: &str) -> Result<Vec<Document>, ManifestError> {
    let trimmed = text.trim_start();
    let looks_json = trimmed.starts_with('{') || trimmed.starts_with('[');
    if looks_json {
        match split_json(text, source) {
            Ok(docs) => return Ok(docs),
            // A `.json` file gets JSON's error; anything else may still be
            // YAML flow style, which the YAML parser judges.
            Err(e) if source.ends_with(".json") => return Err(e),
            Err(_) => {}
        }
    }
    split_yaml(text, source)
}

fn split_json(text: &str, source: &str) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for (i, value) in stream.enumerate() {
        let at = Origin {
            source: Some(source.to_owned()),
            document: Some(i + 1),
            ..Origin::default()
        };
        match value {
            Ok(value) => docs.push(Document {
                at,
                value,
                yaml_text: None,
                first_line: 1,
            }),
            Err(e) => {
                return Err(ManifestError::Syntax {
                    at: Box::new(Origin {
                        line: Some(e.line() as u64),
                        ..at
                    }),
                    format: "JSON",
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(docs)
}

/// A YAML stream split at document markers. The split is ours (not the
/// parser's) so that an error can name the document it is in and empty
/// documents keep their place in the count.
struct YamlPiece {
    /// 1-based document number, `None` for a preamble of directives and
    /// comments before the first `---`.
    number: Option<usize>,
    first_line: u64,
    text: String,
    has_content: bool,
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

fn split_yaml_pieces(text: &str) -> Vec<YamlPiece> {
    let mut pieces: Vec<YamlPiece> = Vec::new();
    let mut current = YamlPiece {
        number: None,
        first_line: 1,
        text: String::new(),
        has_content: false,
    };
    let mut next_number = 1;
    let mut carried = String::new();
    for (idx, line) in text.lines().enumerate() {
        let line_no = idx as u64 + 1;
        let starts_doc = is_marker(line, "---");
        let ends_doc = is_marker(line, "...");
        if starts_doc || ends_doc {
            if current.number.is_some() || current.has_content {
                pieces.push(std::mem::replace(
                    &mut current,
                    YamlPiece {
                        number: None,
                        first_line: line_no,
                        text: String::new(),
                        has_content: false,
                    },
                ));
            } else {
                // A preamble of directives/comments belongs to the next
                // document (`%YAML 1.2` then `---`).
                carried.push_str(&current.text);
                current.text.clear();
                current.first_line = line_no;
            }
            if ends_doc {
                continue;
            }
            current.number = Some(next_number);
            next_number += 1;
            current.text.push_str(&carried);
            carried.clear();
            // Content after `---` on the same line is part of the document.
            let rest = line[3..].trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                current.has_content = true;
            }
            current.first_line = line_no;
            current.text.push_str(line);
            current.text.push('\n');
            continue;
        }
        let t = line.trim();
        let directive = current.text.is_empty() && t.starts_with('%');
        if !(t.is_empty() || t.starts_with('#') || directive) {
            if current.number.is_none() && !current.has_content {
                current.number = Some(next_number);
                next_number += 1;
                // Keep line numbers right: the piece starts where its text
                // starts, which may be a comment above.
            }
            current.has_content = true;
        }
        if current.text.is_empty() && current.number.is_none() {
            current.first_line = line_no;
        }
        current.text.push_str(line);
        current.text.push('\n');
    }
    if current.number.is_some() || current.has_content {
        pieces.push(current);
    }
    pieces
}

fn split_yaml(text: &str, source: &str) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    for piece in split_yaml_pieces(text) {
        let at = Origin {
            source: Some(source.to_owned()),
            document: piece.number,
            ..Origin::default()
        };
        if !piece.has_content {
            continue;
        }
        let value: Value = match serde_saphyr::from_str(&piece.text) {
            Ok(v) => v,
            Err(e) => {
                let line = e
                    .location()
                    .map(|l| l.line() + piece.first_line.saturating_sub(1));
                return Err(ManifestError::Syntax {
                    at: Box::new(Origin { line, ..at }),
                    format: "YAML",
                    message: yaml_message(&e.to_string()),
                });
            }
        };
        docs.push(Document {
            at,
            value,
            yaml_text: Some(piece.text),
            first_line: piece.first_line,
        });
    }
    Ok(docs)
}

/// The parser's message without what the origin already says: its
/// multi-line source snippet, and its `error: line N column M:` prefix
/// (counted within the document, not the file).
fn yaml_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((position, rest)) if position.starts_with("line ") => rest.to_owned(),
        _ => first.to_owned(),
    }
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// `yaml` is the document's own text and the file line it starts on, used
/// to find the line of a decoding error.
fn decode_object(
    value: Value,
    yaml: Option<(&str, u64)>,
    at: Origin,
) -> Result<Object, ManifestError> {
    let kind = match value.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => return Err(ManifestError::MissingKind { at: Box::new(at) }),
    };
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let object = match kind.as_str() {
        "Pod" => Object::Pod(decode_typed(value, yaml, &at, &kind, &name)?),
        "Deployment" => Object::Deployment(decode_typed(value, yaml, &at, &kind, &name)?),
        "Service" => Object::Service(decode_typed(value, yaml, &at, &kind, &name)?),
        _ => {
            let api_version = value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            return Err(ManifestError::UnknownKind {
                at: Box::new(at),
                kind,
                api_version,
            });
        }
    };
    if object.name().is_empty() {
        return Err(ManifestError::MissingName {
            at: Box::new(at),
            kind,
        });
    }
    validate(&object).map_err(|v| v.into_error(&object, at))?;
    Ok(object)
}

fn decode_typed<T: DeserializeOwned>(
    value: Value,
    yaml: Option<(&str, u64)>,
    at: &Origin,
    kind: &str,
    name: &str,
) -> Result<Box<T>, ManifestError> {
    serde_path_to_error::deserialize::<_, T>(value)
        .map(Box::new)
        .map_err(|e| {
            // The generic value has no positions; decoding the document's
            // own text again finds the line of the offending field.
            let line = yaml.and_then(|(text, first_line)| {
                let err = serde_saphyr::from_str::<T>(text).err()?;
                Some(err.location()?.line() + first_line.saturating_sub(1))
            });
            ManifestError::Decode {
                at: Box::new(Origin {
                    line: line.or(at.line),
                    ..at.clone()
                }),
                kind: kind.to_owned(),
                name: name.to_owned(),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            }
        })
}

// ---------------------------------------------------------------------------
// Validation

/// One invalid field, before it is tied to an object.
struct Violation {
    field: String,
    reason: String,
}

impl Violation {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Violation {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn into_error(self, object: &Object, at: Origin) -> ManifestError {
        ManifestError::Invalid {
            at: Box::new(at),
            kind: object.kind(),
            namespace: object.namespace().to_owned(),
            name: object.name().to_owned(),
            field: self.field,
            reason: self.reason,
        }
    }
}

fn validate(object: &Object) -> Result<(), Violation> {
    let meta = object.metadata();
    match object {
        // Kubernetes: Service names are DNS-1035 labels, because they
        // become DNS labels (`<svc>.<ns>.svc`).
        Object::Service(_) => check_dns1035_label("metadata.name", object.name())?,
        _ => check_dns1123_subdomain("metadata.name", object.name())?,
    }
    if let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        check_dns1123_label("metadata.namespace", ns)?;
    }
    match object {
        Object::Pod(pod) => {
            let spec = pod
                .spec
                .as_ref()
                .ok_or_else(|| Violation::new("spec", "missing: a Pod needs a spec"))?;
            validate_pod_spec("spec", spec)
        }
        Object::Deployment(d) => validate_deployment(d),
        Object::Service(s) => validate_service(object, s),
    }
}

fn validate_deployment(d: &Deployment) -> Result<(), Violation> {
    let spec = d
        .spec
        .as_ref()
        .ok_or_else(|| Violation::new("spec", "missing: a Deployment needs a spec"))?;
    let replicas = spec.replicas.unwrap_or(1);
    if replicas < 0 {
        return Err(Violation::new(
            "spec.replicas",
            format!("{replicas} is negative"),
        ));
    }
    if replicas > MAX_REPLICAS {
        return Err(Violation::new(
            "spec.replicas",
            format!("{replicas} is more than the lab runs ({MAX_REPLICAS})"),
        ));
    }
    let pod_spec = spec.template.spec.as_ref().ok_or_else(|| {
        Violation::new(
            "spec.template.spec",
            "missing: a Deployment needs a pod template",
        )
    })?;
    validate_pod_spec("spec.template.spec", pod_spec)?;
    let empty = BTreeMap::new();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .unwrap_or(&empty);
    let selector_empty = spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.is_empty())
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    if selector_empty {
        return Err(Violation::new(
            "spec.selector",
            "empty: a Deployment's selector must select its template's labels",
        ));
    }
    selector_matches(&spec.selector, labels)
        .map_err(|reason| Violation::new("spec.selector", reason))?;
    Ok(())
}

/// Kubernetes rejects a Deployment whose selector does not select its own
/// pod template; so do we.
fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<(), String> {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Err(format!(
                "matchLabels {k}={v} does not match spec.template.metadata.labels"
            ));
        }
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let values = req.values.as_deref().unwrap_or(&[]);
        let have = labels.get(&req.key);
        let ok = match req.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => have.is_none_or(|h| !values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => {
                return Err(format!(
                    "matchExpressions[{i}].operator {other:?}: must be In, NotIn, Exists or DoesNotExist"
                ))
            }
        };
        if !ok {
            return Err(format!(
                "matchExpressions[{i}] ({} {}) does not match spec.template.metadata.labels",
                req.key, req.operator
            ));
        }
    }
    Ok(())
}

fn validate_pod_spec(prefix: &str, spec: &PodSpec) -> Result<(), Violation> {
    if spec.containers.is_empty() {
        return Err(Violation::new(
            format!("{prefix}.containers"),
            "empty: a pod needs at least one container",
        ));
    }
    if let Some(grace) = spec.termination_grace_period_seconds {
        if grace < 0 {
            return Err(Violation::new(
                format!("{prefix}.terminationGracePeriodSeconds"),
                format!("{grace} is negative"),
            ));
        }
    }
    let mut names = BTreeSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let field = format!("{prefix}.containers[{i}]");
        check_dns1123_label(&format!("{field}.name"), &c.name)?;
        if !names.insert(c.name.as_str()) {
            return Err(Violation::new(
                format!("{field}.name"),
                format!("duplicate container name {:?}", c.name),
            ));
        }
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("{field}.ports[{j}]");
            check_port(&format!("{field}.containerPort"), p.container_port)?;
            Protocol::from_manifest(p.protocol.as_deref())
                .map_err(|r| Violation::new(format!("{field}.protocol"), r))?;
            if let Some(name) = &p.name {
                check_port_name(&format!("{field}.name"), name)?;
            }
        }
    }
    Ok(())
}

/// A Service is checked by the lab's API server half
/// ([`service::ServiceRequest::from_manifest`]), which the lab also uses to
/// apply it, so parsing and applying agree on what is valid.
fn validate_service(object: &Object, s: &Service) -> Result<(), Violation> {
    service::ServiceRequest::from_manifest(s, object.namespace(), object.name(), "")
        .map(|_| ())
        .map_err(|e| Violation::new(e.field, e.reason))
}

fn check_port(field: &str, port: i32) -> Result<(), Violation> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(Violation::new(
            field,
            format!("{port} is not a valid port number (1..=65535)"),
        ))
    }
}

/// IANA service name (RFC 6335 §5.1), what Kubernetes requires of port
/// names: at most 15 of `a-z0-9-`, at least one letter, no leading,
/// trailing or doubled hyphen.
fn check_port_name(field: &str, name: &str) -> Result<(), Violation> {
    if is_port_name(name) {
        Ok(())
    } else {
        Err(Violation::new(
            field,
            format!(
                "{name:?} is not a valid port name (at most 15 of a-z, 0-9 and '-', with at least one letter, RFC 6335)"
            ),
        ))
    }
}

/// Whether `name` is an IANA service name (RFC 6335 §5.1): what Kubernetes
/// requires of container port names and named target ports.
pub(crate) fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Whether `s` is a DNS-1123 label (what Service port names must be).
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn check_dns1123_label(field: &str, s: &str) -> Result<(), Violation> {
    if is_dns1123_label(s) {
        Ok(())
    } else {
        Err(Violation::new(
            field,
            format!("{s:?} is not a valid DNS-1123 label (at most 63 of a-z, 0-9 and '-', starting and ending alphanumeric)"),
        ))
    }
}

fn check_dns1035_label(field: &str, s: &str) -> Result<(), Violation> {
    if is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase() {
        Ok(())
    } else {
        Err(Violation::new(
            field,
            format!("{s:?} is not a valid DNS-1035 label (at most 63 of a-z, 0-9 and '-', starting with a letter, ending alphanumeric)"),
        ))
    }
}

fn check_dns1123_subdomain(field: &str, s: &str) -> Result<(), Violation> {
    if !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label) {
        Ok(())
    } else {
        Err(Violation::new(
            field,
            format!("{s:?} is not a valid DNS-1123 subdomain (at most 253 of a-z, 0-9, '-' and '.', each part starting and ending alphanumeric)"),
        ))
    }
}

// ---------------------------------------------------------------------------
// Deployment expansion

fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_owned)
}

fn lab_containers(spec: &PodSpec) -> Vec<LabContainer> {
    spec.containers.iter().map(lab_container).collect()
}

fn lab_container(c: &Container) -> LabContainer {
    let ports = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            // Validated before: both conversions succeed.
            Some(LabPort {
                name: non_empty(p.name.as_deref()),
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: Protocol::from_manifest(p.protocol.as_deref()).ok()?,
            })
        })
        .collect();
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    argv.extend(c.args.iter().flatten().cloned());
    LabContainer {
        name: c.name.clone(),
        ports,
        command: if c.command.is_none() && c.args.is_none() {
            None
        } else {
            Some(argv)
        },
    }
}

/// FNV-1a, 32 bit (the hash Kubernetes' `ComputeHash` uses).
fn fnv1a32(data: &[u8], mut h: u32) -> u32 {
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

const FNV32_OFFSET: u32 = 0x811c_9dc5;

/// Kubernetes' `rand.SafeEncodeString`: every byte mapped into the safe
/// alphabet.
fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// The `pod-template-hash` of a Deployment's template, shaped like the
/// ReplicaSet controller's `ComputeHash`: FNV-32a over the template (here
/// its JSON, which k8s-openapi serialises deterministically), plus the
/// collision count if any, then the decimal hash safe-encoded (up to 10
/// characters).
pub fn pod_template_hash(deployment: &Deployment) -> String {
    let Some(spec) = deployment.spec.as_ref() else {
        return safe_encode(&FNV32_OFFSET.to_string());
    };
    let json = serde_json::to_vec(&spec.template).unwrap_or_default();
    let mut h = fnv1a32(&json, FNV32_OFFSET);
    if let Some(count) = deployment.status.as_ref().and_then(|s| s.collision_count) {
        h = fnv1a32(&count.to_le_bytes(), h);
    }
    safe_encode(&h.to_string())
}

/// Five safe-alphabet characters from (deployment, hash, index, salt);
/// the controller picks them at random, we derive them so names are stable.
fn replica_suffix(deployment: &str, hash: &str, index: i32, salt: u32) -> String {
    stable_suffix(&[
        deployment.as_bytes(),
        b"\0",
        hash.as_bytes(),
        b"\0",
        &index.to_le_bytes(),
        &salt.to_le_bytes(),
    ])
}

/// Five safe-alphabet characters derived from `parts` (FNV-1a, 64 bit):
/// where a Kubernetes controller appends five random characters to a
/// generated name, the lab derives them, so names are stable across
/// commands.
pub fn stable_suffix(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let n = SAFE_ALPHABET.len() as u64;
    (0..5)
        .map(|_| {
            let c = SAFE_ALPHABET[(h % n) as usize];
            h /= n;
            char::from(c)
        })
        .collect()
}

fn expand_deployment(object: &Object, d: &Deployment) -> Vec<LabPod> {
    let Some(spec) = d.spec.as_ref() else {
        return Vec::new();
    };
    let Some(pod_spec) = spec.template.spec.as_ref() else {
        return Vec::new();
    };
    let name = object.name();
    let hash = pod_template_hash(d);
    let mut labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.to_owned(), hash.clone());
    let containers = lab_containers(pod_spec);
    let mut used = BTreeSet::new();
    let mut pods = Vec::new();
    for index in 0..spec.replicas.unwrap_or(1).max(0) {
        let mut salt = 0;
        let suffix = loop {
            let s = replica_suffix(name, &hash, index, salt);
            if used.insert(s.clone()) {
                break s;
            }
            salt += 1;
        };
        pods.push(LabPod {
            name: format!("{name}-{hash}-{suffix}"),
            namespace: object.namespace().to_owned(),
            labels: labels.clone(),
            node_name: non_empty(pod_spec.node_name.as_deref()),
            owner: Some(name.to_owned()),
            containers: containers.clone(),
            termination_grace_period_seconds: pod_spec.termination_grace_period_seconds,
        });
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &str = r#"
# a comment before the first document
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {app: client}
spec:
  nodeName: node-1
  containers:
  - name: c
    image: busybox
    command: ["sleep"]
    args: ["3600"]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web, tier: front}
    spec:
      containers:
      - name: nginx
        image: nginx
        ports:
        - name: http
          containerPort: 80
        - name: dns
          containerPort: 53
          protocol: UDP
---
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: http
"#;

    fn parse(text: &str) -> Result<Vec<Object>, ManifestError> {
        parse_manifests(text, "test.yaml")
    }

    #[test]
    fn multi_document_pod_deployment_service() {
        let objects = parse(MULTI).unwrap();
        let kinds: Vec<_> = objects
            .iter()
            .map(|o| (o.kind(), o.namespace(), o.name()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("Pod", "default", "client"),
                ("Deployment", "shop", "web"),
                ("Service", "shop", "web"),
            ]
        );
        let pods = expand_pods(&objects).unwrap();
        assert_eq!(pods.len(), 4);
        let client = &pods[0];
        assert_eq!(client.node_name.as_deref(), Some("node-1"));
        assert_eq!(client.owner, None);
        assert_eq!(
            client.containers[0].command,
            Some(vec!["sleep".to_owned(), "3600".to_owned()])
        );
        assert_eq!(echo_ports(client), (vec![], vec![]));

        let web = &pods[1];
        assert_eq!(web.owner.as_deref(), Some("web"));
        assert_eq!(web.namespace, "shop");
        assert_eq!(web.labels["app"], "web");
        assert_eq!(web.labels["tier"], "front");
        let hash = &web.labels[POD_TEMPLATE_HASH_LABEL];
        assert_eq!(
            web.containers[0].ports,
            [
                LabPort {
                    name: Some("http".into()),
                    container_port: 80,
                    protocol: Protocol::Tcp
                },
                LabPort {
                    name: Some("dns".into()),
                    container_port: 53,
                    protocol: Protocol::Udp
                },
            ]
        );
        assert_eq!(echo_ports(web), (vec![80], vec![53]));
        // Name shape: web-<hash>-<5 safe chars>.
        for pod in &pods[1..] {
            let rest = pod.name.strip_prefix("web-").unwrap();
            let (h, suffix) = rest.rsplit_once('-').unwrap();
            assert_eq!(h, hash);
            assert!(!h.is_empty() && h.len() <= 10);
            assert_eq!(suffix.len(), 5);
            assert!(h
                .bytes()
                .chain(suffix.bytes())
                .all(|b| SAFE_ALPHABET.contains(&b)));
        }
        let names: BTreeSet<_> = pods.iter().map(|p| &p.name).collect();
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn deployment_names_are_deterministic_and_track_the_template() {
        let a = expand_pods(&parse(MULTI).unwrap()).unwrap();
        let b = expand_pods(&parse(MULTI).unwrap()).unwrap();
        assert_eq!(a, b);
        // Scaling up keeps the existing names.
        let scaled = MULTI.replace("replicas: 3", "replicas: 5");
        let c = expand_pods(&parse(&scaled).unwrap()).unwrap();
        assert_eq!(&c[..4], &a[..]);
        assert_eq!(c.len(), 6);
        // Changing the template changes the hash.
        let changed = MULTI.replace("image: nginx", "image: nginx:1.27");
        let d = expand_pods(&parse(&changed).unwrap()).unwrap();
        assert_ne!(
            d[1].labels[POD_TEMPLATE_HASH_LABEL],
            a[1].labels[POD_TEMPLATE_HASH_LABEL]
        );
    }

    #[test]
    fn replicas_zero_gives_no_pods_and_negative_is_rejected() {
        let zero = MULTI.replace("replicas: 3", "replicas: 0");
        let pods = expand_pods(&parse(&zero).unwrap()).unwrap();
        assert_eq!(pods.len(), 1);
        let neg = MULTI.replace("replicas: 3", "replicas: -2");
        let err = parse(&neg).unwrap_err().to_string();
        assert!(err.contains("document 2"), "{err}");
        assert!(err.contains("Deployment shop/web"), "{err}");
        assert!(err.contains("spec.replicas"), "{err}");
    }

    #[test]
    fn list_kind_is_expanded() {
        let json = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"x"}]}},
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"ports":[{"port":53,"protocol":"UDP"}]}}
        ]}"#;
        let objects = parse_manifests(json, "list.json").unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].kind(), "Pod");
        assert_eq!(objects[1].kind(), "Service");
        let pods = expand_pods(&objects).unwrap();
        assert_eq!(echo_ports(&pods[0]), (vec![80, 443], vec![]));

        let yaml = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: x}\n";
        let err = parse(yaml).unwrap_err().to_string();
        assert!(err.contains("document 1, items[0]"), "{err}");
        assert!(err.contains("\"Secret\""), "{err}");
    }

    #[test]
    fn bad_container_port_names_object_and_field() {
        let bad = MULTI.replace("containerPort: 80", "containerPort: 70000");
        let err = parse(&bad).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, ManifestError::Invalid { field, .. }
                if field == "spec.template.spec.containers[0].ports[0].containerPort"),
            "{msg}"
        );
        assert!(msg.contains("test.yaml, document 2"), "{msg}");
        assert!(msg.contains("70000"), "{msg}");
    }

    #[test]
    fn bad_protocol_and_names() {
        let bad = MULTI.replace("protocol: UDP", "protocol: udp");
        let msg = parse(&bad).unwrap_err().to_string();
        assert!(msg.contains("ports[1].protocol"), "{msg}");
        let bad = MULTI.replace("name: client", "name: Client_1");
        let msg = parse(&bad).unwrap_err().to_string();
        assert!(
            msg.contains("metadata.name") && msg.contains("DNS-1123"),
            "{msg}"
        );
        let bad = MULTI.replace("matchLabels: {app: web}", "matchLabels: {app: other}");
        let msg = parse(&bad).unwrap_err().to_string();
        assert!(msg.contains("spec.selector"), "{msg}");
    }

    #[test]
    fn unknown_kind_names_kind_and_document() {
        let text =
            format!("{MULTI}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg}}\n");
        let err = parse(&text).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ManifestError::UnknownKind { .. }), "{msg}");
        assert!(msg.contains("document 5"), "{msg}");
        assert!(msg.contains("ConfigMap"), "{msg}");
    }

    #[test]
    fn bad_yaml_names_the_document() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n---\nkind: Pod\n  metadata: [unclosed\n";
        let err = parse(text).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ManifestError::Syntax { .. }), "{msg}");
        assert!(msg.contains("test.yaml, document 2, line 7"), "{msg}");
        assert!(!msg.contains("error: line"), "{msg}");
    }

    #[test]
    fn wrong_field_type_is_a_decode_error() {
        let bad = MULTI.replace("replicas: 3", "replicas: three");
        let msg = parse(&bad).unwrap_err().to_string();
        assert!(
            msg.contains("document 2, line 22")
                && msg.contains("Deployment \"web\"")
                && msg.contains("field `spec.replicas`"),
            "{msg}"
        );
    }

    #[test]
    fn missing_name_and_kind() {
        let msg = parse("apiVersion: v1\nkind: Pod\nmetadata: {generateName: x-}\nspec: {containers: [{name: c}]}\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("without metadata.name"), "{msg}");
        let err = parse("apiVersion: v1\nmetadata: {name: x}\n").unwrap_err();
        assert!(matches!(err, ManifestError::MissingKind { .. }));
        let err = parse("- a\n- b\n").unwrap_err();
        assert!(matches!(err, ManifestError::NotAnObject { .. }));
    }

    #[test]
    fn empty_input_and_empty_documents() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("---\n# nothing\n---\n...\n").unwrap().is_empty());
        assert!(parse("%YAML 1.2\n---\n~\n").unwrap().is_empty());
    }

    #[test]
    fn json_stream_and_directory_loading() {
        let dir = std::env::temp_dir().join(format!("pswt-{}-manifests", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pod = |n: &str| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{n}"}},"spec":{{"containers":[{{"name":"c"}}]}}}}"#
            )
        };
        std::fs::write(dir.join("b.json"), format!("{}\n{}", pod("b1"), pod("b2"))).unwrap();
        std::fs::write(dir.join("a.yaml"), MULTI).unwrap();
        std::fs::write(dir.join("ignored.txt"), "not a manifest").unwrap();
        let objects = load_path(&dir);
        let single = load_path(&dir.join("b.json"));
        let missing = load_path(&dir.join("nope.yaml"));
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<_> = objects
            .unwrap()
            .iter()
            .map(|o| o.name().to_owned())
            .collect();
        assert_eq!(names, ["client", "web", "web", "b1", "b2"]);
        assert_eq!(single.unwrap().len(), 2);
        assert!(matches!(missing, Err(ManifestError::Io { .. })));
    }

    #[test]
    fn duplicate_pods_are_rejected() {
        let text =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n";
        let twice = format!("{text}---\n{text}");
        let err = expand_pods(&parse(&twice).unwrap()).unwrap_err();
        assert!(matches!(err, ManifestError::Duplicate { .. }), "{err}");
    }

    #[test]
    fn safe_encode_matches_kubernetes_shape() {
        // Kubernetes: SafeEncodeString(fmt.Sprint(uint32)) of the digits.
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        let hash = pod_template_hash(&Deployment::default());
        assert!(hash.len() <= 10 && hash.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
    }
}

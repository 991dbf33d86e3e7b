//! What translation reports about objects it could not (fully) use.
//!
//! Translation never fails as a whole: an object that is invalid, or
//! valid but of no use to the switch, is left out (or only its bad part
//! is), and a [`Problem`] says which object, which field, why, and what
//! was done about it. The agent logs these and keeps them as its status.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

/// The kind of a Kubernetes object translation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ObjectKind {
    Node,
    Pod,
    Service,
    EndpointSlice,
}

impl ObjectKind {
    /// The Kubernetes spelling (`kind:`).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Node => "Node",
            ObjectKind::Pod => "Pod",
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which object a problem is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    /// `None` for cluster-scoped objects (Nodes).
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn node(name: &str) -> Self {
        ObjectRef {
            kind: ObjectKind::Node,
            namespace: None,
            name: name.to_owned(),
        }
    }

    pub fn namespaced(kind: ObjectKind, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind,
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// What translation did with an object it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Valid, but nothing for the switch (ExternalName, headless, IPv6
    /// only, a node without a pod CIDR yet): left out, not an error.
    Skipped,
    /// Invalid: left out whole.
    Rejected,
    /// The named part (a port, an address, an endpoint) was left out; the
    /// rest of the object applies.
    PartlyApplied,
    /// Applied as it is, but probably not what was meant.
    Warning,
}

impl Outcome {
    /// What the outcome means, as the end of a log line.
    pub fn describe(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::Rejected => "left out",
            Outcome::PartlyApplied => "this part left out, the rest applied",
            Outcome::Warning => "applied",
        }
    }
}

/// Why an object (or a part of it) was reported.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub enum Reason {
    #[error("the object has no metadata.name")]
    MissingName,
    #[error("the object has no spec")]
    MissingSpec,
    #[error("{value:?} is not a valid CIDR: {detail}")]
    InvalidCidr { value: String, detail: String },
    #[error("{value:?} is not a valid IP address")]
    InvalidIp { value: String },
    #[error("no IPv4 InternalIP in status.addresses")]
    NoInternalIp,
    #[error("no IPv4 pod CIDR assigned yet")]
    NoIpv4PodCidr,
    #[error("{ip} is not a usable underlay address of another node ({why})")]
    UnusableUnderlay { ip: Ipv4Addr, why: &'static str },
    #[error("pod CIDR {cidr} overlaps the pod CIDR of {owner}")]
    PodCidrOverlap { cidr: IpNet, owner: String },
    #[error("{value:?} is not a unicast MAC address: {detail}")]
    InvalidVtepMac { value: String, detail: String },
    #[error("annotation {annotation}: {detail}")]
    InvalidAnnotation {
        annotation: &'static str,
        detail: String,
    },
    #[error("type ExternalName is a DNS alias, with nothing for the datapath")]
    ExternalName,
    #[error("headless (clusterIP None): clients reach the pods directly")]
    Headless,
    #[error("only IPv6 cluster IPs; the switch serves IPv4 Services for now")]
    Ipv6Only,
    #[error("{value:?} is not a Service type (ClusterIP, NodePort, LoadBalancer, ExternalName)")]
    UnknownServiceType { value: String },
    #[error("no cluster IP allocated")]
    NoClusterIp,
    #[error("cluster IP {ip} is outside the service CIDRs {cidrs:?}")]
    ClusterIpOutsideServiceCidrs { ip: Ipv4Addr, cidrs: Vec<IpNet> },
    #[error("{value} is not a valid port number (1-65535)")]
    PortOutOfRange { value: i64 },
    #[error("protocol {value:?} is not supported (TCP and UDP only)")]
    UnsupportedProtocol { value: String },
    #[error("port {port}/{protocol} is listed twice")]
    DuplicatePort { port: u16, protocol: &'static str },
    #[error("NodePort {port} is outside the NodePort range {lo}-{hi}")]
    NodePortOutsideRange { port: u16, lo: u16, hi: u16 },
    #[error("no usable port")]
    NoUsablePorts,
    #[error("{ip} may not be an external IP ({why})")]
    UnusableExternalIp { ip: Ipv4Addr, why: &'static str },
    #[error("{value:?} is not a session affinity (None, ClientIP)")]
    UnknownSessionAffinity { value: String },
    #[error("session affinity timeout {value} is outside 1-86400 seconds")]
    InvalidAffinityTimeout { value: i64 },
    #[error("{value:?} is not a traffic policy (Cluster, Local)")]
    UnknownTrafficPolicy { value: String },
    #[error("the selector matches no pods: the Service has no endpoints")]
    SelectorMatchesNothing,
    #[error("frontend {frontend} already belongs to Service {owner}")]
    FrontendTaken { frontend: String, owner: String },
    #[error("the endpoint has no address")]
    NoEndpointAddress,
    #[error("pod IP {ip} is outside this node's pod CIDRs {cidrs:?}")]
    PodIpOutsidePodCidr { ip: Ipv4Addr, cidrs: Vec<IpNet> },
    #[error("this node's Node object was not found")]
    LocalNodeMissing,
}

/// One reported object, or part of one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Problem {
    pub object: ObjectRef,
    /// The field, Kubernetes style (`spec.ports[1].protocol`), when the
    /// problem is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(serialize_with = "display")]
    pub reason: Reason,
    pub outcome: Outcome,
}

fn display<S: Serializer>(reason: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(reason)
}

impl Problem {
    pub fn new(
        object: &ObjectRef,
        field: Option<String>,
        reason: Reason,
        outcome: Outcome,
    ) -> Self {
        Problem {
            object: object.clone(),
            field,
            reason,
            outcome,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.object)?;
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {} ({})", self.reason, self.outcome.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_reads_as_one_line_and_serializes_its_reason_as_text() {
        let p = Problem::new(
            &ObjectRef::namespaced(ObjectKind::Service, "shop", "web"),
            Some("spec.ports[1].protocol".into()),
            Reason::UnsupportedProtocol {
                value: "SCTP".into(),
            },
            Outcome::PartlyApplied,
        );
        assert_eq!(
            p.to_string(),
            "Service shop/web: spec.ports[1].protocol: protocol \"SCTP\" is not supported \
             (TCP and UDP only) (this part left out, the rest applied)"
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["object"]["kind"], "Service");
        assert_eq!(json["outcome"], "partly_applied");
        assert!(json["reason"].as_str().unwrap().contains("SCTP"));
    }
}

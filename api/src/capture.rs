//! Packet captures as the control API asks for and reports them: where on
//! a port, which frames (the filter language, evaluated by the switch's
//! `capture::filter`), and the totals.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The largest snaplen accepted, and the default: whole frames, GSO
/// superframes included.
pub const MAX_SNAPLEN: u32 = 262_144;
/// Frames a capture keeps when no count is given.
pub const DEFAULT_MAX_FRAMES: u64 = 1000;
/// How long a capture runs when no duration is given.
pub const DEFAULT_DURATION_MS: u64 = 10_000;
/// Upper bounds of a request's count and duration.
pub const MAX_FRAMES_LIMIT: u64 = 10_000_000;
pub const MAX_DURATION_MS: u64 = 3_600_000;
/// Where on a port frames are taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapturePoint {
    /// Frames the switch reads from the port.
    Ingress,
    /// Frames the switch writes to the port.
    Egress,
    /// Both, in one capture.
    #[default]
    Both,
}

impl std::str::FromStr for CapturePoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ingress" => Ok(CapturePoint::Ingress),
            "egress" => Ok(CapturePoint::Egress),
            "both" => Ok(CapturePoint::Both),
            other => Err(format!("{other:?} is not ingress, egress or both")),
        }
    }
}

/// Which way a captured frame went, seen from the switch's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Read by the switch (from a pod's tap, the host port or the underlay).
    Ingress,
    /// Written by the switch.
    Egress,
}

/// The totals of a capture so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureCounts {
    /// Frames put in the ring.
    pub captured: u64,
    /// Matching frames lost because the ring was full.
    pub dropped: u64,
    /// Frames seen at the capture point that the filter did not select.
    pub filtered: u64,
}

/// The protocols `proto` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureProto {
    Tcp,
    Udp,
    Icmp,
    Arp,
}

impl std::fmt::Display for CaptureProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaptureProto::Tcp => "tcp",
            CaptureProto::Udp => "udp",
            CaptureProto::Icmp => "icmp",
            CaptureProto::Arp => "arp",
        })
    }
}

impl std::str::FromStr for CaptureProto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(CaptureProto::Tcp),
            "udp" => Ok(CaptureProto::Udp),
            "icmp" => Ok(CaptureProto::Icmp),
            "arp" => Ok(CaptureProto::Arp),
            other => Err(format!("{other:?} is not tcp, udp, icmp or arp")),
        }
    }
}

/// Which frames a capture keeps. See the module docs for the language.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<CaptureProto>,
    /// Source or destination IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Ipv4Addr>,
    /// Source or destination TCP/UDP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl CaptureFilter {
    /// Checks that the conditions can hold together: a port needs TCP or
    /// UDP. Returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let (Some(p @ (CaptureProto::Icmp | CaptureProto::Arp)), Some(_)) =
            (self.proto, self.port)
        {
            return Err((
                "filter.port",
                format!("a port never matches proto {p}; use tcp, udp or no proto"),
            ));
        }
        Ok(())
    }

    /// Whether the filter has no condition (every frame matches).
    pub fn is_empty(&self) -> bool {
        self.proto.is_none() && self.host.is_none() && self.port.is_none()
    }

    /// A one-line description, in tcpdump's words (`icmp and host 10.244.1.2`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.proto {
            parts.push(p.to_string());
        }
        if let Some(h) = self.host {
            parts.push(format!("host {h}"));
        }
        if let Some(p) = self.port {
            parts.push(format!("port {p}"));
        }
        parts.join(" and ")
    }
}

//! A small synchronous rtnetlink client for configuring links, addresses,
//! routes and neighbours, used to wire pod ports (taps, veths) into their
//! namespaces without running `ip`.
//!
//! Each [`Netlink`] owns a tokio current-thread runtime and the rtnetlink
//! connection task; every method blocks on one request. Methods must not be
//! called from inside an async runtime (they return
//! [`NetlinkError::InsideAsyncRuntime`] instead of panicking); use
//! `spawn_blocking` there. A `Netlink` is `Send + Sync` and may be dropped
//! anywhere.
//!
//! A netlink socket stays bound to the network namespace it was created in.
//! [`Netlink::in_netns`] creates its socket on a thread inside that
//! namespace, so afterwards every request applies there, from any thread.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::netns::{self, NetnsError};

/// Longest interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Why a netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket or its runtime could not be created.
    #[error("cannot open a netlink socket in {netns}")]
    Socket {
        /// The namespace the socket was meant for.
        netns: NetnsLabel,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The namespace for the socket could not be entered.
    #[error("cannot open a netlink socket in another namespace")]
    Netns(#[from] NetnsError),
    /// The kernel (or the connection) rejected a request.
    #[error("netlink {op} of {target} in {netns} failed")]
    Request {
        /// The operation (`set mtu`, `add route`, ...).
        op: &'static str,
        /// What it applied to (`link 7`, `link "eth0"`, `route 0.0.0.0/0`).
        target: String,
        /// The namespace of the socket.
        netns: NetnsLabel,
        /// The errno from the kernel, or a description of the protocol error.
        #[source]
        source: io::Error,
    },
    /// A link the operation needs does not exist.
    #[error("netlink {op}: no link {name:?} in {netns}")]
    LinkNotFound {
        /// The operation.
        op: &'static str,
        /// The missing link.
        name: String,
        /// The namespace of the socket.
        netns: NetnsLabel,
    },
    /// The kernel's answer lacked an attribute the operation reads.
    #[error("netlink {op} of link {index} in {netns}: {problem}")]
    BadReply {
        /// The operation.
        op: &'static str,
        /// The link index.
        index: u32,
        /// The namespace of the socket.
        netns: NetnsLabel,
        /// What was missing or malformed.
        problem: &'static str,
    },
    /// An argument was rejected before anything was sent.
    #[error("netlink {op}: invalid {field} {value:?}: {reason}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// Which argument.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The connection has been shut down (only seen while dropping).
    #[error("netlink {op}: the connection is closed")]
    Closed {
        /// The operation.
        op: &'static str,
    },
    /// A blocking method was called on a thread that runs an async runtime.
    #[error("netlink {op}: blocking netlink call from inside an async runtime")]
    InsideAsyncRuntime {
        /// The operation.
        op: &'static str,
    },
}

impl NetlinkError {
    /// The errno the kernel answered with, if this is a kernel rejection
    /// (for example `libc::EEXIST` for an address that is already there).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } | Self::Socket { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Which network namespace a [`Netlink`] speaks to, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsLabel {
    /// The namespace of the thread that created the socket.
    Current,
    /// A namespace file.
    Path(PathBuf),
}

impl fmt::Display for NetnsLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Current => f.write_str("the current netns"),
            Self::Path(path) => write!(f, "netns {}", path.display()),
        }
    }
}

/// A blocking rtnetlink connection bound to one network namespace.
pub struct Netlink {
    /// Always `Some` until `Drop` takes it.
    runtime: Option<tokio::runtime::Runtime>,
    handle: rtnetlink::Handle,
    netns: NetnsLabel,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // Dropping a Runtime blocks, which panics inside an async context;
        // shutdown_background ends the connection task without blocking.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Netlink {
    /// Connect in the calling thread's network namespace.
    ///
    /// # Errors
    /// [`NetlinkError::Socket`] if the runtime or socket cannot be created.
    pub fn current() -> Result<Self, NetlinkError> {
        Self::connect(NetnsLabel::Current)
    }

    /// Connect in the namespace at `path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`). The caller's thread does not change namespace.
    ///
    /// # Errors
    /// [`NetlinkError::Netns`] if the namespace cannot be entered,
    /// [`NetlinkError::Socket`] if the socket cannot be created.
    pub fn in_netns(path: &Path) -> Result<Self, NetlinkError> {
        let label = NetnsLabel::Path(path.to_owned());
        // The socket() call decides the namespace; the runtime's epoll and
        // the connection task are namespace-agnostic and move with it.
        netns::run_in(path, move || Self::connect(label))?
    }

    fn connect(netns: NetnsLabel) -> Result<Self, NetlinkError> {
        let socket_error = |source| NetlinkError::Socket {
            netns: netns.clone(),
            source,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(socket_error)?;
        let (connection, handle, _notifications) = {
            // Registering the socket with the reactor needs a runtime context.
            let _context = runtime.enter();
            rtnetlink::new_connection().map_err(socket_error)?
        };
        // A current-thread runtime drives the task whenever a method blocks
        // on a request; dropping the runtime ends it and closes the socket.
        runtime.spawn(connection);
        Ok(Self {
            runtime: Some(runtime),
            handle,
            netns,
        })
    }

    /// The namespace this connection configures.
    pub fn netns(&self) -> &NetnsLabel {
        &self.netns
    }

    /// Index of the link called `name`, or `None` if there is none.
    ///
    /// # Errors
    /// [`NetlinkError::InvalidArgument`] for an impossible name, or the
    /// kernel's rejection.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        const OP: &str = "get link";
        validate_ifname(OP, name)?;
        let request = self.handle.link().get().match_name(name).execute();
        let reply = self.block_on(OP, async move {
            let mut links = std::pin::pin!(request);
            links.try_next().await
        })?;
        match reply {
            Ok(link) => Ok(link.map(|link| link.header.index)),
            Err(error) if errno_of(&error) == Some(libc::ENODEV) => Ok(None),
            Err(error) => Err(self.request_error(OP, format!("link {name:?}"), error)),
        }
    }

    /// Hardware (MAC) address of link `index`.
    ///
    /// # Errors
    /// The kernel's rejection (`ENODEV` for no such link), or
    /// [`NetlinkError::BadReply`] if the link has no 6-byte address (a TUN
    /// device, say).
    pub fn link_mac(&self, index: u32) -> Result<[u8; 6], NetlinkError> {
        const OP: &str = "get link address";
        let link = self.get_link(OP, index)?;
        link.attributes
            .iter()
            .find_map(|attr| match attr {
                LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::BadReply {
                op: OP,
                index,
                netns: self.netns.clone(),
                problem: "the link has no 6-byte hardware address",
            })
    }

    /// MTU of link `index`.
    ///
    /// # Errors
    /// The kernel's rejection (`ENODEV` for no such link), or
    /// [`NetlinkError::BadReply`] if the reply carries no MTU.
    pub fn link_mtu(&self, index: u32) -> Result<u32, NetlinkError> {
        const OP: &str = "get link mtu";
        let link = self.get_link(OP, index)?;
        link.attributes
            .iter()
            .find_map(|attr| match attr {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::BadReply {
                op: OP,
                index,
                netns: self.netns.clone(),
                problem: "the reply carries no MTU",
            })
    }

    /// Set link `index` administratively up (`ip link set DEV up`).
    ///
    /// # Errors
    /// The kernel's rejection.
    pub fn link_set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.set_link(
            "set up",
            index,
            LinkUnspec::new_with_index(index).up().build(),
        )
    }

    /// Set link `index` administratively down.
    ///
    /// # Errors
    /// The kernel's rejection.
    pub fn link_set_down(&self, index: u32) -> Result<(), NetlinkError> {
        self.set_link(
            "set down",
            index,
            LinkUnspec::new_with_index(index).down().build(),
        )
    }

    /// Set the MTU of link `index`.
    ///
    /// # Errors
    /// The kernel's rejection (`EINVAL` outside the device's MTU range).
    pub fn link_set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set_link(
            "set mtu",
            index,
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
        )
    }

    /// Set the hardware (MAC) address of link `index`.
    ///
    /// # Errors
    /// The kernel's rejection (`EADDRNOTAVAIL` for a multicast address).
    pub fn link_set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        self.set_link(
            "set address",
            index,
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
        )
    }

    /// Rename link `index` to `name`. The kernel refuses to rename a link
    /// that is up (`EBUSY`).
    ///
    /// # Errors
    /// [`NetlinkError::InvalidArgument`] for an impossible name, or the
    /// kernel's rejection (`EEXIST`, `EBUSY`).
    pub fn link_set_name(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        const OP: &str = "set name";
        validate_ifname(OP, name)?;
        self.set_link(
            OP,
            index,
            LinkUnspec::new_with_index(index)
                .name(name.to_owned())
                .build(),
        )
    }

    /// Move link `index` into the namespace open at `netns`. Its index may
    /// change there; look it up again with a [`Netlink`] in that namespace.
    ///
    /// # Errors
    /// The kernel's rejection (`EINVAL` for devices that cannot move,
    /// `EEXIST` if the name is taken there).
    pub fn link_set_netns(&self, index: u32, netns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
        self.set_link(
            "move to netns",
            index,
            LinkUnspec::new_with_index(index)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
        )
    }

    /// Enslave link `index` to the bridge (or bond, VRF) `master`.
    ///
    /// # Errors
    /// The kernel's rejection.
    pub fn link_set_master(&self, index: u32, master: u32) -> Result<(), NetlinkError> {
        self.set_link(
            "set master",
            index,
            LinkUnspec::new_with_index(index).controller(master).build(),
        )
    }

    /// Delete link `index` (for a veth, both ends go).
    ///
    /// # Errors
    /// The kernel's rejection (`ENODEV`, `EOPNOTSUPP` for `lo`).
    pub fn link_delete(&self, index: u32) -> Result<(), NetlinkError> {
        const OP: &str = "delete link";
        let request = self.handle.link().del(index).execute();
        self.block_on(OP, request)?
            .map_err(|e| self.request_error(OP, format!("link {index}"), e))
    }

    /// Create a veth pair `name` <-> `peer` in this namespace.
    ///
    /// # Errors
    /// [`NetlinkError::InvalidArgument`] for impossible names, or the
    /// kernel's rejection (`EEXIST`).
    pub fn create_veth(&self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        const OP: &str = "create veth";
        validate_ifname(OP, name)?;
        validate_ifname(OP, peer)?;
        self.add_link(OP, name, LinkVeth::new(name, peer).build())
    }

    /// Create a veth pair whose end `name` is in this namespace and whose end
    /// `peer` is created directly in the namespace open at `peer_netns` (one
    /// request, like `ip link add NAME type veth peer PEER netns NS`), so the
    /// peer's name never has to be free here.
    ///
    /// # Errors
    /// [`NetlinkError::InvalidArgument`] for impossible names, or the
    /// kernel's rejection (`EEXIST` in either namespace).
    pub fn create_veth_peer_in(
        &self,
        name: &str,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        const OP: &str = "create veth";
        validate_ifname(OP, name)?;
        validate_ifname(OP, peer)?;
        let peer_message = LinkUnspec::new_with_name(peer)
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let message = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
            .build();
        self.add_link(OP, name, message)
    }

    /// Create a Linux bridge `name`.
    ///
    /// # Errors
    /// [`NetlinkError::InvalidArgument`] for an impossible name, or the
    /// kernel's rejection (`EEXIST`).
    pub fn create_bridge(&self, name: &str) -> Result<(), NetlinkError> {
        const OP: &str = "create bridge";
        validate_ifname(OP, name)?;
        self.add_link(OP, name, LinkBridge::new(name).build())
    }

    /// Add `addr/prefix_len` to link `index` (`ip addr add`).
    ///
    /// # Errors
    /// [`NetlinkError::InvalidArgument`] for a prefix longer than the
    /// address, or the kernel's rejection (`EEXIST` if already present).
    pub fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        const OP: &str = "add address";
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(NetlinkError::InvalidArgument {
                op: OP,
                field: "prefix length",
                value: format!("{addr}/{prefix_len}"),
                reason: format!("at most {max}"),
            });
        }
        let request = self.handle.address().add(index, addr, prefix_len).execute();
        self.block_on(OP, request)?
            .map_err(|e| self.request_error(OP, format!("{addr}/{prefix_len} on link {index}"), e))
    }

    /// Add a route to `dst` in the main table (`ip route add`), via
    /// `gateway` and/or out of link `oif`. Without a gateway the route has
    /// link scope (the destination is on the link). Host bits in `dst` are
    /// cleared. An IPv4 route may have an IPv6 gateway (RFC 5549 `via inet6`).
    ///
    /// # Errors
    /// [`NetlinkError::InvalidArgument`] if there is neither gateway nor
    /// `oif`, or the kernel's rejection (`EEXIST`, `ENETUNREACH` for an
    /// unreachable gateway).
    pub fn add_route(
        &self,
        dst: IpNet,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
    ) -> Result<(), NetlinkError> {
        const OP: &str = "add route";
        let invalid = |reason: String| NetlinkError::InvalidArgument {
            op: OP,
            field: "route",
            value: format!("{dst} via {gateway:?} dev {oif:?}"),
            reason,
        };
        if gateway.is_none() && oif.is_none() {
            return Err(invalid("needs a gateway or an output link".to_owned()));
        }
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(gateway) = gateway {
            builder = builder
                .gateway(gateway)
                .map_err(|e| invalid(e.to_string()))?;
        } else {
            builder = builder.scope(RouteScope::Link);
        }
        if let Some(oif) = oif {
            builder = builder.output_interface(oif);
        }
        let request = self.handle.route().add(builder.build()).execute();
        self.block_on(OP, request)?
            .map_err(|e| self.request_error(OP, format!("route {}", dst.trunc()), e))
    }

    /// Delete the route to `dst` via `gateway` (`ip route del DST via GW`).
    /// A route that does not exist is not an error.
    ///
    /// # Errors
    /// The kernel's rejection other than `ESRCH`.
    pub fn delete_route(&self, dst: IpNet, gateway: IpAddr) -> Result<(), NetlinkError> {
        const OP: &str = "delete route";
        let invalid = |reason: String| NetlinkError::InvalidArgument {
            op: OP,
            field: "route",
            value: format!("{dst} via {gateway}"),
            reason,
        };
        let message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .map_err(|e| invalid(e.to_string()))?
            .gateway(gateway)
            .map_err(|e| invalid(e.to_string()))?
            .build();
        let request = self.handle.route().del(message).execute();
        match self.block_on(OP, request)? {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = self.request_error(OP, format!("route {}", dst.trunc()), e);
                if err.raw_os_error() == Some(libc::ESRCH) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Add or replace a permanent neighbour entry `ip` -> `mac` on link
    /// `index` (`ip neigh replace IP lladdr MAC dev DEV nud permanent`).
    ///
    /// # Errors
    /// The kernel's rejection (`ENODEV`).
    pub fn add_neighbour(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), NetlinkError> {
        const OP: &str = "add neighbour";
        // The request defaults to NUD_PERMANENT; replace keeps it idempotent.
        let request = self
            .handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .replace()
            .execute();
        self.block_on(OP, request)?
            .map_err(|e| self.request_error(OP, format!("{ip} on link {index}"), e))
    }

    /// Add the ingress qdisc (`tc qdisc replace dev DEV ingress`) so
    /// filters can be attached to the link's receive path.
    ///
    /// # Errors
    /// The kernel's rejection other than `EEXIST`.
    pub fn add_ingress_qdisc(&self, index: u32) -> Result<(), NetlinkError> {
        const OP: &str = "add ingress qdisc";
        let request = self.handle.qdisc().add(index as i32).ingress().execute();
        match self.block_on(OP, request)? {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = self.request_error(OP, format!("link {index}"), e);
                if err.raw_os_error() == Some(libc::EEXIST) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Add a u32 filter on link `index`'s ingress that redirects IPv4
    /// packets matching every `(offset, value, mask)` key (offsets from the
    /// IP header, big-endian 32-bit words) to the egress of link `to`
    /// (`tc filter add dev DEV parent ffff: protocol ip prio PRIO u32
    /// match ... action mirred egress redirect dev TO`).
    ///
    /// # Errors
    /// The kernel's rejection.
    pub fn add_redirect_filter(
        &self,
        index: u32,
        priority: u16,
        keys: &[(i32, u32, u32)],
        to: u32,
    ) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::tc::{
            TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
            TcActionOption, TcActionType, TcFilterU32Option, TcMirror, TcMirrorActionType,
            TcU32Key, TcU32Selector, TcU32SelectorFlags,
        };
        const OP: &str = "add redirect filter";
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = keys.len() as u8;
        sel.keys = keys
            .iter()
            .map(|&(off, val, mask)| {
                let mut k = TcU32Key::default();
                k.off = off;
                k.val = val & mask;
                k.mask = mask;
                k
            })
            .collect();
        let mut mirror = TcMirror::default();
        mirror.generic = TcActionGeneric::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        let options = [
            TcFilterU32Option::Selector(sel),
            TcFilterU32Option::Action(vec![action]),
        ];
        let request = self
            .handle
            .traffic_filter(index as i32)
            .add()
            .ingress()
            .priority(priority)
            // The protocol goes in network byte order (tc: `htons(ETH_P_IP)`).
            .protocol((libc::ETH_P_IP as u16).to_be())
            .u32(&options)
            .map_err(|e| self.request_error(OP, format!("link {index}"), e))?
            .execute();
        self.block_on(OP, request)?
            .map_err(|e| self.request_error(OP, format!("link {index}"), e))
    }

    /// Every IPv4 address of the namespace, with the index of its link.
    ///
    /// # Errors
    /// The kernel's rejection of the address dump.
    pub fn ipv4_addresses(&self) -> Result<Vec<(u32, std::net::Ipv4Addr)>, NetlinkError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        const OP: &str = "list addresses";
        let request = self.handle.address().get().execute();
        let found = self.block_on(OP, async move {
            let mut addrs = std::pin::pin!(request);
            let mut out = Vec::new();
            while let Some(a) = addrs.try_next().await? {
                for attr in &a.attributes {
                    if let AddressAttribute::Address(IpAddr::V4(v4)) = attr {
                        out.push((a.header.index, *v4));
                    }
                }
            }
            Ok::<_, rtnetlink::Error>(out)
        })?;
        found.map_err(|e| self.request_error(OP, "all links".to_string(), e))
    }

    /// The index of the link holding IPv4 address `ip`, if any.
    ///
    /// # Errors
    /// The kernel's rejection of the address dump.
    pub fn link_with_address(&self, ip: std::net::Ipv4Addr) -> Result<Option<u32>, NetlinkError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        const OP: &str = "find address";
        let request = self.handle.address().get().execute();
        let found = self.block_on(OP, async move {
            let mut addrs = std::pin::pin!(request);
            while let Some(a) = addrs.try_next().await? {
                for attr in &a.attributes {
                    if let AddressAttribute::Address(IpAddr::V4(v4)) = attr {
                        if *v4 == ip {
                            return Ok(Some(a.header.index));
                        }
                    }
                }
            }
            Ok::<_, rtnetlink::Error>(None)
        })?;
        found.map_err(|e| self.request_error(OP, format!("address {ip}"), e))
    }

    /// Set the loopback device `lo` up, which a fresh namespace needs before
    /// anything can talk to 127.0.0.1.
    ///
    /// # Errors
    /// [`NetlinkError::LinkNotFound`] if there is no `lo`, or the kernel's
    /// rejection.
    pub fn set_lo_up(&self) -> Result<(), NetlinkError> {
        let index = self
            .link_index("lo")?
            .ok_or_else(|| NetlinkError::LinkNotFound {
                op: "set lo up",
                name: "lo".to_owned(),
                netns: self.netns.clone(),
            })?;
        self.link_set_up(index)
    }

    fn get_link(&self, op: &'static str, index: u32) -> Result<LinkMessage, NetlinkError> {
        let request = self.handle.link().get().match_index(index).execute();
        let reply = self.block_on(op, async move {
            let mut links = std::pin::pin!(request);
            links.try_next().await
        })?;
        match reply {
            Ok(Some(link)) => Ok(link),
            Ok(None) => Err(NetlinkError::BadReply {
                op,
                index,
                netns: self.netns.clone(),
                problem: "the kernel returned no link",
            }),
            Err(e) => Err(self.request_error(op, format!("link {index}"), e)),
        }
    }

    fn set_link(
        &self,
        op: &'static str,
        index: u32,
        message: LinkMessage,
    ) -> Result<(), NetlinkError> {
        let request = self.handle.link().set(message).execute();
        self.block_on(op, request)?
            .map_err(|e| self.request_error(op, format!("link {index}"), e))
    }

    fn add_link(
        &self,
        op: &'static str,
        name: &str,
        message: LinkMessage,
    ) -> Result<(), NetlinkError> {
        let request = self.handle.link().add(message).execute();
        self.block_on(op, request)?
            .map_err(|e| self.request_error(op, format!("link {name:?}"), e))
    }

    /// Drive `future` (and the connection task) to completion.
    fn block_on<F: std::future::Future>(
        &self,
        op: &'static str,
        future: F,
    ) -> Result<F::Output, NetlinkError> {
        // Runtime::block_on panics inside another runtime; report it instead.
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(NetlinkError::InsideAsyncRuntime { op });
        }
        match &self.runtime {
            Some(runtime) => Ok(runtime.block_on(future)),
            None => Err(NetlinkError::Closed { op }),
        }
    }

    fn request_error(
        &self,
        op: &'static str,
        target: String,
        error: rtnetlink::Error,
    ) -> NetlinkError {
        let source = match error {
            rtnetlink::Error::NetlinkError(message) => message.to_io(),
            other => io::Error::other(other.to_string()),
        };
        NetlinkError::Request {
            op,
            target,
            netns: self.netns.clone(),
            source,
        }
    }
}

/// The positive errno of a kernel rejection, if `error` is one.
fn errno_of(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io().raw_os_error(),
        _ => None,
    }
}

/// What is wrong with `name` as a Linux interface name, if anything: it
/// must be 1..=15 bytes with no `/`, `:`, NUL or whitespace, and not `.` or
/// `..` (the kernel's `dev_valid_name`). Shared with the tap module.
pub(crate) fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > IFNAME_MAX {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("not a device name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    }
}

fn validate_ifname(op: &'static str, name: &str) -> Result<(), NetlinkError> {
    match ifname_problem(name) {
        Some(reason) => Err(NetlinkError::InvalidArgument {
            op,
            field: "interface name",
            value: name.to_owned(),
            reason: reason.to_owned(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::netns::test_support::{have_root, unique_link_name, TestNetns};
    use std::net::Ipv4Addr;
    use std::os::fd::AsFd;

    #[test]
    fn bad_names_are_rejected_before_sending() {
        for name in ["", "sixteen-chars-xx", "a/b", "a:b", "a b", ".."] {
            let err = validate_ifname("test", name).unwrap_err();
            assert!(
                matches!(err, NetlinkError::InvalidArgument { .. }),
                "{name:?}: {err}"
            );
        }
        validate_ifname("test", "eth0").unwrap();
        validate_ifname("test", "fifteen-chars-x").unwrap();
    }

    #[test]
    fn route_without_gateway_or_oif_is_rejected() {
        // Building the connection needs no privileges.
        let nl = Netlink::current().unwrap();
        let err = nl
            .add_route("10.0.0.0/8".parse().unwrap(), None, None)
            .unwrap_err();
        assert!(matches!(err, NetlinkError::InvalidArgument { .. }), "{err}");
        assert!(matches!(
            nl.add_address(1, IpAddr::V4(Ipv4Addr::LOCALHOST), 33),
            Err(NetlinkError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn blocking_inside_a_runtime_is_an_error_not_a_panic() {
        let nl = Netlink::current().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let result = rt.block_on(async { nl.link_index("lo") });
        assert!(matches!(
            result,
            Err(NetlinkError::InsideAsyncRuntime { .. })
        ));
        // Dropping it there must not panic either.
        rt.block_on(async move { drop(nl) });
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Netlink>();
        assert_send_sync::<NetlinkError>();
    }

    /// ```text
    ///   netns A                         netns B
    ///   lo up                           lo up
    ///   vA 10.244.9.1/24  <--veth-->    vB 10.244.9.2/24 (moved from A)
    ///                                   default via 10.244.9.1
    ///   vC  <--veth, peer created in B-->  vD
    /// ```
    #[test]
    fn veth_between_two_namespaces() {
        if !have_root("veth_between_two_namespaces") {
            return;
        }
        let ns_a = TestNetns::new("nla");
        let ns_b = TestNetns::new("nlb");
        let nl_a = Netlink::in_netns(ns_a.path()).unwrap();
        let nl_b = Netlink::in_netns(ns_b.path()).unwrap();
        nl_a.set_lo_up().unwrap();
        nl_b.set_lo_up().unwrap();

        // The socket is in A, not in the caller's namespace.
        let (va, vb) = (unique_link_name(), unique_link_name());
        assert_eq!(nl_a.link_index(&va).unwrap(), None);
        nl_a.create_veth(&va, &vb).unwrap();
        let err = nl_a.create_veth(&va, &vb).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
        assert!(err.to_string().contains(&va), "{err}");
        let current = Netlink::current().unwrap();
        assert_eq!(
            current.link_index(&va).unwrap(),
            None,
            "veth leaked into the caller's netns"
        );

        let ia = nl_a.link_index(&va).unwrap().expect("veth end in A");
        let ib = nl_a
            .link_index(&vb)
            .unwrap()
            .expect("peer in A before the move");
        let mac_b: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];
        nl_a.link_set_mac(ib, mac_b).unwrap();
        nl_a.link_set_mtu(ia, 1400).unwrap();
        assert_eq!(nl_a.link_mtu(ia).unwrap(), 1400);

        let fd_b = netns::open(ns_b.path()).unwrap();
        nl_a.link_set_netns(ib, fd_b.as_fd()).unwrap();
        assert_eq!(nl_a.link_index(&vb).unwrap(), None);
        let ib = nl_b.link_index(&vb).unwrap().expect("peer moved into B");
        assert_eq!(nl_b.link_mac(ib).unwrap(), mac_b);

        nl_b.link_set_name(ib, "eth0").unwrap();
        let ib = nl_b.link_index("eth0").unwrap().expect("renamed");
        let mac_a = nl_a.link_mac(ia).unwrap();

        let gw = IpAddr::V4(Ipv4Addr::new(10, 244, 9, 1));
        nl_a.add_address(ia, gw, 24).unwrap();
        nl_b.add_address(ib, IpAddr::V4(Ipv4Addr::new(10, 244, 9, 2)), 24)
            .unwrap();
        let err = nl_a.add_address(ia, gw, 24).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
        nl_a.link_set_up(ia).unwrap();
        nl_b.link_set_up(ib).unwrap();
        nl_b.add_route("0.0.0.0/0".parse().unwrap(), Some(gw), None)
            .unwrap();
        nl_b.add_route("10.250.0.0/16".parse().unwrap(), None, Some(ib))
            .unwrap();
        nl_b.add_neighbour(ib, gw, mac_a).unwrap();
        nl_b.add_neighbour(ib, gw, mac_a)
            .expect("replace is idempotent");

        // Prove the wiring: A can reach B's address over the veth.
        let reply = netns::run_in(ns_b.path(), || {
            let socket = std::net::UdpSocket::bind("10.244.9.2:4789")?;
            socket.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            Ok::<_, io::Error>(socket)
        })
        .unwrap()
        .unwrap();
        netns::run_in(ns_a.path(), || {
            let socket = std::net::UdpSocket::bind("10.244.9.1:0")?;
            socket.send_to(b"ping", "10.244.9.2:4789")
        })
        .unwrap()
        .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = reply.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from.ip(), gw);

        // A veth created with its peer directly in B.
        let (vc, vd) = (unique_link_name(), unique_link_name());
        nl_a.create_veth_peer_in(&vc, &vd, fd_b.as_fd()).unwrap();
        let ic = nl_a.link_index(&vc).unwrap().expect("vC in A");
        assert_eq!(nl_a.link_index(&vd).unwrap(), None);
        let id = nl_b.link_index(&vd).unwrap().expect("vD in B");

        // A bridge with vC enslaved, then deletions.
        let br = unique_link_name();
        nl_a.create_bridge(&br).unwrap();
        let ibr = nl_a.link_index(&br).unwrap().unwrap();
        nl_a.link_set_master(ic, ibr).unwrap();
        nl_a.link_set_down(ic).unwrap();
        nl_b.link_delete(id).unwrap();
        assert_eq!(
            nl_a.link_index(&vc).unwrap(),
            None,
            "deleting one end removes both"
        );
        nl_a.link_delete(ibr).unwrap();
        let err = nl_a.link_mtu(ibr).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
    }
}

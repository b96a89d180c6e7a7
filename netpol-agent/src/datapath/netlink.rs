//! Typed rtnetlink queries the attacher needs: the veths of this network namespace with the
//! addresses of their peer ends (which live in pod network namespaces), and link events.
//!
//! The peer's addresses are read with RTM_GETADDR and IFA_TARGET_NETNSID (Linux 4.20+) on the
//! veth's IFLA_LINK_NETNSID, which works whatever the CNI's shape (bridge ports or routed /32
//! veths) and whatever the interface names, without entering any namespace.

use std::net::IpAddr;

use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// `IFA_TARGET_NETNSID` from `include/uapi/linux/if_addr.h`.
const IFA_TARGET_NETNSID: u16 = 10;
/// `RTNLGRP_LINK`: link add, change and delete notifications.
const RTNLGRP_LINK: u32 = 1;
/// `RTNLGRP_IPV4_IFADDR`: IPv4 address notifications.
const RTNLGRP_IPV4_IFADDR: u32 = 5;
/// `RTNLGRP_IPV6_IFADDR`: IPv6 address notifications.
const RTNLGRP_IPV6_IFADDR: u32 = 9;

/// Errors of netlink queries.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A socket operation failed.
    #[error("netlink {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The kernel answered with an error.
    #[error("netlink {op}: kernel error {code}")]
    Kernel {
        /// The request.
        op: &'static str,
        /// errno.
        code: i32,
    },
    /// A reply could not be decoded.
    #[error("netlink {op}: cannot decode reply: {reason}")]
    Decode {
        /// The request.
        op: &'static str,
        /// The decoder's message.
        reason: String,
    },
}

/// A veth in this namespace whose other end is in another namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Veth {
    /// Interface index here.
    pub ifindex: u32,
    /// Interface name here.
    pub name: String,
    /// The namespace id (in this namespace) of the peer's namespace.
    pub peer_netnsid: i32,
    /// The peer's interface index in its namespace.
    pub peer_ifindex: u32,
    /// Addresses on the peer interface.
    pub peer_addresses: Vec<IpAddr>,
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> NetlinkError {
    move |source| NetlinkError::Io { op, source }
}

fn open(op: &'static str) -> Result<Socket, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io(op))?;
    socket.bind_auto().map_err(io(op))?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io(op))?;
    Ok(socket)
}

/// Sends a dump request and collects every reply message.
fn dump(socket: &Socket, op: &'static str, request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(request));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0).map_err(io(op))?;

    let mut out = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full().map_err(io(op))?;
        let mut offset = 0;
        while offset < data.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| NetlinkError::Decode { op, reason: e.to_string() })?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(NetlinkError::Kernel { op, code: e.code.map_or(0, |c| c.get()) });
                }
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if len == 0 {
                return Err(NetlinkError::Decode { op, reason: "zero-length message".into() });
            }
            offset += len;
        }
    }
}

/// Lists the veths of this namespace whose peer is in another namespace, without their peers'
/// addresses (one dump: cheap enough to run on every link event).
pub fn list_veth_links() -> Result<Vec<Veth>, NetlinkError> {
    let socket = open("list links")?;
    let links = dump(&socket, "list links", RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    let mut veths = Vec::new();
    for m in links {
        let RouteNetlinkMessage::NewLink(link) = m else { continue };
        let mut name = None;
        let mut nsid = None;
        let mut peer = None;
        let mut is_veth = false;
        for a in &link.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::LinkNetNsId(id) => nsid = Some(*id),
                LinkAttribute::Link(p) => peer = Some(*p),
                LinkAttribute::LinkInfo(infos) => {
                    is_veth = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        if let (true, Some(name), Some(peer_netnsid), Some(peer_ifindex)) = (is_veth, name, nsid, peer) {
            if peer_netnsid >= 0 {
                veths.push(Veth { ifindex: link.header.index, name, peer_netnsid, peer_ifindex, peer_addresses: Vec::new() });
            }
        }
    }
    Ok(veths)
}

/// Lists the veths of this namespace whose peer is in another namespace, with the peer's
/// addresses.
pub fn list_veths() -> Result<Vec<Veth>, NetlinkError> {
    let mut veths = list_veth_links()?;
    // Strict checking is what makes the kernel honour IFA_TARGET_NETNSID in a dump request.
    let socket = open("list peer addresses")?;
    socket.set_netlink_get_strict_chk(true).map_err(io("enable strict netlink checking"))?;
    for veth in &mut veths {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = AddressMessage::default();
            req.header.family = family;
            req.header.index = veth.peer_ifindex;
            req.attributes.push(AddressAttribute::Other(DefaultNla::new(IFA_TARGET_NETNSID, veth.peer_netnsid.to_ne_bytes().to_vec())));
            for m in dump(&socket, "list peer addresses", RouteNetlinkMessage::GetAddress(req))? {
                let RouteNetlinkMessage::NewAddress(addr) = m else { continue };
                if addr.header.index != veth.peer_ifindex {
                    continue;
                }
                for a in &addr.attributes {
                    if let AddressAttribute::Address(ip) = a {
                        if !veth.peer_addresses.contains(ip) {
                            veth.peer_addresses.push(*ip);
                        }
                    }
                }
            }
        }
    }
    Ok(veths)
}

/// An interface of this namespace with an Ethernet link layer: where a packet whose egress
/// judgement was deferred until after NAT can leave the node (or reach a local pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EthernetInterface {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub name: String,
}

/// Lists this namespace's Ethernet interfaces (physical, bridges, VXLAN, veths; not loopback
/// or layer-3 tunnels).
pub fn list_ethernet_interfaces() -> Result<Vec<EthernetInterface>, NetlinkError> {
    let socket = open("list interfaces")?;
    let links = dump(&socket, "list interfaces", RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Ok(links
        .into_iter()
        .filter_map(|m| {
            let RouteNetlinkMessage::NewLink(link) = m else { return None };
            if link.header.link_layer_type != LinkLayerType::Ether {
                return None;
            }
            let name = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })?;
            Some(EthernetInterface { ifindex: link.header.index, name })
        })
        .collect())
}

/// Addresses configured on this namespace's own interfaces (the node's addresses).
pub fn local_addresses() -> Result<Vec<IpAddr>, NetlinkError> {
    let socket = open("list addresses")?;
    let mut out = Vec::new();
    for m in dump(&socket, "list addresses", RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
        let RouteNetlinkMessage::NewAddress(addr) = m else { continue };
        for a in &addr.attributes {
            if let AddressAttribute::Address(ip) = a {
                if !ip.is_loopback() && !out.contains(ip) {
                    out.push(*ip);
                }
            }
        }
    }
    Ok(out)
}

/// Interfaces of this namespace with an address of their own (IPv4, or IPv6 other than
/// link-local): the node's interfaces, never the host side of a pod's veth in a bridge or a
/// routed /32 set-up.
pub fn addressed_interfaces() -> Result<std::collections::BTreeSet<u32>, NetlinkError> {
    let socket = open("list addresses")?;
    let mut out = std::collections::BTreeSet::new();
    for m in dump(&socket, "list addresses", RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
        let RouteNetlinkMessage::NewAddress(addr) = m else { continue };
        let own = addr.attributes.iter().any(|a| match a {
            AddressAttribute::Address(IpAddr::V4(_)) => true,
            AddressAttribute::Address(IpAddr::V6(v6)) => v6.segments()[0] & 0xffc0 != 0xfe80,
            _ => false,
        });
        if own {
            out.insert(addr.header.index);
        }
    }
    Ok(out)
}

/// A socket subscribed to link notifications; [`LinkEvents::wait`] blocks until one arrives.
pub struct LinkEvents {
    socket: Socket,
}

impl LinkEvents {
    /// Subscribes to link add/change/delete and address notifications of this namespace.
    pub fn subscribe() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io("subscribe to link events"))?;
        socket.bind_auto().map_err(io("subscribe to link events"))?;
        for group in [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR] {
            socket.add_membership(group).map_err(io("subscribe to link events"))?;
        }
        Ok(Self { socket })
    }

    /// Blocks until at least one notification arrives (their content is not needed: the
    /// attacher rescans).
    pub fn wait(&self) -> Result<(), NetlinkError> {
        self.socket.recv_from_full().map_err(io("receive link events"))?;
        Ok(())
    }
}

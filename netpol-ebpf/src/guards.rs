//! Anti-spoofing and the built-in allowances that come before policy: a pod may speak only for
//! its own addresses (IP, ARP, neighbour advertisements), IPv6 needs neighbour discovery, and an
//! IPv4-mapped IPv6 address is never valid on a wire.

use aya_ebpf::programs::TcContext;
use netpol_common::{EndpointInfo, IpKey, EP_HAS_IPV4, EP_HAS_IPV6};

use crate::parse::{self, Packet, IPPROTO_ICMPV6};

/// Whether an IPv6 packet carries an IPv4-mapped address (`::ffff:0:0/96`): never valid on an
/// IPv6 wire (RFC 4291 2.5.5.2), and its key would be the IPv4 host's, with that host's policy
/// and conntrack entries. Its own BPF function: one call on the IPv6 path, no new verifier
/// branches in the caller.
#[inline(never)]
pub fn has_v4_mapped_address(p: &Packet) -> bool {
    p.src.is_v4_mapped() || p.dst.is_v4_mapped()
}

/// ICMPv6 Neighbor Advertisement (RFC 4861).
pub const ND_NEIGHBOR_ADVERT: u8 = 136;

/// Whether an ARP packet from the pod speaks for the pod's own IPv4 address (or for none: the
/// unspecified sender of an address probe). A pod must not answer for another pod's address
/// and so steal its traffic on a shared bridge.
#[inline(always)]
pub fn arp_sender_is_own(ctx: &TcContext, ep: &EndpointInfo) -> bool {
    // ARP for IPv4 over Ethernet: htype, ptype, hlen, plen, oper, then sha[6], spa[4].
    let Some(hdr) = parse::read::<[u8; 8]>(ctx, parse::ETH_LEN) else { return false };
    if hdr[2..4] != [0x08, 0x00] || hdr[5] != 4 {
        // Not about IPv4 addresses: nothing of a pod's to steal.
        return true;
    }
    let Some(spa) = parse::read::<[u8; 4]>(ctx, parse::ETH_LEN + 14) else { return false };
    let spa = u32::from_ne_bytes(spa);
    spa == 0 || (ep.flags & EP_HAS_IPV4 != 0 && spa == ep.ipv4)
}

/// Whether a Neighbor Advertisement from the pod advertises one of its own addresses (or a
/// link-local one, which the pod configures itself).
#[inline(always)]
pub fn advertises_own_address(ctx: &TcContext, ep: &EndpointInfo, p: &Packet) -> bool {
    // The target address follows the 4-byte ICMPv6 header and 4 bytes of flags.
    let Some(words) = p.l4_offset(8).and_then(|off| parse::read::<[u32; 4]>(ctx, off)) else { return false };
    let target = IpKey { addr: words };
    let link_local = u32::from_be(words[0]) >> 22 == 0xfe80 >> 6;
    link_local || is_own_address(ep, &target)
}

/// Whether `addr` is one of the endpoint's own addresses.
#[inline(always)]
pub fn is_own_address(ep: &EndpointInfo, addr: &IpKey) -> bool {
    if ep.flags & EP_HAS_IPV4 != 0 && addr.is_v4_word(ep.ipv4) {
        return true;
    }
    ep.flags & EP_HAS_IPV6 != 0 && *addr == ep.ipv6
}

/// ICMPv6 sent from a link-local or the unspecified address: neighbour discovery, duplicate
/// address detection and MLD, which a pod does before (and beside) using its own address.
#[inline(always)]
pub fn is_link_local_icmpv6(p: &Packet) -> bool {
    if !p.ipv6 || p.protocol != IPPROTO_ICMPV6 {
        return false;
    }
    let a = &p.src.addr;
    // fe80::/10: the first 10 bits of the first word, read as a big-endian number.
    let link_local = u32::from_be(a[0]) >> 22 == 0xfe80 >> 6;
    link_local || *a == [0u32; 4]
}

/// ICMPv6 types of neighbour discovery (RFC 4861: 133-137) and multicast listener messages
/// (RFC 2710/3810: 130-132, 143), which IPv6 needs to work at all.
#[inline(always)]
pub fn is_neighbour_discovery(icmp_type: u8) -> bool {
    matches!(icmp_type, 130..=137 | 143)
}

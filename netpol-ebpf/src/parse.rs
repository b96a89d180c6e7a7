//! Parsing a frame in place (direct packet access, every read bounds-checked against
//! `data_end`): Ethernet, IPv4 or IPv6 with a bounded walk over extension headers, then the
//! ports of TCP, UDP and SCTP or the type of ICMP.

use aya_ebpf::programs::TcContext;
use netpol_common::{CtKey, IpKey};

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

/// IP protocol numbers the classifier knows.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_AH: u8 = 51;

/// How many IPv6 extension headers the parser walks; a longer chain is refused.
pub const IPV6_EXT_MAX: usize = 6;

/// Which part of a fragmented datagram a packet is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    None,
    /// The first fragment: carries the L4 header.
    First,
    /// A later fragment: no L4 header.
    Later,
}

/// What the classifier needs of an IP packet.
pub struct Packet {
    /// Source address (IPv4-mapped for IPv4).
    pub src: IpKey,
    /// Destination address.
    pub dst: IpKey,
    /// The L4 protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// Source port, big-endian (ICMP echo: the identifier; other ICMP: 0).
    pub sport_be: u16,
    /// Destination port, big-endian (ICMP echo: the identifier; other ICMP: 0).
    pub dport_be: u16,
    /// ICMP / ICMPv6 type, 0 otherwise.
    pub icmp_type: u8,
    /// Whether the packet is an ICMP error quoting another packet (its L4 offset is `l4`).
    pub icmp_error: bool,
    /// Fragment position.
    pub fragment: Fragment,
    /// IP identification of a fragment.
    pub frag_id: u32,
    /// Whether this is IPv6.
    pub ipv6: bool,
    /// Offset of the L4 header from the start of the frame.
    pub l4: usize,
}

/// Why a frame was not turned into a [`Packet`].
pub enum NotIp {
    /// ARP: always passed (neighbour resolution must work).
    Arp,
    /// Another link-layer protocol.
    Other,
    /// Truncated or inconsistent headers.
    Malformed,
    /// More IPv6 extension headers than [`IPV6_EXT_MAX`].
    TooManyExtHeaders,
}

/// A pointer to a `T` at `off` bytes into the frame, if the whole `T` is inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Reads a `T` at `off`, unaligned.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet; read_unaligned because
    // headers are not aligned.
    ptr_at::<T>(ctx, off).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

impl Packet {
    /// A packet with every field zero, to be filled by [`parse`].
    #[inline(always)]
    pub const fn empty() -> Self {
        Packet {
            src: IpKey { addr: [0; 16] },
            dst: IpKey { addr: [0; 16] },
            protocol: 0,
            sport_be: 0,
            dport_be: 0,
            icmp_type: 0,
            icmp_error: false,
            fragment: Fragment::None,
            frag_id: 0,
            ipv6: false,
            l4: 0,
        }
    }
}

/// Parses the frame into `p`. `Err` says why it is not an IP packet this classifier can judge.
#[inline(always)]
pub fn parse(ctx: &TcContext, p: &mut Packet) -> Result<(), NotIp> {
    let ethertype = u16::from_be(read::<u16>(ctx, 12).ok_or(NotIp::Malformed)?);
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, ETH_LEN, p),
        ETH_P_IPV6 => parse_ipv6(ctx, ETH_LEN, p),
        ETH_P_ARP => Err(NotIp::Arp),
        _ => Err(NotIp::Other),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, off: usize, p: &mut Packet) -> Result<(), NotIp> {
    let vihl: u8 = read(ctx, off).ok_or(NotIp::Malformed)?;
    if vihl >> 4 != 4 {
        return Err(NotIp::Malformed);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(NotIp::Malformed);
    }
    // Make sure the whole fixed header is there before reading fields of it.
    if ptr_at::<[u8; 20]>(ctx, off).is_none() {
        return Err(NotIp::Malformed);
    }
    let id_be: u16 = read(ctx, off + 4).ok_or(NotIp::Malformed)?;
    let frag = u16::from_be(read::<u16>(ctx, off + 6).ok_or(NotIp::Malformed)?);
    p.protocol = read(ctx, off + 9).ok_or(NotIp::Malformed)?;
    p.src = IpKey::from_v4(read(ctx, off + 12).ok_or(NotIp::Malformed)?);
    p.dst = IpKey::from_v4(read(ctx, off + 16).ok_or(NotIp::Malformed)?);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    p.frag_id = u16::from_be(id_be) as u32;
    p.fragment = if offset != 0 {
        Fragment::Later
    } else if more {
        Fragment::First
    } else {
        Fragment::None
    };
    p.l4 = off + ihl;
    if p.fragment != Fragment::Later {
        parse_l4(ctx, p)?;
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, off: usize, p: &mut Packet) -> Result<(), NotIp> {
    let first: u8 = read(ctx, off).ok_or(NotIp::Malformed)?;
    if first >> 4 != 6 {
        return Err(NotIp::Malformed);
    }
    p.ipv6 = true;
    let mut next: u8 = read(ctx, off + 6).ok_or(NotIp::Malformed)?;
    p.src = IpKey { addr: read(ctx, off + 8).ok_or(NotIp::Malformed)? };
    p.dst = IpKey { addr: read(ctx, off + 24).ok_or(NotIp::Malformed)? };
    let mut l4 = off + 40;
    let mut i = 0;
    while i < IPV6_EXT_MAX {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let hdr: [u8; 2] = read(ctx, l4).ok_or(NotIp::Malformed)?;
                next = hdr[0];
                l4 += (hdr[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let hdr: [u8; 2] = read(ctx, l4).ok_or(NotIp::Malformed)?;
                next = hdr[0];
                l4 += (hdr[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let hdr: [u8; 8] = read(ctx, l4).ok_or(NotIp::Malformed)?;
                next = hdr[0];
                let offset = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
                let more = hdr[3] & 1 != 0;
                p.frag_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                p.fragment = if offset != 0 {
                    Fragment::Later
                } else if more {
                    Fragment::First
                } else {
                    Fragment::None
                };
                l4 += 8;
            }
            _ => break,
        }
        i += 1;
    }
    if matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT)
    {
        return Err(NotIp::TooManyExtHeaders);
    }
    p.protocol = next;
    p.l4 = l4;
    if p.fragment != Fragment::Later {
        parse_l4(ctx, p)?;
    }
    Ok(())
}

/// Fills ports (or the ICMP type and echo identifier) from the L4 header at `p.l4`.
#[inline(always)]
fn parse_l4(ctx: &TcContext, p: &mut Packet) -> Result<(), NotIp> {
    match p.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let ports: [u16; 2] = read(ctx, p.l4).ok_or(NotIp::Malformed)?;
            p.sport_be = ports[0];
            p.dport_be = ports[1];
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let hdr: [u8; 8] = read(ctx, p.l4).ok_or(NotIp::Malformed)?;
            p.icmp_type = hdr[0];
            let echo = if p.protocol == IPPROTO_ICMP {
                hdr[0] == 8 || hdr[0] == 0
            } else {
                hdr[0] == 128 || hdr[0] == 129
            };
            let error = if p.protocol == IPPROTO_ICMP {
                matches!(hdr[0], 3 | 4 | 5 | 11 | 12)
            } else {
                hdr[0] >= 1 && hdr[0] <= 4
            };
            if echo {
                let id = u16::from_ne_bytes([hdr[4], hdr[5]]);
                p.sport_be = id;
                p.dport_be = id;
            }
            p.icmp_error = error;
        }
        _ => {}
    }
    Ok(())
}

/// Fills `key` with the conntrack key (on `endpoint`) of the packet an ICMP error quotes
/// (`p.icmp_error`): that packet was sent the other way, by the flow the error belongs to.
/// Returns false when the quoted headers are not there.
#[inline(always)]
pub fn quoted_flow_key(ctx: &TcContext, p: &Packet, endpoint: u32, key: &mut CtKey) -> bool {
    let inner = p.l4 + 8;
    let mut q = Packet::empty();
    let l4: usize;
    if p.ipv6 {
        let Some(next) = read::<u8>(ctx, inner + 6) else { return false };
        let Some(s) = read::<[u8; 16]>(ctx, inner + 8) else { return false };
        q.src.addr = s;
        let Some(d) = read::<[u8; 16]>(ctx, inner + 24) else { return false };
        q.dst.addr = d;
        q.protocol = next;
        l4 = inner + 40;
    } else {
        let Some(vihl) = read::<u8>(ctx, inner) else { return false };
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return false;
        }
        let Some(s) = read::<[u8; 4]>(ctx, inner + 12) else { return false };
        q.src = IpKey::from_v4(s);
        let Some(d) = read::<[u8; 4]>(ctx, inner + 16) else { return false };
        q.dst = IpKey::from_v4(d);
        let Some(proto) = read::<u8>(ctx, inner + 9) else { return false };
        q.protocol = proto;
        l4 = inner + ihl;
    }
    let Some(ports) = read::<[u16; 2]>(ctx, l4) else { return false };
    (q.sport_be, q.dport_be) = match q.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => (ports[0], ports[1]),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let Some(id) = read::<u16>(ctx, l4 + 4) else { return false };
            (id, id)
        }
        _ => (0, 0),
    };
    crate::conntrack::flow_key(key, endpoint, &q);
    true
}

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

pub use netpol_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
/// IPv6 extension headers the parser walks over.
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

impl Packet {
    /// The frame offset `rel` bytes into the L4 header. Bounded: the compiler keeps `l4` on the
    /// stack, and the verifier reads it back without its range, so every read past the L4
    /// header's start goes through here.
    #[inline(always)]
    pub fn l4_offset(&self, rel: usize) -> Option<usize> {
        if self.l4 > OFFSET_MAX {
            return None;
        }
        Some(self.l4 + rel)
    }
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

/// No header of a frame starts this far in: the bound of [`Packet::l4_offset`], low enough that
/// offset plus read size stays within the verifier's own limit for packet offsets
/// (`MAX_PACKET_OFF`, 0xffff).
const OFFSET_MAX: usize = 0x7fff;

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

/// Reads a `T` at `off`, unaligned (byte by byte: the BPF target has no unaligned loads).
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet; read_unaligned because
    // headers are not aligned.
    ptr_at::<T>(ctx, off).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

/// Reads a `T` made of 2- or 4-byte words at `off` with one load per word, for the hot fields
/// (addresses, ports). The frame gives no alignment guarantee, and none is needed at run time:
/// the verifier checks packet alignment only under strict alignment, which the architectures
/// with efficient unaligned access (x86-64, arm64) do not use, and their JITs' loads take any
/// address. Reading through the typed pointer lets the compiler emit word loads instead of the
/// byte loads and shifts of [`read`].
#[inline(always)]
pub fn read_words<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet; see above for alignment.
    ptr_at::<T>(ctx, off).map(|p| unsafe { core::ptr::read(p) })
}

/// What [`parse_l4`] found in the L4 header.
#[derive(Clone, Copy)]
struct L4 {
    sport_be: u16,
    dport_be: u16,
    icmp_type: u8,
    icmp_error: bool,
}

/// No L4 header read (a later fragment, or a protocol without ports).
const NO_L4: L4 = L4 { sport_be: 0, dport_be: 0, icmp_type: 0, icmp_error: false };

/// Parses the frame. `Err` says why it is not an IP packet this classifier can judge. The
/// packet is built whole at the end, never zeroed first: the compiler turns zeroing into a
/// byte-wise `memset` loop on this target.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Packet, NotIp> {
    let ethertype = u16::from_be(read_words::<u16>(ctx, 12).ok_or(NotIp::Malformed)?);
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, ETH_LEN),
        ETH_P_IPV6 => parse_ipv6(ctx, ETH_LEN),
        ETH_P_ARP => Err(NotIp::Arp),
        _ => Err(NotIp::Other),
    }
}

/// The fragment position from a fragment offset and the more-fragments flag.
#[inline(always)]
fn fragment_of(offset: u16, more: bool) -> Fragment {
    if offset != 0 {
        Fragment::Later
    } else if more {
        Fragment::First
    } else {
        Fragment::None
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, off: usize) -> Result<Packet, NotIp> {
    // The whole fixed header must be there before any field of it is read.
    let [w0, w1, w2, src, dst]: [u32; 5] = read_words(ctx, off).ok_or(NotIp::Malformed)?;
    let [vihl, _, _, _] = w0.to_ne_bytes();
    if vihl >> 4 != 4 {
        return Err(NotIp::Malformed);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(NotIp::Malformed);
    }
    let [id_hi, id_lo, frag_hi, frag_lo] = w1.to_ne_bytes();
    let frag = u16::from_be_bytes([frag_hi, frag_lo]);
    let protocol = w2.to_ne_bytes()[1];
    let fragment = fragment_of(frag & 0x1fff, frag & 0x2000 != 0);
    let l4 = off + ihl;
    let ports = if fragment == Fragment::Later { NO_L4 } else { parse_l4(ctx, protocol, l4)? };
    Ok(Packet {
        src: IpKey::from_v4_word(src),
        dst: IpKey::from_v4_word(dst),
        protocol,
        sport_be: ports.sport_be,
        dport_be: ports.dport_be,
        icmp_type: ports.icmp_type,
        icmp_error: ports.icmp_error,
        fragment,
        frag_id: u32::from(u16::from_be_bytes([id_hi, id_lo])),
        ipv6: false,
        l4,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, off: usize) -> Result<Packet, NotIp> {
    let first: u8 = read(ctx, off).ok_or(NotIp::Malformed)?;
    if first >> 4 != 6 {
        return Err(NotIp::Malformed);
    }
    let mut next: u8 = read(ctx, off + 6).ok_or(NotIp::Malformed)?;
    let src = IpKey { addr: read_words(ctx, off + 8).ok_or(NotIp::Malformed)? };
    let dst = IpKey { addr: read_words(ctx, off + 24).ok_or(NotIp::Malformed)? };
    let mut fragment = Fragment::None;
    let mut frag_id = 0;
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
                frag_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                fragment = fragment_of(offset, hdr[3] & 1 != 0);
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
    let ports = if fragment == Fragment::Later { NO_L4 } else { parse_l4(ctx, next, l4)? };
    Ok(Packet {
        src,
        dst,
        protocol: next,
        sport_be: ports.sport_be,
        dport_be: ports.dport_be,
        icmp_type: ports.icmp_type,
        icmp_error: ports.icmp_error,
        fragment,
        frag_id,
        ipv6: true,
        l4,
    })
}

/// The ports (or the ICMP type and echo identifier) of the L4 header at `l4`.
#[inline(always)]
fn parse_l4(ctx: &TcContext, protocol: u8, l4: usize) -> Result<L4, NotIp> {
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let ports: [u16; 2] = read_words(ctx, l4).ok_or(NotIp::Malformed)?;
            Ok(L4 { sport_be: ports[0], dport_be: ports[1], icmp_type: 0, icmp_error: false })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let hdr: [u8; 8] = read(ctx, l4).ok_or(NotIp::Malformed)?;
            let icmp_type = hdr[0];
            let echo = if protocol == IPPROTO_ICMP {
                icmp_type == 8 || icmp_type == 0
            } else {
                icmp_type == 128 || icmp_type == 129
            };
            let icmp_error = if protocol == IPPROTO_ICMP {
                matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
            } else {
                (1..=4).contains(&icmp_type)
            };
            let id = if echo { u16::from_ne_bytes([hdr[4], hdr[5]]) } else { 0 };
            Ok(L4 { sport_be: id, dport_be: id, icmp_type, icmp_error })
        }
        _ => Ok(NO_L4),
    }
}

/// The conntrack key (on `endpoint`) of the packet an ICMP error quotes (`p.icmp_error`): that
/// packet was sent the other way, by the flow the error belongs to. `None` when the quoted
/// headers are not there.
#[inline(always)]
pub fn quoted_flow_key(ctx: &TcContext, p: &Packet, endpoint: u32) -> Option<CtKey> {
    let inner = p.l4_offset(8)?;
    let (src, dst, protocol, l4) = if p.ipv6 {
        let next = read::<u8>(ctx, inner + 6)?;
        let src = IpKey { addr: read_words(ctx, inner + 8)? };
        let dst = IpKey { addr: read_words(ctx, inner + 24)? };
        (src, dst, next, inner + 40)
    } else {
        let [w0, _, w2, src, dst]: [u32; 5] = read_words(ctx, inner)?;
        let ihl = ((w0.to_ne_bytes()[0] & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        (IpKey::from_v4_word(src), IpKey::from_v4_word(dst), w2.to_ne_bytes()[1], inner + ihl)
    };
    let ports: [u16; 2] = read(ctx, l4)?;
    let (sport_be, dport_be) = match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => (ports[0], ports[1]),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let id = read::<u16>(ctx, l4 + 4)?;
            (id, id)
        }
        _ => (0, 0),
    };
    Some(crate::conntrack::flow_key(endpoint, protocol, &src, sport_be, &dst, dport_be).0)
}

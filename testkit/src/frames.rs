//! Frame builders: Ethernet frames carrying IPv4 or IPv6 (with fragment fields and extension
//! headers) and TCP, UDP, SCTP or ICMP headers, as the classifiers parse them. Checksums are
//! left zero: the classifiers do not check them.

use std::net::IpAddr;

pub use netpol_common::{IPPROTO_ICMP as ICMP, IPPROTO_ICMPV6 as ICMPV6, IPPROTO_SCTP as SCTP, IPPROTO_TCP as TCP, IPPROTO_UDP as UDP};

/// The Ethernet header of a frame with `ethertype`.
pub fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A TCP header from `sport` to `dport`: a SYN when `syn`, else an ACK.
pub fn tcp(sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = if syn { 0x02 } else { 0x10 };
    h
}

/// A UDP header from `sport` to `dport`, its length counting `payload` more bytes.
pub fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    // A test payload is a few bytes: far below 65 535.
    h[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    h
}

/// An SCTP common header from `sport` to `dport` with an INIT chunk (tag 0).
pub fn sctp_init(sport: u16, dport: u16) -> Vec<u8> {
    sctp_init_tagged(sport, dport, 0)
}

/// An SCTP INIT from `sport` to `dport` whose verification tag, initiate tag and initial TSN are
/// `tag` (a sink can match it; no SCTP stack is there to object to the tag in the common
/// header), with its CRC32c checksum.
pub fn sctp_init_tagged(sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    let mut h = vec![0u8; 12 + 20];
    h[..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&tag.to_be_bytes());
    h[12] = 1; // INIT
    h[14..16].copy_from_slice(&20u16.to_be_bytes());
    h[16..20].copy_from_slice(&tag.to_be_bytes()); // initiate tag
    h[20..24].copy_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    h[24..26].copy_from_slice(&1u16.to_be_bytes()); // outbound streams
    h[26..28].copy_from_slice(&1u16.to_be_bytes()); // inbound streams
    h[28..32].copy_from_slice(&tag.to_be_bytes()); // initial TSN
    let crc = crc32c(&h);
    h[8..12].copy_from_slice(&crc.to_le_bytes());
    h
}

/// CRC32c (Castagnoli), as SCTP checksums it (RFC 4960 appendix B).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// An ICMP (or ICMPv6) header of type `icmp_type` with `id` as its identifier.
pub fn icmp(icmp_type: u8, id: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0] = icmp_type;
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h
}

/// The L4 header of `proto` with ports (`syn` for TCP); ICMP and ICMPv6: an echo request with
/// `sport` as its identifier.
pub fn l4(proto: u8, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    match proto {
        TCP => tcp(sport, dport, syn),
        UDP => udp(sport, dport, 0),
        SCTP => sctp_init(sport, dport),
        ICMPV6 => icmp(128, sport),
        _ => icmp(8, sport),
    }
}

/// An IPv4 packet in an Ethernet frame, with explicit identification and fragment fields
/// (`frag`: flags and offset word, host order).
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend_from_slice(&ipv4_packet(src, dst, proto, id, frag, payload));
    f
}

/// An IPv4 packet (no Ethernet header), as a raw socket sends it.
pub fn ipv4_packet(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(20 + payload.len());
    let mut h = [0u8; 20];
    h[0] = 0x45;
    // Test frames are far below 65 535 bytes.
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
    f
}

/// An IPv6 packet in an Ethernet frame, with a chain of extension headers `(type, bytes)`
/// before the payload (each header's next-header byte is filled in).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], proto: u8, ext: &[(u8, Vec<u8>)], payload: &[u8]) -> Vec<u8> {
    let mut f = eth(0x86dd);
    let mut body = Vec::new();
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let mut b = bytes.clone();
        b[0] = ext.get(i + 1).map_or(proto, |(t, _)| *t);
        body.extend_from_slice(&b);
    }
    body.extend_from_slice(payload);
    let mut h = [0u8; 40];
    h[0] = 0x60;
    // Test frames are far below 65 535 bytes.
    h[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    h[6] = ext.first().map_or(proto, |(t, _)| *t);
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    f.extend_from_slice(&h);
    f.extend_from_slice(&body);
    f
}

/// An IP packet of either family between two addresses.
pub fn ip_between(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s.octets(), d.octets(), proto, 0, 0, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s.octets(), d.octets(), proto, &[], payload),
        _ => panic!("a packet cannot go from {src} to {dst}: mixed families"),
    }
}

/// [`ip_between`] with the addresses as text.
pub fn ip(src: &str, dst: &str, proto: u8, payload: &[u8]) -> Vec<u8> {
    ip_between(src.parse().expect("a source address"), dst.parse().expect("a destination address"), proto, payload)
}

/// The first packet of a flow: `proto` with ports (a TCP SYN) between two addresses.
pub fn flow(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    ip(src, dst, proto, &l4(proto, sport, dport, true))
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_matches_the_rfc_3720_check_value() {
        assert_eq!(super::crc32c(b"123456789"), 0xe306_9283);
    }
}

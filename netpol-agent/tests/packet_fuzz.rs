//! The classifiers' packet parser under random and mutated frames, run by the kernel with
//! BPF_PROG_TEST_RUN (as tests/classifier.rs does) for an endpoint isolated both ways. A frame
//! may pass only when an independent parser (here, over the bytes) reads it as a flow the policy
//! allows, ARP, IPv6 neighbour discovery, traffic of the pod with itself, a packet of a flow
//! allowed earlier in the run (conntrack: a reply, or the next packet), a later fragment of an
//! allowed first fragment, an ICMP error about an allowed flow, or a new flow leaving the pod for
//! an address that is neither a pod nor the node (passed on: its egress is judged where it leaves
//! the node, after NAT, which BPF_PROG_TEST_RUN does not run). Every frame's verdict must
//! equal what that reading says, except that a later fragment may be dropped (its first
//! fragment's record may have been evicted).
//!
//! Needs root (skips, saying why, without it). NETPOL_PACKET_FUZZ_CASES sets the number of
//! frames (default 100 000), NETPOL_PACKET_FUZZ_SEED the generator's seed.

use std::collections::{BTreeMap, BTreeSet};

use netpol_agent::datapath::{PROG_FROM_POD, PROG_TO_POD};
use netpol_testkit::{
    datapath::{DataPath, ALLOW, DROP},
    rng::Rng,
};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: serve, containerPort: 8080}]}]}
status: {podIPs: [{ip: 198.18.0.10}, {ip: "fd00:198:18::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 198.18.0.11}, {ip: "fd00:198:18::11"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: fuzz, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}, {port: serve}, {protocol: UDP, port: 5000, endPort: 5010}, {protocol: SCTP, port: 80}]
  - from: [{ipBlock: {cidr: 198.18.2.0/24, except: [198.18.2.128/25]}}]
  egress:
  - to: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 443}]
  - to: [{ipBlock: {cidr: "fd00:198:18:5::/64"}}]
    ports: [{protocol: UDP, port: 53}]
"#;

/// Addresses in the 16-byte form the classifier compares (IPv4-mapped for IPv4).
type Addr = [u8; 16];

const fn v4(a: [u8; 4]) -> Addr {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}

const fn v6(prefix: [u8; 8], iid: u64) -> Addr {
    let i = iid.to_be_bytes();
    [prefix[0], prefix[1], prefix[2], prefix[3], prefix[4], prefix[5], prefix[6], prefix[7], i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7]]
}

const POD_NET6: [u8; 8] = [0xfd, 0, 0x01, 0x98, 0, 0x18, 0, 0];
const A4: Addr = v4([198, 18, 0, 10]);
const A6: Addr = v6(POD_NET6, 0x10);
const B4: Addr = v4([198, 18, 0, 11]);
const B6: Addr = v6(POD_NET6, 0x11);

fn is_v4(a: &Addr) -> bool {
    a[..12] == v4([0; 4])[..12]
}

/// The policy above, written out: may a new flow `peer`, `proto`, destination `port` open?
fn policy_allows(ingress: bool, peer: &Addr, proto: u8, port: u16) -> bool {
    let is_b = *peer == B4 || *peer == B6;
    if ingress {
        let from_b = is_b && matches!((proto, port), (6, 80) | (6, 8080) | (17, 5000..=5010) | (132, 80));
        // 198.18.2.0/24 except 198.18.2.128/25, every protocol.
        let block = is_v4(peer) && peer[12..15] == [198, 18, 2] && peer[15] < 128;
        from_b || block
    } else {
        let to_b = is_b && (proto, port) == (6, 443);
        let block = peer[..8] == [0xfd, 0, 0x01, 0x98, 0, 0x18, 0, 5] && (proto, port) == (17, 53);
        to_b || block
    }
}

/// A frame as the independent parser reads it.
#[derive(Debug)]
enum Parsed {
    Arp,
    NotIp,
    Malformed,
    TooManyExtHeaders,
    Ip(Packet),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragment {
    None,
    First,
    Later,
}

#[derive(Debug)]
struct Packet {
    src: Addr,
    dst: Addr,
    proto: u8,
    /// Ports (ICMP echo: the identifier both ways; other ICMP: 0).
    sport: u16,
    dport: u16,
    icmp_type: u8,
    icmp_error: bool,
    fragment: Fragment,
    frag_id: u32,
    ipv6: bool,
    l4: usize,
}

fn get<const N: usize>(f: &[u8], at: usize) -> Option<[u8; N]> {
    f.get(at..at + N).map(|s| s.try_into().expect("N bytes"))
}

fn parse(f: &[u8]) -> Parsed {
    let Some(et) = get::<2>(f, 12) else { return Parsed::Malformed };
    let ip = match u16::from_be_bytes(et) {
        0x0800 => parse_v4(f),
        0x86dd => parse_v6(f),
        0x0806 => return Parsed::Arp,
        _ => return Parsed::NotIp,
    };
    ip.unwrap_or(Parsed::Malformed)
}

fn fragment(offset: u16, more: bool) -> Fragment {
    match (offset, more) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    }
}

/// `None`: malformed.
fn parse_v4(f: &[u8]) -> Option<Parsed> {
    let h = get::<20>(f, 14)?;
    if h[0] >> 4 != 4 || (h[0] & 15) < 5 {
        return None;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let fragment = fragment(frag & 0x1fff, frag & 0x2000 != 0);
    let l4 = 14 + usize::from(h[0] & 15) * 4;
    let (sport, dport, icmp_type, icmp_error) = if fragment == Fragment::Later { (0, 0, 0, false) } else { parse_l4(f, h[9], l4, false)? };
    Some(Parsed::Ip(Packet {
        src: v4([h[12], h[13], h[14], h[15]]),
        dst: v4([h[16], h[17], h[18], h[19]]),
        proto: h[9],
        sport,
        dport,
        icmp_type,
        icmp_error,
        fragment,
        frag_id: u32::from(u16::from_be_bytes([h[4], h[5]])),
        ipv6: false,
        l4,
    }))
}

fn parse_v6(f: &[u8]) -> Option<Parsed> {
    let h = get::<40>(f, 14)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let (src, dst): (Addr, Addr) = (h[8..24].try_into().ok()?, h[24..40].try_into().ok()?);
    // IPv4-mapped addresses (::ffff:0:0/96) never appear on an IPv6 wire.
    let mapped = |a: &Addr| a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if mapped(&src) || mapped(&dst) {
        return None;
    }
    let mut next = h[6];
    let mut at = 14 + 40;
    let (mut fragment_pos, mut frag_id) = (Fragment::None, 0);
    // At most six extension headers are walked; a seventh is refused.
    for _ in 0..6 {
        match next {
            0 | 43 | 60 => {
                let e = get::<2>(f, at)?;
                next = e[0];
                at += (usize::from(e[1]) + 1) * 8;
            }
            51 => {
                let e = get::<2>(f, at)?;
                next = e[0];
                at += (usize::from(e[1]) + 2) * 4;
            }
            44 => {
                let e = get::<8>(f, at)?;
                next = e[0];
                fragment_pos = fragment(u16::from_be_bytes([e[2], e[3]]) >> 3, e[3] & 1 != 0);
                frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                at += 8;
            }
            _ => break,
        }
    }
    if matches!(next, 0 | 43 | 60 | 51 | 44) {
        return Some(Parsed::TooManyExtHeaders);
    }
    let (sport, dport, icmp_type, icmp_error) = if fragment_pos == Fragment::Later { (0, 0, 0, false) } else { parse_l4(f, next, at, true)? };
    Some(Parsed::Ip(Packet { src, dst, proto: next, sport, dport, icmp_type, icmp_error, fragment: fragment_pos, frag_id, ipv6: true, l4: at }))
}

/// Ports, ICMP type and whether it is an ICMP error; `None` when the header is cut short.
fn parse_l4(f: &[u8], proto: u8, at: usize, ipv6: bool) -> Option<(u16, u16, u8, bool)> {
    match proto {
        6 | 17 | 132 => {
            let p = get::<4>(f, at)?;
            Some((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]), 0, false))
        }
        1 | 58 => {
            let h = get::<8>(f, at)?;
            let t = h[0];
            let (echo, error) = if proto == 1 { (t == 8 || t == 0, matches!(t, 3 | 4 | 5 | 11 | 12)) } else { (t == 128 || t == 129, (1..=4).contains(&t)) };
            let _ = ipv6;
            let id = if echo { u16::from_be_bytes([h[4], h[5]]) } else { 0 };
            Some((id, id, t, error))
        }
        _ => Some((0, 0, 0, false)),
    }
}

/// A flow regardless of direction: the protocol and its two ends, sorted.
type FlowKey = (u8, (Addr, u16), (Addr, u16));

fn flow_key(proto: u8, a: (Addr, u16), b: (Addr, u16)) -> FlowKey {
    if a <= b {
        (proto, a, b)
    } else {
        (proto, b, a)
    }
}

/// The flow an ICMP error quotes (the packet it is about, as sent), if its headers are there.
fn quoted_flow(f: &[u8], p: &Packet) -> Option<FlowKey> {
    let inner = p.l4 + 8;
    let (src, dst, proto, l4): (Addr, Addr, u8, usize) = if p.ipv6 {
        let h = get::<40>(f, inner)?;
        (h[8..24].try_into().ok()?, h[24..40].try_into().ok()?, h[6], inner + 40)
    } else {
        let h = get::<20>(f, inner)?;
        let ihl = usize::from(h[0] & 15) * 4;
        if ihl < 20 {
            return None;
        }
        (v4([h[12], h[13], h[14], h[15]]), v4([h[16], h[17], h[18], h[19]]), h[9], inner + ihl)
    };
    let ports = get::<4>(f, l4)?;
    let (sp, dp) = match proto {
        6 | 17 | 132 => (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]])),
        1 | 58 => {
            let id = get::<2>(f, l4 + 4)?;
            (u16::from_be_bytes(id), u16::from_be_bytes(id))
        }
        _ => (0, 0),
    };
    Some(flow_key(proto, (src, sp), (dst, dp)))
}

/// Why the reading says a frame passes (or that it does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    Arp,
    NeighbourDiscovery,
    SelfTraffic,
    Fragment,
    Related,
    Established,
    Policy,
    /// Leaving the pod for an address that is neither a pod nor the node: passed on (and
    /// tracked), its egress judged where it leaves the node, after NAT.
    Deferred,
    Drop,
}

/// The allowed flows and first fragments seen so far (what conntrack and the fragment map hold).
#[derive(Default)]
struct Tracked {
    flows: BTreeSet<FlowKey>,
    fragments: BTreeSet<(Addr, Addr, u32, u8)>,
}

fn own(a: &Addr) -> bool {
    *a == A4 || *a == A6
}

/// Whether an ARP frame leaving the pod speaks for the pod's own IPv4 address (or for no address:
/// a probe from 0.0.0.0, or ARP about another protocol); a truncated one speaks for nobody.
fn arp_speaks_for_own(f: &[u8]) -> bool {
    let Some(h) = get::<8>(f, 14) else { return false };
    if h[2..4] != [0x08, 0x00] || h[5] != 4 {
        return true;
    }
    let Some(spa) = get::<4>(f, 28) else { return false };
    spa == [0; 4] || A4[12..] == spa
}

/// The reading of one frame entering (`ingress`) or leaving the pod.
fn judge(f: &[u8], ingress: bool, t: &Tracked) -> Why {
    let p = match parse(f) {
        Parsed::Arp if !ingress && !arp_speaks_for_own(f) => return Why::Drop,
        Parsed::Arp => return Why::Arp,
        // The endpoint is isolated both ways: anything else that is not IP is dropped.
        Parsed::NotIp | Parsed::Malformed | Parsed::TooManyExtHeaders => return Why::Drop,
        Parsed::Ip(p) => p,
    };
    let (mine, peer) = if ingress { (&p.dst, &p.src) } else { (&p.src, &p.dst) };
    let link_local_icmpv6 = p.ipv6 && p.proto == 58 && ((p.src[0] == 0xfe && p.src[1] & 0xc0 == 0x80) || p.src == [0; 16]);
    if !ingress && !own(mine) && !link_local_icmpv6 {
        return Why::Drop;
    }
    if p.proto == 58 && matches!(p.icmp_type, 130..=137 | 143) {
        // A neighbour advertisement from the pod must be for its own (or a link-local) address.
        if !ingress && p.icmp_type == 136 {
            let target: Option<Addr> = get::<16>(f, p.l4 + 8);
            if !target.is_some_and(|t| own(&t) || (t[0] == 0xfe && t[1] & 0xc0 == 0x80)) {
                return Why::Drop;
            }
        }
        return Why::NeighbourDiscovery;
    }
    if own(peer) {
        return Why::SelfTraffic;
    }
    if p.fragment == Fragment::Later {
        return if t.fragments.contains(&(p.src, p.dst, p.frag_id, p.proto)) { Why::Fragment } else { Why::Drop };
    }
    if p.icmp_error && quoted_flow(f, &p).is_some_and(|k| t.flows.contains(&k)) {
        return Why::Related;
    }
    if t.flows.contains(&flow_key(p.proto, (p.src, p.sport), (p.dst, p.dport))) {
        return Why::Established;
    }
    // The ipcache holds the two pods' addresses (no node addresses in this test).
    if !ingress && ![A4, A6, B4, B6].contains(peer) {
        return Why::Deferred;
    }
    if policy_allows(ingress, peer, p.proto, p.dport) {
        Why::Policy
    } else {
        Why::Drop
    }
}

/// What an allowed frame leaves behind: a tracked flow, a remembered first fragment.
fn record(f: &[u8], why: Why, t: &mut Tracked) {
    let Parsed::Ip(p) = parse(f) else { return };
    if matches!(why, Why::Policy | Why::Deferred) {
        t.flows.insert(flow_key(p.proto, (p.src, p.sport), (p.dst, p.dport)));
    }
    if matches!(why, Why::Policy | Why::Deferred | Why::Established) && p.fragment == Fragment::First {
        t.fragments.insert((p.src, p.dst, p.frag_id, p.proto));
    }
}

/// Frame builders (checksums are not checked).
/// The kit's frames, addressed by the 16-byte form ([`Addr`]).
mod frame {
    use netpol_testkit::frames::{self, ICMP, ICMPV6};

    use super::Addr;

    pub use frames::eth;

    /// The L4 header of `proto` (a TCP SYN); ICMP and ICMPv6 of type `icmp_type`, with `sport`
    /// as the identifier.
    pub fn l4(proto: u8, sport: u16, dport: u16, icmp_type: u8) -> Vec<u8> {
        match proto {
            ICMP | ICMPV6 => frames::icmp(icmp_type, sport),
            _ => frames::l4(proto, sport, dport, true),
        }
    }

    /// IPv4 (`frag`: flags and offset word) or IPv6 (extension headers `ext`: type and bytes).
    pub fn ip(src: &Addr, dst: &Addr, proto: u8, frag: u16, id: u16, ext: &[(u8, Vec<u8>)], payload: &[u8]) -> Vec<u8> {
        if super::is_v4(src) {
            let v4 = |a: &Addr| [a[12], a[13], a[14], a[15]];
            frames::ipv4(v4(src), v4(dst), proto, id, frag, payload)
        } else {
            frames::ipv6(*src, *dst, proto, ext, payload)
        }
    }
}

/// Valid frames of every kind the parser knows, each with the direction it is meant for
/// (`true`: entering the pod).
fn seeds() -> Vec<(Vec<u8>, bool)> {
    use frame::{ip, l4};
    let net2 = v4([198, 18, 2, 5]);
    let net2_except = v4([198, 18, 2, 200]);
    let dns6 = v6([0xfd, 0, 0x01, 0x98, 0, 0x18, 0, 5], 0x53);
    let other6 = v6(POD_NET6, 0x99);
    let hbh = (0u8, vec![0u8, 0, 1, 4, 0, 0, 0, 0]);
    let dst_opts = (60u8, vec![0u8, 0, 1, 4, 0, 0, 0, 0]);
    let routing = (43u8, vec![0u8, 0, 0, 0, 0, 0, 0, 0]);
    let frag6_first = (44u8, vec![0u8, 0, 0, 1, 0, 0, 0, 7]);
    let frag6_later = (44u8, vec![0u8, 0, 0, 0x10, 0, 0, 0, 7]);
    let mut out = Vec::new();
    for (src, dst) in [(B4, A4), (B6, A6)] {
        for (proto, port) in [(6u8, 80u16), (6, 81), (6, 8080), (17, 5005), (17, 5011), (132, 80), (1, 0), (58, 0)] {
            let proto = match (proto, super_is_v4(&src)) {
                (58, true) => 1,
                (1, false) => 58,
                (p, _) => p,
            };
            let t = if proto == 1 { 8 } else { 128 };
            out.push((ip(&src, &dst, proto, 0, 1, &[], &l4(proto, 40000, port, t)), true));
        }
        // Replies to the pod's own connection to b:443, and that connection's first packet.
        out.push((ip(&dst, &src, 6, 0, 1, &[], &l4(6, 40000, 443, 0)), false));
        out.push((ip(&src, &dst, 6, 0, 1, &[], &l4(6, 443, 40000, 0)), true));
    }
    fn super_is_v4(a: &Addr) -> bool {
        is_v4(a)
    }
    for src in [net2, net2_except] {
        out.push((ip(&src, &A4, 1, 0, 1, &[], &l4(1, 7, 0, 8)), true));
        out.push((ip(&src, &A4, 47, 0, 1, &[], &[0u8; 16]), true));
        out.push((ip(&src, &A4, 17, 0, 1, &[], &l4(17, 1, 9999, 0)), true));
    }
    // IPv4 fragments: a first fragment to an allowed port and a later one; the same denied.
    for port in [80u16, 81] {
        out.push((ip(&B4, &A4, 6, 0x2000, port, &[], &l4(6, 40000, port, 0)), true));
        out.push((ip(&B4, &A4, 6, 0x0003, port, &[], &[0u8; 16]), true));
    }
    // IPv6 behind extension headers, fragments among them.
    for ext in [vec![hbh.clone()], vec![hbh.clone(), dst_opts.clone(), routing.clone()], vec![frag6_first.clone()], vec![frag6_later.clone()]] {
        out.push((ip(&B6, &A6, 6, 0, 0, &ext, &l4(6, 40000, 80, 0)), true));
        out.push((ip(&B6, &A6, 17, 0, 0, &ext, &l4(17, 40000, 5000, 0)), true));
    }
    let long: Vec<(u8, Vec<u8>)> = std::iter::once(hbh).chain(std::iter::repeat_n(dst_opts, 6)).collect();
    out.push((ip(&B6, &A6, 6, 0, 0, &long, &l4(6, 40000, 80, 0)), true));
    // Egress: allowed and denied, and a forged source.
    out.push((ip(&A4, &B4, 6, 0, 1, &[], &l4(6, 40001, 443, 0)), false));
    out.push((ip(&A4, &B4, 6, 0, 1, &[], &l4(6, 40001, 80, 0)), false));
    out.push((ip(&A6, &dns6, 17, 0, 0, &[], &l4(17, 40002, 53, 0)), false));
    out.push((ip(&A6, &dns6, 17, 0, 0, &[], &l4(17, 40002, 54, 0)), false));
    out.push((ip(&other6, &dns6, 17, 0, 0, &[], &l4(17, 40002, 53, 0)), false));
    out.push((ip(&A4, &A4, 6, 0, 1, &[], &l4(6, 1, 2, 0)), false));
    // ICMP errors quoting the pod's connection to b:443 (as the pod sent it) and another flow.
    for (quoted_dport, v6) in [(443u16, false), (444, false), (443, true)] {
        let (a, b) = if v6 { (A6, B6) } else { (A4, B4) };
        let quoted = ip(&a, &b, 6, 0, 1, &[], &l4(6, 40000, quoted_dport, 0));
        let (proto, t) = if v6 { (58, 1) } else { (1, 3) };
        let mut payload = l4(proto, 0, 0, t);
        payload.extend_from_slice(&quoted[14..]);
        out.push((ip(&b, &a, proto, 0, 1, &[], &payload), true));
    }
    // Neighbour discovery and ARP.
    let ll = v6([0xfe, 0x80, 0, 0, 0, 0, 0, 0], 1);
    out.push((ip(&ll, &A6, 58, 0, 0, &[], &l4(58, 0, 0, 135)), true));
    out.push((ip(&ll, &v6([0xff, 2, 0, 0, 0, 0, 0, 0], 1), 58, 0, 0, &[], &l4(58, 0, 0, 133)), false));
    let mut arp = frame::eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 18, 0, 11, 0, 0, 0, 0, 0, 0, 198, 18, 0, 10]);
    out.push((arp.clone(), true));
    out.push((arp, false));
    let mut other = frame::eth(0x88cc);
    other.extend_from_slice(&[0u8; 46]);
    out.push((other, true));
    out
}

/// xorshift64*.
/// A seed with random damage: flipped bits, overwritten bytes (mostly in the headers), a cut,
/// random bytes appended; or a frame of random bytes of a random length (0..1600) with an IP
/// ethertype now and then.
fn mutate(rng: &mut Rng, seeds: &[(Vec<u8>, bool)]) -> (Vec<u8>, bool) {
    if rng.below(8) == 0 {
        let mut f: Vec<u8> = (0..rng.below(1600)).map(|_| rng.next_u64() as u8).collect();
        if f.len() >= 14 && rng.below(2) == 0 {
            let et: u16 = if rng.below(2) == 0 { 0x0800 } else { 0x86dd };
            f[12..14].copy_from_slice(&et.to_be_bytes());
            if f.len() > 14 {
                f[14] = if et == 0x0800 { 0x45 } else { 0x60 };
            }
        }
        return (f, rng.below(2) == 0);
    }
    let (seed, ingress) = &seeds[rng.below(seeds.len())];
    let mut f = seed.clone();
    for _ in 0..1 + rng.below(4) {
        if f.is_empty() {
            break;
        }
        // Mostly the first 100 bytes: the headers.
        let at = if rng.below(4) == 0 { rng.below(f.len()) } else { rng.below(f.len().min(100)) };
        match rng.below(5) {
            0 | 1 => f[at] ^= 1 << rng.below(8),
            2 => f[at] = rng.next_u64() as u8,
            3 => f.truncate(at + rng.below(8)),
            _ => f.extend((0..rng.below(64)).map(|_| rng.next_u64() as u8)),
        }
    }
    let ingress = if rng.below(5) == 0 { !ingress } else { *ingress };
    (f, ingress)
}

/// Frames BPF_PROG_TEST_RUN does not run (EINVAL): shorter than an Ethernet header, or with an
/// IP ethertype and shorter than the fixed IP header. These never reach the classifier here.
fn refused_by_kernel(f: &[u8]) -> bool {
    match get::<2>(f, 12).map(u16::from_be_bytes) {
        None => true,
        Some(0x0800) => f.len() < 14 + 20,
        Some(0x86dd) => f.len() < 14 + 40,
        Some(_) => false,
    }
}

#[test]
fn a_frame_passes_only_when_it_parses_as_something_the_policy_or_protocol_allows() {
    let cases: u64 = std::env::var("NETPOL_PACKET_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let seed: u64 = std::env::var("NETPOL_PACKET_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x9e37_79b9);
    let Some(mut dp) = DataPath::load("netpol-packet-fuzz") else { return };
    dp.program_yaml(MANIFESTS, &[(("x", "a"), 1)]);
    // The kernel refuses frames shorter than an Ethernet header.
    let mut run = |frame: &[u8], ingress: bool| dp.try_run(if ingress { PROG_TO_POD } else { PROG_FROM_POD }, frame).map_err(|e| format!("{e:?}"));
    let mut tracked = Tracked::default();
    let mut counts: BTreeMap<(Why, bool), u64> = BTreeMap::new();
    let mut refused = 0u64;
    let mut dropped_later_fragments = 0u64;
    let mut check = |frame: &[u8], ingress: bool, what: &str, tracked: &mut Tracked| {
        let why = judge(frame, ingress, tracked);
        let verdict = match run(frame, ingress) {
            Ok(v) => v,
            Err(e) => {
                let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
                assert!(refused_by_kernel(frame), "BPF_PROG_TEST_RUN refused a {}-byte frame: {e}\nframe: {hex}", frame.len());
                refused += 1;
                return;
            }
        };
        assert!(verdict == ALLOW || verdict == DROP, "verdict {verdict}");
        let allowed = verdict == ALLOW;
        *counts.entry((why, allowed)).or_default() += 1;
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        let dir = if ingress { "entering" } else { "leaving" };
        if allowed {
            assert!(why != Why::Drop, "{what} {dir} the pod passed, but it parses as {:?}\nframe: {hex}", parse(frame));
            record(frame, why, tracked);
        } else if why == Why::Fragment {
            dropped_later_fragments += 1;
        } else {
            assert!(why == Why::Drop, "{what} {dir} the pod was dropped, but it parses as allowed ({why:?}): {:?}\nframe: {hex}", parse(frame));
        }
    };
    let seeds = seeds();
    // The seeds themselves, twice (the second time some are packets of flows now tracked).
    for _ in 0..2 {
        for (f, ingress) in &seeds {
            check(f, *ingress, "a seed frame", &mut tracked);
        }
    }
    let mut rng = Rng::new(seed);
    for _ in 0..cases {
        let (f, ingress) = mutate(&mut rng, &seeds);
        check(&f, ingress, "a mutated frame", &mut tracked);
    }
    eprintln!("{cases} mutated frames + {} seeds x2; not run (shorter than Ethernet or the IP header): {refused}", seeds.len());
    for ((why, allowed), n) in &counts {
        eprintln!("  {why:?} {}: {n}", if *allowed { "passed" } else { "dropped" });
    }
    eprintln!("  tracked flows: {}, first fragments: {}", tracked.flows.len(), tracked.fragments.len());
    // The run exercised every way through.
    for why in [Why::Arp, Why::NeighbourDiscovery, Why::SelfTraffic, Why::Fragment, Why::Related, Why::Established, Why::Policy] {
        assert!(counts.get(&(why, true)).is_some_and(|n| *n > 0), "no frame passed as {why:?}");
    }
    assert!(counts.get(&(Why::Drop, false)).is_some_and(|n| *n > 0));
    let counters = dp.counters();
    eprintln!("  counters: {:?}", counters.iter().filter(|(_, v)| **v > 0).collect::<Vec<_>>());
}

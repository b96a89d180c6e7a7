//! Anti-spoofing at the link layer (issue 4): on a bridge, a pod must not steal another pod's
//! traffic by answering ARP or advertising Neighbor Advertisements for the other pod's address.
//!
//! Each test first runs the attack without the agent and shows it working (the victim's
//! neighbour entry for the other pod is poisoned with the attacker's MAC), then runs it again
//! with the agent and shows it failing: the entry keeps the right MAC, traffic still reaches the
//! right pod, the attacker's egress `drop_spoofed` counter moved, and the attacker's own
//! address resolution keeps working.
//!
//! Frames are crafted and sent on an AF_PACKET socket on the attacker pod's `eth0`; they go only
//! to the victim pod's MAC on the sandbox's bridge (198.18.0.0/15, fd00:198:18::/48).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use netpol_sandbox::{netns, privileged, Cluster, Pod, Protocol, Shape};

const PORTS: &[(&str, u16, &str)] = &[("http", 80, "TCP")];

/// How many forged frames each attack sends.
const FORGED: u64 = 3;

type Mac = [u8; 6];

fn fmt_mac(m: &Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<Result<_, _>>().ok()?;
    parts.try_into().ok()
}

/// Pods x/a (victim), x/b (whose address is stolen) and x/c (attacker) on one bridge node, no
/// policies, `locktime` 0 on a's `eth0` so that an ARP reply may override a fresh entry at once.
fn three_pods() -> Cluster {
    let mut c = Cluster::new(&[Shape::Bridge]).expect("node");
    c.namespace("x", &[]).expect("ns");
    for p in ["a", "b", "c"] {
        c.add_pod(0, "x", p, &[("pod", p)], PORTS).expect("pod");
    }
    netns::sysctl(&c.pod("x", "a").netns, "net.ipv4.neigh.eth0.locktime", "0").expect("locktime");
    c
}

/// Runs `ip -n NETNS -j ARGS...` and parses its JSON output.
fn ip_json(netns: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("ip").args(["-n", netns, "-j"]).args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// A pod's `eth0` MAC address.
fn mac_of(pod: &Pod) -> Mac {
    let link = ip_json(&pod.netns, &["link", "show", "dev", "eth0"]);
    parse_mac(link[0]["address"].as_str().expect("address")).expect("a MAC")
}

/// The MAC (and state) `netns`'s neighbour table holds for `addr` on `eth0`, if any.
fn neighbour(netns: &str, addr: &str) -> Option<(Mac, String)> {
    let family = if addr.contains(':') { "-6" } else { "-4" };
    let entries = ip_json(netns, &[family, "neigh", "show", "to", addr, "dev", "eth0"]);
    let e = entries.as_array()?.first()?;
    let mac = parse_mac(e["lladdr"].as_str()?)?;
    let state = e["state"].as_array().map(|s| s.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default();
    Some((mac, state))
}

/// Forgets every neighbour of `netns`'s `eth0`.
fn flush_neighbours(netns: &str) {
    netns::ip(&["-n", netns, "neigh", "flush", "dev", "eth0"]).expect("flush");
}

/// Makes x/a learn x/b's MAC (over IPv4 or IPv6) with a real connection, and checks it did.
fn learn(c: &Cluster, ipv6: bool, b_mac: &Mac) {
    let b = c.pod("x", "b");
    let addr = if ipv6 { b.ipv6.to_string() } else { b.ipv4.to_string() };
    flush_neighbours(&c.pod("x", "a").netns);
    assert!(c.probe(("x", "a"), ("x", "b"), 80, Protocol::Tcp, ipv6), "x/a reaches x/b at {addr}");
    let learnt = neighbour(&c.pod("x", "a").netns, &addr);
    eprintln!("x/a's neighbour entry for x/b ({addr}) after a connection: {}", describe(&learnt));
    assert_eq!(learnt.map(|l| l.0), Some(*b_mac), "x/a learnt x/b's MAC");
    // ARP's locktime is compared with whole jiffies: let a few pass.
    std::thread::sleep(Duration::from_millis(50));
}

fn describe(entry: &Option<(Mac, String)>) -> String {
    match entry {
        Some((mac, state)) => format!("{} ({state})", fmt_mac(mac)),
        None => "none".to_string(),
    }
}

/// Sends `frames` on `netns`'s `eth0` through an AF_PACKET socket, each `interval` apart.
fn send_frames(netns: &str, frames: &[Vec<u8>], dst: &Mac, ethertype: u16, interval: Duration) {
    netns::within(netns, || {
        // SAFETY: plain socket(2); the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ethertype.to_be())) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        assert!(ifindex > 0, "no eth0 in {netns}");
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are filled in below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(dst);
        for (i, frame) in frames.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(interval);
            }
            // SAFETY: frame and sll outlive the call; the lengths are theirs.
            let n = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(n, frame.len() as isize, "sendto: {}", std::io::Error::last_os_error());
        }
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
    })
    .expect("netns");
}

/// An Ethernet frame header.
fn ethernet(dst: &Mac, src: &Mac, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(86);
    f.extend_from_slice(dst);
    f.extend_from_slice(src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An unsolicited ARP reply to `to_mac`/`to_ip` claiming that `claimed_ip` is at `sender_mac`.
fn arp_reply(sender_mac: &Mac, claimed_ip: Ipv4Addr, to_mac: &Mac, to_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(to_mac, sender_mac, 0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]); // Ethernet, IPv4, hlen 6, plen 4, reply
    f.extend_from_slice(sender_mac);
    f.extend_from_slice(&claimed_ip.octets());
    f.extend_from_slice(to_mac);
    f.extend_from_slice(&to_ip.octets());
    f.resize(60, 0); // the Ethernet minimum, as a NIC would pad it
    f
}

/// An unsolicited Neighbor Advertisement (Override set, Solicited clear) from `src_mac`/`src_ip`
/// to `to_mac`/`to_ip`, claiming that `target` is at `src_mac` (Target Link-Layer Address).
fn neighbour_advert(src_mac: &Mac, src_ip: Ipv6Addr, to_mac: &Mac, to_ip: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0]; // type NA, code 0, checksum, flags: O
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[2, 1]); // option: Target Link-Layer Address, 8 bytes
    icmp.extend_from_slice(src_mac);
    let checksum = icmpv6_checksum(src_ip, to_ip, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut f = ethernet(to_mac, src_mac, 0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class, no flow label
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // next header ICMPv6, hop limit 255 (as ND requires)
    f.extend_from_slice(&src_ip.octets());
    f.extend_from_slice(&to_ip.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum (RFC 4443 2.3) over the IPv6 pseudo-header and the message.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + msg.len() + 1);
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 58]);
    data.extend_from_slice(msg);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let mut sum: u32 = data.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// x/c's egress `drop_spoofed` count, from a status written after now.
fn spoofed_from_c(c: &mut Cluster) -> u64 {
    let before = c.agent(0).status().and_then(|s| s["syncs"].as_u64()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = c.agent(0).status().expect("status");
        // Two syncs later, the counters were read after the packets.
        if status["syncs"].as_u64().unwrap_or(0) >= before + 2 {
            return status["packets"]["x/c"]["egress"]["drop_spoofed"].as_u64().unwrap_or(0);
        }
        assert!(Instant::now() < deadline, "the agent did not sync again: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What one attack left in x/a's neighbour table for x/b's address.
fn attack(c: &Cluster, ipv6: bool, macs: (&Mac, &Mac, &Mac)) -> Option<(Mac, String)> {
    let (a_mac, b_mac, c_mac) = macs;
    let (a, b, attacker) = (c.pod("x", "a"), c.pod("x", "b"), c.pod("x", "c"));
    learn(c, ipv6, b_mac);
    let (frames, ethertype, target) = if ipv6 {
        let na = neighbour_advert(c_mac, attacker.ipv6, a_mac, a.ipv6, b.ipv6);
        (vec![na; FORGED as usize], 0x86dd, b.ipv6.to_string())
    } else {
        let reply = arp_reply(c_mac, b.ipv4, a_mac, a.ipv4);
        (vec![reply; FORGED as usize], 0x0806, b.ipv4.to_string())
    };
    let what = if ipv6 { "Neighbor Advertisements" } else { "ARP replies" };
    eprintln!("x/c ({}) sends {FORGED} forged {what} to x/a ({}): {target} is at {}", fmt_mac(c_mac), fmt_mac(a_mac), fmt_mac(c_mac));
    send_frames(&attacker.netns, &frames, a_mac, ethertype, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(300));
    let entry = neighbour(&a.netns, &target);
    eprintln!("x/a's neighbour entry for x/b ({target}) after the attack: {}", describe(&entry));
    entry
}

/// The whole scenario for one family: the attack works without the agent, not with it.
fn attack_is_stopped(ipv6: bool) {
    let mut c = three_pods();
    let (a_mac, b_mac, c_mac) = (mac_of(c.pod("x", "a")), mac_of(c.pod("x", "b")), mac_of(c.pod("x", "c")));
    eprintln!("MACs: x/a {}, x/b {}, x/c {}", fmt_mac(&a_mac), fmt_mac(&b_mac), fmt_mac(&c_mac));
    assert!(a_mac != b_mac && b_mac != c_mac && a_mac != c_mac, "three different MACs");
    let macs = (&a_mac, &b_mac, &c_mac);

    eprintln!("-- without the agent");
    let poisoned = attack(&c, ipv6, macs);
    assert_eq!(poisoned.map(|e| e.0), Some(c_mac), "without the agent the attack works: x/a's entry for x/b points at x/c");

    eprintln!("-- with the agent");
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("sync");
    let before = spoofed_from_c(&mut c);
    let entry = attack(&c, ipv6, macs);
    assert_eq!(entry.map(|e| e.0), Some(b_mac), "with the agent x/a's entry for x/b keeps x/b's MAC");
    assert!(c.probe(("x", "a"), ("x", "b"), 80, Protocol::Tcp, ipv6), "x/a still reaches x/b");
    let after = spoofed_from_c(&mut c);
    eprintln!("x/c egress drop_spoofed: {before} -> {after}");
    assert!(after >= before + FORGED, "x/c's {FORGED} forged frames are counted as drop_spoofed: {before} -> {after}");

    // x/c's own address resolution (for its own address) still works both ways.
    flush_neighbours(&c.pod("x", "c").netns);
    flush_neighbours(&c.pod("x", "a").netns);
    assert!(c.probe(("x", "c"), ("x", "a"), 80, Protocol::Tcp, ipv6), "x/c, resolving x/a afresh, reaches x/a");
    assert!(c.probe(("x", "a"), ("x", "c"), 80, Protocol::Tcp, ipv6), "x/a, resolving x/c afresh, reaches x/c");
    let addr = if ipv6 { c.pod("x", "c").ipv6.to_string() } else { c.pod("x", "c").ipv4.to_string() };
    let own = neighbour(&c.pod("x", "a").netns, &addr);
    eprintln!("x/a's neighbour entry for x/c ({addr}): {}", describe(&own));
    assert_eq!(own.map(|e| e.0), Some(c_mac), "x/a learnt x/c's own address from x/c");
    let after_own = spoofed_from_c(&mut c);
    assert_eq!(after_own, after, "x/c's own ARP/ND is not counted as spoofed");
}

#[test]
fn a_pod_cannot_answer_arp_for_another_pods_address() {
    if !privileged() {
        return;
    }
    attack_is_stopped(false);
}

#[test]
fn a_pod_cannot_advertise_another_pods_ipv6_address() {
    if !privileged() {
        return;
    }
    attack_is_stopped(true);
}

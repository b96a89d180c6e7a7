//! Probes: real connection attempts from inside a pod (or the node) to an address and port.
//! TCP connects and reads the server's banner; UDP sends and waits for the echo; SCTP sends a
//! crafted INIT on a raw socket and checks that the destination pod's sink saw it.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use netpol_testkit::frames;

use crate::{netns, node::random_u32, servers::SctpSeen};

/// L4 protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (crafted packets).
    Sctp,
}

impl Protocol {
    /// Parses "TCP", "UDP" or "SCTP".
    pub fn parse(s: &str) -> Self {
        match s {
            "UDP" => Self::Udp,
            "SCTP" => Self::Sctp,
            _ => Self::Tcp,
        }
    }
}

/// Where a probe goes: the address, port and protocol, and for SCTP the sink of the
/// destination pod.
#[derive(Clone)]
pub struct Target {
    /// Destination address.
    pub addr: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// The destination pod's SCTP sink (SCTP probes only).
    pub sctp_sink: Option<SctpSeen>,
}

/// How long a probe waits before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(600);

/// Probes `target` from inside network namespace `from`. True when the connection opened.
pub fn probe(from: &str, target: &Target) -> bool {
    match target.protocol {
        Protocol::Tcp => netns::within(from, || TcpStream::connect_timeout(&SocketAddr::new(target.addr, target.port), PROBE_TIMEOUT))
            .ok()
            .and_then(Result::ok)
            .is_some_and(|mut s| {
                let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
                let mut b = [0u8; 64];
                s.read(&mut b).is_ok_and(|n| n > 0)
            }),
        Protocol::Udp => {
            let bind: SocketAddr = if target.addr.is_ipv4() { "0.0.0.0:0".parse().expect("literal") } else { "[::]:0".parse().expect("literal") };
            netns::within(from, || UdpSocket::bind(bind)).ok().and_then(Result::ok).is_some_and(|s| udp_round_trip(&s, target))
        }
        Protocol::Sctp => netns::within(from, || send_sctp_init(target)).ok().flatten().is_some_and(|tag| sctp_arrived(target, tag)),
    }
}

fn udp_round_trip(s: &UdpSocket, target: &Target) -> bool {
    let token = random_u32().to_be_bytes();
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let _ = s.set_read_timeout(Some(Duration::from_millis(150)));
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        if s.send_to(&token, SocketAddr::new(target.addr, target.port)).is_err() {
            return false;
        }
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if buf[..n] == token {
                return true;
            }
        }
    }
    false
}

/// Sends an SCTP INIT with a random verification tag from a raw socket in the current
/// namespace; returns the tag.
fn send_sctp_init(target: &Target) -> Option<u32> {
    let tag = random_u32();
    let sport = 30000 + (random_u32() % 20000) as u16;
    let pkt = frames::sctp_init_tagged(sport, target.port, tag);
    let fd = crate::servers::raw_sctp(target.addr.is_ipv6()).ok()?;
    let sent = match target.addr {
        IpAddr::V4(a) => {
            let sa = libc::sockaddr_in { sin_family: libc::AF_INET as u16, sin_port: 0, sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) }, sin_zero: [0; 8] };
            // SAFETY: sendto with a valid buffer and sockaddr_in of the right size.
            unsafe { libc::sendto(fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len(), 0, std::ptr::from_ref(&sa).cast(), std::mem::size_of_val(&sa) as u32) }
        }
        IpAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, with sockaddr_in6.
            unsafe { libc::sendto(fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len(), 0, std::ptr::from_ref(&sa).cast(), std::mem::size_of_val(&sa) as u32) }
        }
    };
    (sent >= 0).then_some(tag)
}

fn sctp_arrived(target: &Target, tag: u32) -> bool {
    let Some(seen) = &target.sctp_sink else { return false };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while Instant::now() < deadline {
        if seen.lock().is_ok_and(|s| s.contains(&(tag, target.port))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Runs many probes at once, one thread each; results in the order given.
pub fn probe_many(probes: &[(String, Target)]) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes.iter().map(|(from, t)| s.spawn(move || probe(from, t))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(false)).collect()
    })
}


/// Sends, from inside `from`, an IPv4 SCTP INIT whose source address is `src` (forged, with a
/// header written by hand on an IPPROTO_RAW socket) to `dst:port`. Returns the verification tag
/// to look for in the destination's sink.
pub fn send_forged_sctp(from: &str, src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, port: u16) -> anyhow::Result<u32> {
    let tag = random_u32();
    let sctp = frames::sctp_init_tagged(40000, port, tag);
    let pkt = frames::ipv4_packet(src.octets(), dst.octets(), frames::SCTP, 0, 0, &sctp);
    netns::within(from, || -> anyhow::Result<()> {
        // SAFETY: plain socket(2), checked below, closed at the end of this closure.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let sa = libc::sockaddr_in { sin_family: libc::AF_INET as u16, sin_port: 0, sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) }, sin_zero: [0; 8] };
        // SAFETY: sendto with a valid buffer and sockaddr_in; the kernel fills the checksum.
        let sent = unsafe { libc::sendto(fd, pkt.as_ptr().cast(), pkt.len(), 0, std::ptr::from_ref(&sa).cast(), std::mem::size_of_val(&sa) as u32) };
        let err = std::io::Error::last_os_error();
        // SAFETY: fd is ours and closed once.
        unsafe { libc::close(fd) };
        anyhow::ensure!(sent >= 0, "send forged packet: {err}");
        Ok(())
    })??;
    Ok(tag)
}

/// Whether the SCTP sink `seen` records `tag` to `port` within the probe timeout.
pub fn sctp_seen(seen: &SctpSeen, tag: u32, port: u16) -> bool {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while Instant::now() < deadline {
        if seen.lock().is_ok_and(|s| s.contains(&(tag, port))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

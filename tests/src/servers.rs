//! Servers inside pod namespaces: TCP (answers with a banner), UDP (echoes), and an SCTP sink
//! (the kernel has no SCTP, so a raw socket records the verification tags of SCTP packets that
//! arrive). They run on background threads and stop when their [`Servers`] is dropped.

use std::{
    collections::HashSet,
    io::Write as _,
    net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Context as _;

use crate::netns;

/// Verification tags of SCTP packets seen by a pod's sink, with their destination port.
pub type SctpSeen = Arc<Mutex<HashSet<(u32, u16)>>>;

/// The servers of one pod.
pub struct Servers {
    stop: Arc<AtomicBool>,
    /// SCTP packets seen.
    pub sctp: SctpSeen,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts servers in `netns` on `tcp` and `udp` ports (dual-stack) and an SCTP sink; `banner`
/// is what TCP clients read.
pub fn start(netns: &str, tcp: &[u16], udp: &[u16], banner: &str) -> anyhow::Result<Servers> {
    let stop = Arc::new(AtomicBool::new(false));
    let sctp: SctpSeen = Arc::default();
    for &port in tcp {
        let listener = netns::within(netns, || dual_stack_tcp(port))?.with_context(|| format!("TCP {port} in {netns}"))?;
        listener.set_nonblocking(true)?;
        let (stop, banner) = (stop.clone(), banner.to_string());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Wait for a connection (or 50 ms, to notice `stop`) without spinning.
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: poll(2) on one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 50) };
                while let Ok((mut conn, _)) = listener.accept() {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.write_all(banner.as_bytes());
                    // Keep the connection open for clients that test it later; it ends when
                    // the client closes it.
                    let stop = stop.clone();
                    std::thread::spawn(move || echo_tcp(conn, &stop));
                }
            }
        });
    }
    for &port in udp {
        let socket = netns::within(netns, || UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))))?
            .with_context(|| format!("UDP {port} in {netns}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
    }
    for v6 in [false, true] {
        let fd = netns::within(netns, || raw_sctp(v6))??;
        let (stop, seen) = (stop.clone(), sctp.clone());
        std::thread::spawn(move || sctp_sink(&fd, v6, &stop, &seen));
    }
    Ok(Servers { stop, sctp })
}

fn dual_stack_tcp(port: u16) -> std::io::Result<TcpListener> {
    // [::] with IPV6_V6ONLY off (Linux's default) accepts IPv4 too.
    TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
}

fn echo_tcp(mut conn: std::net::TcpStream, stop: &AtomicBool) {
    use std::io::Read as _;
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A raw socket receiving SCTP (protocol 132) packets.
pub fn raw_sctp(v6: bool) -> anyhow::Result<OwnedFd> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_SCTP) };
    anyhow::ensure!(fd >= 0, "raw SCTP socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a new, valid descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sctp_sink(fd: &OwnedFd, v6: bool, stop: &AtomicBool, seen: &SctpSeen) {
    let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: setsockopt with a valid timeval of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: recv into a buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue };
        // IPv4 raw sockets deliver the IP header; IPv6 ones only the payload.
        let off = if v6 { 0 } else { usize::from(buf[0] & 0x0f) * 4 };
        if n >= off + 8 {
            let dport = u16::from_be_bytes([buf[off + 2], buf[off + 3]]);
            let tag = u32::from_be_bytes([buf[off + 4], buf[off + 5], buf[off + 6], buf[off + 7]]);
            if let Ok(mut s) = seen.lock() {
                s.insert((tag, dport));
            }
        }
    }
}

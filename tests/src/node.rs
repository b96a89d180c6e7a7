//! A node network namespace with pod network namespaces attached by veths, in one of the two
//! shapes CNIs build: a bridge (Flannel's cni0) or routed /32 veths (kindnet, Calico).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::Context as _;

use crate::netns::{self, ip};

/// How pods are connected to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Pods' host-side veths are ports of a bridge holding the gateway address.
    Bridge,
    /// Each pod's host-side veth is routed: a /32 and /128 route per pod, no bridge.
    Routed,
}

/// A pod: its namespace, addresses and host-side interface.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The network namespace that is the pod.
    pub netns: String,
    /// IPv4 address.
    pub ipv4: Ipv4Addr,
    /// IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Host-side veth name in the node namespace (random, like Flannel's).
    pub host_if: String,
}

/// A node: a network namespace, its gateway addresses, and its pods.
pub struct Node {
    /// The node's network namespace (also its Kubernetes node name).
    pub netns: String,
    /// Shape.
    pub shape: Shape,
    /// Subnet index k: pods get 198.18.k.0/24 and fd00:198:18:k::/64.
    pub subnet: u8,
    /// Pods, in creation order.
    pub pods: Vec<Pod>,
    next_host: u8,
}

/// Subnet numbers handed out in this process (1..=250), so nodes never overlap.
static NEXT_SUBNET: AtomicU8 = AtomicU8::new(1);

impl Node {
    /// Creates a node namespace of the given shape.
    pub fn new(shape: Shape) -> anyhow::Result<Self> {
        let subnet = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
        anyhow::ensure!(subnet <= 250, "too many sandbox nodes in one process");
        let node = Self { netns: netns::unique("npn"), shape, subnet, pods: Vec::new(), next_host: 10 };
        ip(&["netns", "add", &node.netns])?;
        // From here on, Drop deletes the namespace whatever fails next.
        node.setup().with_context(|| format!("set up node {}", node.netns))?;
        Ok(node)
    }

    fn setup(&self) -> anyhow::Result<()> {
        let n = &self.netns;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ] {
            netns::sysctl(n, key, value)?;
        }
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        match self.shape {
            Shape::Bridge => {
                ip(&["-n", n, "link", "add", "cni0", "type", "bridge"])?;
                ip(&["-n", n, "addr", "add", &format!("{}/24", self.gateway4()), "dev", "cni0"])?;
                ip(&["-n", n, "addr", "add", &format!("{}/64", self.gateway6()), "dev", "cni0", "nodad"])?;
                ip(&["-n", n, "link", "set", "cni0", "up"])?;
            }
            Shape::Routed => {
                // The gateway is a local address of the node; pods reach it on-link.
                ip(&["-n", n, "addr", "add", &format!("{}/32", self.gateway4()), "dev", "lo"])?;
                ip(&["-n", n, "addr", "add", &format!("{}/128", self.gateway6()), "dev", "lo"])?;
            }
        }
        Ok(())
    }

    /// The node's IPv4 address (pods' gateway).
    pub fn gateway4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 1)
    }

    /// The node's IPv6 address.
    pub fn gateway6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x198, 0x18, u16::from(self.subnet), 0, 0, 0, 1)
    }

    /// The IPv4 /24 the node's pods live in.
    pub fn subnet4(&self) -> String {
        format!("198.18.{}.0/24", self.subnet)
    }

    /// The IPv6 /64 the node's pods live in.
    pub fn subnet6(&self) -> String {
        format!("{}/64", Ipv6Addr::new(0xfd00, 0x198, 0x18, u16::from(self.subnet), 0, 0, 0, 0))
    }

    /// Creates a pod namespace connected to the node.
    pub fn add_pod(&mut self, namespace: &str, name: &str) -> anyhow::Result<Pod> {
        let host = self.next_host;
        anyhow::ensure!(host < 250, "too many pods on node {}", self.netns);
        self.next_host += 1;
        let pod = Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            netns: netns::unique("npp"),
            ipv4: Ipv4Addr::new(198, 18, self.subnet, host),
            ipv6: Ipv6Addr::new(0xfd00, 0x198, 0x18, u16::from(self.subnet), 0, 0, 0, u16::from(host)),
            host_if: format!("veth{:08x}", rand_u32()),
        };
        ip(&["netns", "add", &pod.netns])?;
        self.pods.push(pod.clone());
        self.setup_pod(&pod).with_context(|| format!("set up pod {namespace}/{name}"))?;
        Ok(pod)
    }

    fn setup_pod(&self, pod: &Pod) -> anyhow::Result<()> {
        let (n, p, h) = (&self.netns, &pod.netns, &pod.host_if);
        for (key, value) in [("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0")] {
            netns::sysctl(p, key, value)?;
        }
        ip(&["-n", n, "link", "add", h, "type", "veth", "peer", "name", "eth0", "netns", p])?;
        ip(&["-n", p, "link", "set", "lo", "up"])?;
        let (v4, v6) = (pod.ipv4.to_string(), pod.ipv6.to_string());
        match self.shape {
            Shape::Bridge => {
                ip(&["-n", n, "link", "set", h, "master", "cni0", "up"])?;
                ip(&["-n", p, "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
                ip(&["-n", p, "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
                ip(&["-n", p, "link", "set", "eth0", "up"])?;
                ip(&["-n", p, "route", "add", "default", "via", &self.gateway4().to_string()])?;
                ip(&["-n", p, "-6", "route", "add", "default", "via", &self.gateway6().to_string()])?;
            }
            Shape::Routed => {
                netns::sysctl(n, &format!("net.ipv6.conf.{h}.accept_dad"), "0").ok();
                ip(&["-n", n, "link", "set", h, "up"])?;
                ip(&["-n", n, "addr", "add", "fe80::1/64", "dev", h, "nodad"])?;
                ip(&["-n", n, "route", "add", &format!("{v4}/32"), "dev", h])?;
                ip(&["-n", n, "-6", "route", "add", &format!("{v6}/128"), "dev", h])?;
                ip(&["-n", p, "addr", "add", &format!("{v4}/32"), "dev", "eth0"])?;
                ip(&["-n", p, "addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"])?;
                ip(&["-n", p, "link", "set", "eth0", "up"])?;
                let gw = self.gateway4().to_string();
                ip(&["-n", p, "route", "add", &gw, "dev", "eth0", "scope", "link"])?;
                ip(&["-n", p, "route", "add", "default", "via", &gw, "dev", "eth0"])?;
                ip(&["-n", p, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"])?;
            }
        }
        Ok(())
    }

    /// Deletes a pod (its namespace, and with it its veth).
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let i = self
            .pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
            .with_context(|| format!("no pod {namespace}/{name}"))?;
        let pod = self.pods.remove(i);
        ip(&["netns", "del", &pod.netns])
    }

    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .unwrap_or_else(|| panic!("no pod {namespace}/{name} on node {}", self.netns))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = ip(&["netns", "del", &pod.netns]);
        }
        // Deleting the node namespace deletes its bridge and the host ends of the veths.
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// The network between nodes, as Flannel's host-gw builds it: one L2 segment (a bridge in an
/// "underlay" namespace of its own) with a veth `eth0` into every node, and in every node a route
/// to each other node's pod subnets via that node's underlay address, IPv4 and IPv6. Pod traffic
/// crosses it unencapsulated and unNATed. Deleting the underlay namespace (on drop) deletes the
/// bridge and every node's `eth0`; the nodes' routes go with their `eth0`.
pub struct Underlay {
    /// The underlay's network namespace (holds only the bridge `br0` and its ports).
    pub netns: String,
    /// Node i's underlay addresses, in the order the nodes were given.
    pub addrs: Vec<(Ipv4Addr, Ipv6Addr)>,
}

impl Underlay {
    /// Node i's underlay IPv4 address: 198.19.0.(i + 1)/24 (outside every pod subnet).
    pub fn addr4(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 0, u8::try_from(i + 1).expect("fewer than 255 nodes"))
    }

    /// Node i's underlay IPv6 address: fd00:198:18:ff00::(i + 1)/64.
    pub fn addr6(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x198, 0x18, 0xff00, 0, 0, 0, u16::try_from(i + 1).expect("fewer than 65535 nodes"))
    }

    /// Connects `nodes` to each other.
    pub fn connect(nodes: &[Node]) -> anyhow::Result<Self> {
        let underlay = Self { netns: netns::unique("npu"), addrs: (0..nodes.len()).map(|i| (Self::addr4(i), Self::addr6(i))).collect() };
        ip(&["netns", "add", &underlay.netns])?;
        // From here on, Drop deletes the namespace whatever fails next.
        underlay.setup(nodes).with_context(|| format!("set up underlay {}", underlay.netns))?;
        Ok(underlay)
    }

    fn setup(&self, nodes: &[Node]) -> anyhow::Result<()> {
        let u = &self.netns;
        for (key, value) in [("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0")] {
            netns::sysctl(u, key, value)?;
        }
        ip(&["-n", u, "link", "set", "lo", "up"])?;
        ip(&["-n", u, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", u, "link", "set", "br0", "up"])?;
        for (i, node) in nodes.iter().enumerate() {
            let (n, port) = (&node.netns, format!("node{i}"));
            ip(&["-n", u, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", n])?;
            ip(&["-n", u, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", n, "addr", "add", &format!("{}/24", Self::addr4(i)), "dev", "eth0"])?;
            ip(&["-n", n, "addr", "add", &format!("{}/64", Self::addr6(i)), "dev", "eth0", "nodad"])?;
            ip(&["-n", n, "link", "set", "eth0", "up"])?;
        }
        for (i, node) in nodes.iter().enumerate() {
            for (j, other) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                let n = &node.netns;
                ip(&["-n", n, "route", "add", &other.subnet4(), "via", &Self::addr4(j).to_string(), "dev", "eth0"])?;
                ip(&["-n", n, "-6", "route", "add", &other.subnet6(), "via", &Self::addr6(j).to_string(), "dev", "eth0"])?;
            }
        }
        Ok(())
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// A random number from the kernel (for interface names that follow no convention).
fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        std::process::id().wrapping_mul(2_654_435_761)
    }
}

/// Random bytes, for probe tokens and SCTP verification tags.
pub fn random_u32() -> u32 {
    rand_u32()
}

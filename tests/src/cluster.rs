//! A sandbox cluster: nodes, pods with servers, the manifests describing them, and an agent per
//! node. Dropping it stops the agents, the servers, and deletes every namespace it made.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use crate::{
    agent::Agent,
    manifests::{ManifestDir, PodManifest},
    node::{Node, Pod, Shape, Underlay},
    probe::{self, Protocol, Target},
    servers::{self, Servers},
};

/// Labels, as (key, value) pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

fn labels(l: Labels<'_>) -> BTreeMap<String, String> {
    l.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
}

struct PodEntry {
    manifest: PodManifest,
    node: usize,
    /// None while a scheduled pod has no network yet ([`Cluster::schedule_pod`]).
    servers: Option<Servers>,
}

/// A pod's ports as the manifests hold them: (name, port, protocol).
fn port_list(ports: &[(&str, u16, &str)]) -> Vec<(String, u16, String)> {
    ports.iter().map(|(n, p, proto)| ((*n).to_string(), *p, (*proto).to_string())).collect()
}

/// Starts a pod's servers on its TCP and UDP ports; each answers with "namespace/name\n" first.
fn start_pod_servers(pod: &Pod, ports: &[(String, u16, String)]) -> anyhow::Result<Servers> {
    let tcp: Vec<u16> = ports.iter().filter(|p| p.2 == "TCP").map(|p| p.1).collect();
    let udp: Vec<u16> = ports.iter().filter(|p| p.2 == "UDP").map(|p| p.1).collect();
    servers::start(&pod.netns, &tcp, &udp, &format!("{}/{}\n", pod.namespace, pod.name))
}

/// A sandbox cluster. Fields drop in order: agents first, then servers, manifests, nodes, underlay.
pub struct Cluster {
    agents: Vec<Option<Agent>>,
    pods: Vec<PodEntry>,
    /// The manifest directory every agent watches.
    pub manifests: ManifestDir,
    /// The nodes.
    pub nodes: Vec<Node>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    policies: Vec<String>,
    /// The network between the nodes, once [`Cluster::connect_nodes`] made it.
    pub underlay: Option<Underlay>,
}

/// How long to wait for an agent to apply a change.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

impl Cluster {
    /// A cluster with one node per shape given.
    pub fn new(shapes: &[Shape]) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for s in shapes {
            nodes.push(Node::new(*s)?);
        }
        Ok(Self {
            agents: nodes.iter().map(|_| None).collect(),
            pods: Vec::new(),
            manifests: ManifestDir::new()?,
            nodes,
            namespaces: BTreeMap::new(),
            policies: Vec::new(),
            underlay: None,
        })
    }

    /// Connects the nodes to each other like Flannel's host-gw (see [`Underlay`]): afterwards every
    /// pod reaches every pod of every node by its own addresses, IPv4 and IPv6.
    pub fn connect_nodes(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.underlay.is_none(), "the nodes are already connected");
        self.underlay = Some(Underlay::connect(&self.nodes)?);
        Ok(())
    }

    /// Adds (or relabels) a namespace and rewrites the manifests.
    pub fn namespace(&mut self, name: &str, l: Labels<'_>) -> anyhow::Result<()> {
        self.namespaces.insert(name.to_string(), labels(l));
        self.write_cluster()
    }

    /// Adds a pod on node `node` with servers on its `ports` ((name, port, "TCP"|"UDP"|"SCTP")),
    /// and rewrites the manifests.
    pub fn add_pod(&mut self, node: usize, namespace: &str, name: &str, l: Labels<'_>, ports: &[(&str, u16, &str)]) -> anyhow::Result<Pod> {
        let pod = self.nodes[node].add_pod(namespace, name)?;
        let servers = start_pod_servers(&pod, &port_list(ports))?;
        let ips = vec![IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)];
        self.pods.push(self.pod_entry(node, namespace, name, l, ports, ips, Some(servers)));
        self.write_cluster()?;
        Ok(pod)
    }

    #[allow(clippy::too_many_arguments)]
    fn pod_entry(&self, node: usize, namespace: &str, name: &str, l: Labels<'_>, ports: &[(&str, u16, &str)], ips: Vec<IpAddr>, servers: Option<Servers>) -> PodEntry {
        PodEntry {
            manifest: PodManifest {
                namespace: namespace.to_string(),
                name: name.to_string(),
                labels: labels(l),
                node: self.nodes[node].netns.clone(),
                ips,
                ports: port_list(ports),
            },
            node,
            servers,
        }
    }

    /// Puts a pod on node `node` in the manifests before it has a network, as the API shows a
    /// scheduled pod before the runtime's CNI ADD: no addresses, no interface, no servers.
    pub fn schedule_pod(&mut self, node: usize, namespace: &str, name: &str, l: Labels<'_>, ports: &[(&str, u16, &str)]) -> anyhow::Result<()> {
        self.pods.push(self.pod_entry(node, namespace, name, l, ports, Vec::new(), None));
        self.write_cluster()
    }

    /// Gives a scheduled pod its network, as a CNI network plugin does (namespace, veth,
    /// addresses, routes); the manifests keep showing no addresses (the API learns them later).
    pub fn wire_pod(&mut self, namespace: &str, name: &str) -> anyhow::Result<Pod> {
        let i = self.index(namespace, name);
        self.nodes[self.pods[i].node].add_pod(namespace, name)
    }

    /// Publishes a wired pod's addresses in the manifests, as the API does once the pod's
    /// network is set up.
    pub fn publish_addresses(&mut self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let pod = self.pod(namespace, name).clone();
        let i = self.index(namespace, name);
        self.pods[i].manifest.ips = vec![IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)];
        self.write_cluster()
    }

    /// Starts the servers of a wired pod on its manifest's ports (its containers starting).
    pub fn start_servers(&mut self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let i = self.index(namespace, name);
        let servers = start_pod_servers(self.pod(namespace, name), &self.pods[i].manifest.ports)?;
        self.pods[i].servers = Some(servers);
        Ok(())
    }

    /// Removes a pod (its namespace and manifest).
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let i = self.index(namespace, name);
        let entry = self.pods.remove(i);
        self.write_cluster()?;
        self.nodes[entry.node].remove_pod(namespace, name)
    }

    /// Replaces a pod's labels in the manifests.
    pub fn set_pod_labels(&mut self, namespace: &str, name: &str, l: Labels<'_>) -> anyhow::Result<()> {
        let i = self.index(namespace, name);
        self.pods[i].manifest.labels = labels(l);
        self.write_cluster()
    }

    /// Replaces every policy.
    pub fn set_policies(&mut self, policies: &[String]) -> anyhow::Result<()> {
        self.policies = policies.to_vec();
        self.manifests.write_policies(&self.policies)
    }

    fn index(&self, namespace: &str, name: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p.manifest.namespace == namespace && p.manifest.name == name)
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"))
    }

    fn write_cluster(&self) -> anyhow::Result<()> {
        let pods: Vec<PodManifest> = self.pods.iter().map(|p| p.manifest.clone()).collect();
        self.manifests.write_cluster(&self.namespaces, &pods)
    }

    /// Starts the agent of node `node`.
    pub fn start_agent(&mut self, node: usize, extra_args: &[&str]) -> anyhow::Result<()> {
        self.agents[node] = Some(Agent::start(&self.nodes[node].netns, self.manifests.path(), extra_args)?);
        Ok(())
    }

    /// Starts the agent of node `node` on a given pin path (adopting what is pinned there).
    pub fn start_agent_at(&mut self, node: usize, pin_path: &std::path::Path, extra_args: &[&str]) -> anyhow::Result<()> {
        self.agents[node] = Some(Agent::start_at(&self.nodes[node].netns, self.manifests.path(), pin_path, extra_args)?);
        Ok(())
    }

    /// The agent of node `node`.
    pub fn agent(&mut self, node: usize) -> &mut Agent {
        self.agents[node].as_mut().unwrap_or_else(|| panic!("no agent on node {node}"))
    }

    /// Stops and forgets the agent of node `node` (pins are removed; see [`Agent`]).
    pub fn drop_agent(&mut self, node: usize) {
        self.agents[node] = None;
    }

    /// Waits until every running agent has applied the manifests as they are now.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        for agent in self.agents.iter_mut().flatten() {
            agent.wait_synced(SYNC_TIMEOUT)?;
        }
        Ok(())
    }

    /// A pod's addresses and namespace.
    pub fn pod(&self, namespace: &str, name: &str) -> &Pod {
        let e = &self.pods[self.index(namespace, name)];
        self.nodes[e.node].pod(namespace, name)
    }

    /// The probe target of a pod's port.
    pub fn target(&self, namespace: &str, name: &str, port: u16, protocol: Protocol, ipv6: bool) -> Target {
        let pod = self.pod(namespace, name);
        let sink = self.pods[self.index(namespace, name)].servers.as_ref().map(|s| s.sctp.clone());
        Target { addr: if ipv6 { IpAddr::V6(pod.ipv6) } else { IpAddr::V4(pod.ipv4) }, port, protocol, sctp_sink: sink }
    }

    /// Probes a pod's port from another pod.
    pub fn probe(&self, from: (&str, &str), to: (&str, &str), port: u16, protocol: Protocol, ipv6: bool) -> bool {
        probe::probe(&self.pod(from.0, from.1).netns, &self.target(to.0, to.1, port, protocol, ipv6))
    }

    /// Opens a TCP connection from one pod to another's port 80 and keeps it open.
    pub fn open_connection(&self, from: (&str, &str), to: (&str, &str)) -> anyhow::Result<OpenConnection> {
        OpenConnection::open(&self.pod(from.0, from.1).netns, self.pod(to.0, to.1).ipv4.into(), 80)
    }

    /// All pods, as (namespace, name).
    pub fn pod_names(&self) -> Vec<(String, String)> {
        self.pods.iter().map(|p| (p.manifest.namespace.clone(), p.manifest.name.clone())).collect()
    }
}

/// A TCP connection held open between two pods, to see whether it keeps working as policies
/// change (the sandbox's servers echo what they receive after their banner).
pub struct OpenConnection(std::net::TcpStream);

impl OpenConnection {
    /// Connects from inside `netns` to `addr:port` and reads the server's banner.
    pub fn open(netns: &str, addr: IpAddr, port: u16) -> anyhow::Result<Self> {
        use std::io::Read as _;
        let mut stream = crate::netns::within(netns, || std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(1)))??;
        stream.set_read_timeout(Some(Duration::from_millis(700)))?;
        let mut banner = [0u8; 64];
        anyhow::ensure!(stream.read(&mut banner)? > 0, "no banner from {addr}:{port}");
        Ok(Self(stream))
    }

    /// Sends a few bytes and waits for their echo: whether the connection still works.
    pub fn works(&mut self) -> bool {
        use std::io::{Read as _, Write as _};
        let mut buf = [0u8; 16];
        self.0.write_all(b"ping\n").is_ok() && matches!(self.0.read(&mut buf), Ok(n) if n > 0)
    }
}

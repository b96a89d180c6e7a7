//! The manifests in `deploy/`: every document parses into its Kubernetes type, the ClusterRole
//! grants every API call the agent makes, and the DaemonSet wires what the agent needs.

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use netpol_agent::source::kube::API_CALLS;
use netpol_testkit::deploy::{self, daemonset, documents, of_kind};

#[test]
fn every_document_parses_into_its_kubernetes_type() {
    let docs = documents();
    assert!(!docs.is_empty());
    for (file, v) in docs {
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let parsed = match kind.as_str() {
            "Namespace" => serde_json::from_value::<Namespace>(v).map(drop),
            "ServiceAccount" => serde_json::from_value::<ServiceAccount>(v).map(drop),
            "ClusterRole" => serde_json::from_value::<ClusterRole>(v).map(drop),
            "ClusterRoleBinding" => serde_json::from_value::<ClusterRoleBinding>(v).map(drop),
            "DaemonSet" => serde_json::from_value::<DaemonSet>(v).map(drop),
            other => panic!("{file}: unexpected kind {other:?}"),
        };
        parsed.unwrap_or_else(|e| panic!("{file}: invalid {kind}: {e}"));
    }
    for kind in ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
        assert_eq!(documents().iter().filter(|(_, v)| v["kind"] == kind).count(), 1, "one {kind}");
    }
    assert_eq!(documents().iter().filter(|(_, v)| v["kind"] == "DaemonSet").count(), 2, "the agent and the uninstaller");
}

#[test]
fn the_cluster_role_grants_every_call_the_agent_makes() {
    let role = of_kind::<ClusterRole>("ClusterRole").remove(0);
    let rules = role.rules.unwrap_or_default();
    for call in API_CALLS {
        let granted = rules.iter().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == call.group)
                && r.resources.iter().flatten().any(|x| x == call.resource)
                && r.verbs.iter().any(|v| v == call.verb)
        });
        assert!(granted, "the ClusterRole does not grant {call:?}");
    }
    // Least privilege: no wildcards, nothing that writes pods, namespaces or policies.
    for r in &rules {
        assert!(!r.verbs.iter().any(|v| v == "*"), "{r:?}");
        assert!(!r.resources.iter().flatten().any(|x| x == "*"), "{r:?}");
        if r.resources.iter().flatten().any(|x| x != "events") {
            assert!(r.verbs.iter().all(|v| ["get", "list", "watch"].contains(&v.as_str())), "{r:?}");
        }
    }
    let binding = of_kind::<ClusterRoleBinding>("ClusterRoleBinding").remove(0);
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let sa = of_kind::<ServiceAccount>("ServiceAccount").remove(0);
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        (sa.metadata.name.as_deref().unwrap(), sa.metadata.namespace.as_deref())
    );
}

#[test]
fn the_daemonset_runs_the_agent_on_every_node_with_what_it_needs() {
    let ds = daemonset("netpol-agent");
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("netpol-agent"));
    assert!(pod.tolerations.unwrap().iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()));
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap_or_default();
    let arg = |name: &str| args.iter().find_map(|a| a.strip_prefix(&format!("{name}="))).unwrap_or_else(|| panic!("{name}"));
    assert!(args.iter().any(|a| a == "run"));
    assert!(!args.iter().any(|a| a.starts_with("--manifests")), "the API source");
    let node = c.env.iter().flatten().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
    let field = node.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    let caps = c.security_context.as_ref().and_then(|s| s.capabilities.as_ref()).and_then(|c| c.add.clone()).unwrap_or_default();
    for cap in ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON"] {
        assert!(caps.iter().any(|c| c == cap), "capability {cap}");
    }
    assert_ne!(c.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    let port = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe.as_ref().and_then(|p| p.http_get.clone()).expect("httpGet probe");
        (get.path.unwrap_or_default(), get.port)
    };
    let health = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
        netpol_agent::telemetry::http::DEFAULT_ADDR.rsplit(':').next().unwrap().parse().unwrap(),
    );
    assert_eq!(port(&c.liveness_probe), ("/healthz".to_string(), health.clone()));
    assert_eq!(port(&c.readiness_probe), ("/readyz".to_string(), health));
    let mounts: Vec<&str> = c.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
    assert!(mounts.contains(&"/sys/fs/bpf"), "{mounts:?}");
    // Pins on the node's bpffs: an init container mounts one there when the node has none
    // (kind), privileged with Bidirectional propagation so that the mount is the node's; the
    // agent sees it through HostToContainer.
    let bpffs_mount = |c: &k8s_openapi::api::core::v1::Container| {
        c.volume_mounts.iter().flatten().find(|m| m.mount_path == "/sys/fs/bpf").map(|m| (m.name.clone(), m.mount_propagation.clone()))
    };
    let init = pod.init_containers.iter().flatten().find(|i| i.args.iter().flatten().any(|a| a == "mount-bpffs")).expect("a mount-bpffs init container");
    assert_eq!(init.security_context.as_ref().and_then(|s| s.privileged), Some(true), "Bidirectional propagation needs a privileged container");
    assert_eq!(bpffs_mount(init), Some(("bpffs".to_string(), Some("Bidirectional".to_string()))));
    assert_eq!(bpffs_mount(c), Some(("bpffs".to_string(), Some("HostToContainer".to_string()))));
    assert_eq!(arg("--pin-path").split('/').take(4).collect::<Vec<_>>().join("/"), "/sys/fs/bpf", "pins under the node's bpffs");
    // AppArmor nodes: containerd's default profile denies mounts and writes under /sys/fs/*.
    let apparmor = pod.security_context.as_ref().and_then(|s| s.app_armor_profile.as_ref()).map(|p| p.type_.as_str());
    assert_eq!(apparmor, Some("Unconfined"));
    // /metrics and /events name pods and flows: loopback only on the host network.
    let health: std::net::SocketAddr = arg("--health-addr").parse().expect("an address");
    assert!(health.ip().is_loopback(), "{health}");
    // The CNI chain plugin: its directories are the node's, and the socket, which the plugin
    // reaches from the host by the path written into the node's CNI configuration, is at the
    // same path inside the container as on the host.

    let host_path_of = |container_path: &str| {
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| container_path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| panic!("{container_path} is not on a volume"));
        let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("volume");
        let host = volume.host_path.as_ref().expect("a hostPath volume").path.clone();
        format!("{host}{}", &container_path[mount.mount_path.len()..])
    };
    let socket = arg("--cni-socket");
    assert_eq!(host_path_of(socket), socket, "the socket path is the same on the host");
    assert_eq!(host_path_of(arg("--cni-bin-dir")), "/opt/cni/bin");
    assert_eq!(host_path_of(arg("--cni-conf-dir")), "/etc/cni/net.d");
    let resources = c.resources.as_ref().expect("resources");
    assert!(resources.requests.is_some() && resources.limits.is_some());
}

#[test]
fn the_uninstaller_removes_what_the_agent_installed_on_the_same_node_paths() {
    let agent = daemonset("netpol-agent").spec.template.spec.expect("pod spec");
    let uninstall = daemonset("netpol-uninstall").spec.template.spec.expect("pod spec");
    let host_path = |pod: &k8s_openapi::api::core::v1::PodSpec, container_path: &str| {
        let c = &pod.containers[0];
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| container_path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| panic!("{container_path} is not on a volume"));
        let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("volume");
        format!("{}{}", volume.host_path.as_ref().expect("hostPath").path, &container_path[mount.mount_path.len()..])
    };
    let arg = |pod: &k8s_openapi::api::core::v1::PodSpec, name: &str| {
        pod.containers[0].args.iter().flatten().find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_string)).unwrap_or_else(|| panic!("{name}"))
    };
    let args = uninstall.containers[0].args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "uninstall") && args.iter().any(|a| a == "--keep-running"), "{args:?}");
    for flag in ["--pin-path", "--cni-conf-dir", "--cni-bin-dir", "--cni-socket"] {
        assert_eq!(host_path(&uninstall, &arg(&uninstall, flag)), host_path(&agent, &arg(&agent, flag)), "{flag}: the node path the agent used");
    }
    // Ready once its node is clean: the probe runs the same removal again.
    let probe = uninstall.containers[0].readiness_probe.as_ref().and_then(|p| p.exec.as_ref()).and_then(|e| e.command.clone()).expect("an exec readiness probe");
    assert!(probe.iter().any(|a| a == "uninstall") && !probe.iter().any(|a| a == "--keep-running"), "{probe:?}");
}

#[test]
fn the_kind_config_disables_the_default_cni() {
    let v = deploy::file("kind-flannel.yaml").remove(0);
    assert_eq!(v["kind"], "Cluster");
    assert_eq!(v["networking"]["disableDefaultCNI"], true);
}

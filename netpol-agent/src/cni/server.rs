//! The agent's end of the CNI chain plugin ([`crate::cni::plugin`]): a Unix socket where the plugin
//! announces a new pod at CNI ADD. The pod's addresses are merged into the snapshot (the API
//! publishes them only later, in the pod's status), a sync is scheduled, and the answer waits
//! until a sync has put the classifiers on the pod's veth with its policy programmed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tracing::{info, warn};

use crate::{
    cni::plugin::{CniCommand, CniReply, CniRequest},
    model::{ClusterState, ObjectRef},

};

/// Addresses of local pods as the CNI plugin reported them, by pod; kept until CNI DEL, or
/// until the source reports the pod's addresses itself.
#[derive(Debug, Default)]
pub struct CniPods {
    pods: Mutex<BTreeMap<ObjectRef, Vec<IpAddr>>>,
}

impl CniPods {
    fn set(&self, pod: ObjectRef, ips: Vec<IpAddr>) {
        self.lock().insert(pod, ips);
    }

    fn forget(&self, pod: &ObjectRef) {
        self.lock().remove(pod);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectRef, Vec<IpAddr>>> {
        // A panic while holding this lock leaves a plain map behind: still consistent.
        self.pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives every pod of `state` that has no address yet the addresses CNI reported for it (on
    /// `node`, where CNI ran); forgets pods whose addresses the source now has.
    pub fn merge_into(&self, state: &mut std::borrow::Cow<'_, ClusterState>, node: &str) {
        let mut pods = self.lock();
        pods.retain(|id, ips| {
            if state.pods.contains_key(id) {
                // The source knows the addresses: it is the authority from here on.
                return false;
            }
            // Copied (from the source's shared snapshot) only when there is a pod to add.
            if let Some(mut pod) = state.unaddressed.contains_key(id).then(|| state.to_mut().unaddressed.remove(id)).flatten() {
                pod.ips.clone_from(ips);
                if pod.node.is_empty() {
                    pod.node = node.to_string();
                }
                state.to_mut().pods.insert(id.clone(), pod);
            }
            // Kept until DEL or until the source has the addresses; a pod not in the source
            // yet (the API may lag the runtime) gets them when it comes.
            true
        });
    }
}

/// Schedules a sync of the agent.
pub type Resync = Arc<dyn Fn() + Send + Sync>;

/// What the last sync enforced, for the CNI requests waiting on it.
#[derive(Clone, Debug, Default)]
pub struct Enforced {
    /// Syncs completed.
    pub syncs: u64,
    /// Local pods with classifiers on their veth and an endpoint entry, and that veth's name.
    pub pods: BTreeMap<ObjectRef, String>,
    /// Local pods the source knows (with or without an interface).
    pub known: BTreeSet<ObjectRef>,
}

/// Serves the plugin's requests on `socket` (replacing a stale socket file) until the task is
/// dropped. Each ADD records the pod, sends `resync`, and answers once `enforced` shows the pod
/// enforced by a sync that began after the request, or after `timeout`.
pub async fn serve(
    socket: &Path,
    pods: Arc<CniPods>,
    resync: Resync,
    enforced: watch::Receiver<Enforced>,
    timeout: Duration,
) -> super::error::Result<tokio::task::JoinHandle<()>> {
    use super::error::io;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove stale", socket)(e)),
        _ => {}
    }
    let listener = UnixListener::bind(socket).map_err(io("listen on", socket))?;
    info!(socket = %socket.display(), "serving the CNI chain plugin");
    let path = socket.to_path_buf();
    let mut heartbeat = tokio::time::interval(crate::cni::plugin::HEARTBEAT);
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = heartbeat.tick() => {
                    refresh(&path);
                    continue;
                }
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, pods.clone(), resync.clone(), enforced.clone(), timeout));
                }
                Err(e) => {
                    warn!(error = %e, "CNI socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

/// Refreshes the socket's modification time: the plugin takes a socket nobody refreshed for long
/// for an agent gone for good ([`crate::cni::plugin::presence`]).
fn refresh(socket: &Path) {
    use nix::sys::{stat::utimensat, time::TimeSpec};
    let now = TimeSpec::UTIME_NOW;
    if let Err(e) = utimensat(nix::fcntl::AT_FDCWD, socket, &now, &now, nix::sys::stat::UtimensatFlags::NoFollowSymlink) {
        warn!(socket = %socket.display(), error = %e, "could not refresh the CNI socket's time: after a while, new pods would start unenforced");
    }
}

async fn handle(stream: UnixStream, pods: Arc<CniPods>, resync: Resync, enforced: watch::Receiver<Enforced>, timeout: Duration) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let reply = match BufReader::new(read).read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<CniRequest>(&line) {
            Ok(request) => answer(request, &pods, &resync, enforced, timeout).await,
            Err(e) => CniReply { ok: false, message: format!("bad request: {e}"), interface: None },
        },
        Err(e) => CniReply { ok: false, message: format!("read request: {e}"), interface: None },
    };
    let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| r#"{"ok":false,"message":"encode","interface":null}"#.to_string());
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

async fn answer(request: CniRequest, pods: &CniPods, resync: &Resync, mut enforced: watch::Receiver<Enforced>, timeout: Duration) -> CniReply {
    let pod = ObjectRef::new(&request.namespace, &request.name);
    let key = pod.to_string();
    if request.command == CniCommand::Del {
        pods.forget(&pod);
        resync();
        return CniReply { ok: true, message: format!("forgot {key}"), interface: None };
    }
    info!(pod = %key, container = %request.container_id, ips = ?request.ips, "CNI ADD: enforcing the new pod before it starts");
    pods.set(pod.clone(), request.ips.clone());
    let after = enforced.borrow_and_update().syncs;
    resync();
    let started = std::time::Instant::now();
    let timeout = if request.wait_ms > 0 { timeout.min(Duration::from_millis(request.wait_ms)) } else { timeout };
    let waited = tokio::time::timeout(timeout, async {
        loop {
            {
                let now = enforced.borrow_and_update();
                if now.syncs > after {
                    if let Some(iface) = now.pods.get(&pod) {
                        return Some(iface.clone());
                    }
                }
            }
            if enforced.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    match waited {
        Ok(Some(iface)) => {
            info!(pod = %key, interface = %iface, elapsed_ms = started.elapsed().as_millis() as u64, "CNI ADD: pod enforced");
            CniReply { ok: true, message: format!("{key} enforced on {iface}"), interface: Some(iface) }
        }
        _ => {
            let why = if enforced.borrow().known.contains(&pod) {
                format!("no interface of this node carries {:?}", request.ips)
            } else {
                "the pod is not (yet) known to the agent's source".to_string()
            };
            warn!(pod = %key, reason = %why, "CNI ADD: pod not enforced in time");
            CniReply { ok: false, message: format!("{key} not enforced after {timeout:?}: {why}"), interface: None }
        }
    }
}

//! Installing the CNI chain plugin on a node: the binary into the CNI binary directory as
//! `netpol-cni`, and an entry for it at the end of the plugin chain of the network
//! configuration the runtime uses (the first file of the configuration directory, by name, as
//! libcni picks it). Network plugins rewrite their configuration when they restart (Flannel's
//! init container does), so the agent checks the entry again whenever the directory changes.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

use super::{
    error::{io, CniError, Result},
    plugin::PLUGIN_NAME,
};

/// Extensions of network configuration files, as libcni reads them.
const CONF_EXTENSIONS: [&str; 3] = ["conflist", "conf", "json"];

/// What [`ensure_chained`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainChange {
    /// No network configuration yet (the network plugin has not written one).
    NoConfiguration,
    /// The entry was there already.
    Present(PathBuf),
    /// The entry was added (the file written, a single-plugin `.conf` turned into a list).
    Added(PathBuf),
}

/// The network configuration file the runtime uses: the first by name.
pub fn active_configuration(conf_dir: &Path) -> Result<Option<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(io("read", conf_dir))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()).is_some_and(|e| CONF_EXTENSIONS.contains(&e)))
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

/// `conf` (a network configuration, list or single plugin) with netpol's plugin appended to
/// its chain, or `None` when it is already there.
pub fn chained(conf: &Value, socket: &Path, timeout_seconds: u64) -> std::result::Result<Option<Value>, &'static str> {
    let entry = json!({"type": PLUGIN_NAME, "socket": socket, "timeoutSeconds": timeout_seconds});
    let mut list = if conf.get("plugins").is_some() {
        conf.clone()
    } else {
        // A single-plugin configuration: the same network as a list of one.
        let mut plugin = conf.clone();
        let obj = plugin.as_object_mut().ok_or("the network configuration is not a JSON object")?;
        let version = obj.remove("cniVersion").unwrap_or_else(|| json!("0.3.1"));
        let name = obj.remove("name").ok_or("the network configuration has no name")?;
        json!({"cniVersion": version, "name": name, "plugins": [plugin]})
    };
    let plugins = list.get_mut("plugins").and_then(Value::as_array_mut).ok_or("`plugins` is not a list")?;
    if let Some(ours) = plugins.iter_mut().find(|p| p.get("type").and_then(Value::as_str) == Some(PLUGIN_NAME)) {
        if *ours == entry {
            return Ok(None);
        }
        *ours = entry;
    } else {
        plugins.push(entry);
    }
    Ok(Some(list))
}

/// `conf` without netpol's plugin, or `None` when it is not there.
pub fn unchained(conf: &Value) -> Option<Value> {
    let mut list = conf.clone();
    let plugins = list.get_mut("plugins")?.as_array_mut()?;
    let before = plugins.len();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_NAME));
    (plugins.len() != before).then_some(list)
}

/// Makes sure the runtime's network configuration in `conf_dir` ends with netpol's plugin.
pub fn ensure_chained(conf_dir: &Path, socket: &Path, timeout_seconds: u64) -> Result<ChainChange> {
    let Some(path) = active_configuration(conf_dir)? else { return Ok(ChainChange::NoConfiguration) };
    let conf = read_configuration(&path)?;
    let chained = chained(&conf, socket, timeout_seconds).map_err(|why| CniError::Configuration { path: path.clone(), why })?;
    let Some(list) = chained else {
        return Ok(ChainChange::Present(path));
    };
    let target = path.with_extension("conflist");
    write_atomically(&target, &encode(&list, &target)?, 0o644)?;
    if target != path {
        std::fs::remove_file(&path).map_err(io("remove the single-plugin configuration", &path))?;
    }
    Ok(ChainChange::Added(target))
}

/// A network configuration file, parsed.
fn read_configuration(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    serde_json::from_str(&text).map_err(|source| CniError::Json { what: format!("parse {}", path.display()), source })
}

/// A network configuration as the file's bytes.
fn encode(list: &Value, path: &Path) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(list).map_err(|source| CniError::Json { what: format!("encode {}", path.display()), source })
}

/// Takes netpol's plugin out of the runtime's network configuration (`netpol-agent uninstall`).
pub fn remove_chained(conf_dir: &Path) -> Result<Option<PathBuf>> {
    let Some(path) = active_configuration(conf_dir)? else { return Ok(None) };
    let Some(list) = unchained(&read_configuration(&path)?) else { return Ok(None) };
    write_atomically(&path, &encode(&list, &path)?, 0o644)?;
    Ok(Some(path))
}

/// Copies this executable into `bin_dir` as the plugin (replacing an older copy atomically, so
/// a runtime never runs a half-written binary).
pub fn install_binary(bin_dir: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(io("find this executable", bin_dir))?;
    let bytes = std::fs::read(&exe).map_err(io("read", &exe))?;
    let target = bin_dir.join(PLUGIN_NAME);
    write_atomically(&target, &bytes, 0o755)?;
    Ok(target)
}

/// Removes the plugin binary from `bin_dir` (`netpol-agent uninstall`); `Ok(false)` when it was
/// not there.
pub fn remove_binary(bin_dir: &Path) -> Result<bool> {
    let target = bin_dir.join(PLUGIN_NAME);
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("remove", &target)(e)),
    }
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_file_name(format!(".{}.netpol-tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netpol-cni-install-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        h.finish()
    }

    #[test]
    fn the_plugin_is_appended_to_flannels_chain_once_and_removed_on_uninstall() {
        let dir = temp_dir();
        std::fs::write(dir.join("10-flannel.conflist"), FLANNEL).expect("write");
        std::fs::write(dir.join("99-loopback.conf"), r#"{"cniVersion":"0.3.1","name":"lo","type":"loopback"}"#).expect("write");
        let socket = Path::new("/run/netpol/cni.sock");
        assert_eq!(ensure_chained(&dir, socket, 10).expect("chain"), ChainChange::Added(dir.join("10-flannel.conflist")));
        let conf: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("10-flannel.conflist")).expect("read")).expect("json");
        let types: Vec<&str> = conf["plugins"].as_array().expect("list").iter().filter_map(|p| p["type"].as_str()).collect();
        assert_eq!(types, ["flannel", "portmap", "netpol-cni"], "netpol runs last, after the network and port mapping");
        assert_eq!(conf["plugins"][2]["socket"], "/run/netpol/cni.sock");
        assert_eq!(conf["plugins"][0]["delegate"]["hairpinMode"], true, "the rest is kept as it was");
        assert_eq!(ensure_chained(&dir, socket, 10).expect("again"), ChainChange::Present(dir.join("10-flannel.conflist")));
        // Flannel restarting rewrites its configuration: the entry comes back.
        std::fs::write(dir.join("10-flannel.conflist"), FLANNEL).expect("rewrite");
        assert!(matches!(ensure_chained(&dir, socket, 10).expect("after rewrite"), ChainChange::Added(_)));
        assert_eq!(remove_chained(&dir).expect("remove"), Some(dir.join("10-flannel.conflist")));
        let conf: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("10-flannel.conflist")).expect("read")).expect("json");
        assert_eq!(conf, serde_json::from_str::<Value>(FLANNEL).expect("json"));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_single_plugin_configuration_becomes_a_list_and_no_configuration_is_waited_for() {
        let dir = temp_dir();
        assert_eq!(ensure_chained(&dir, Path::new("/s"), 5).expect("empty"), ChainChange::NoConfiguration);
        std::fs::write(dir.join("10-bridge.conf"), r#"{"cniVersion":"1.0.0","name":"net","type":"bridge","bridge":"cni0"}"#).expect("write");
        assert_eq!(ensure_chained(&dir, Path::new("/s"), 5).expect("chain"), ChainChange::Added(dir.join("10-bridge.conflist")));
        assert!(!dir.join("10-bridge.conf").exists(), "the single-plugin file is replaced by the list");
        let conf: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("10-bridge.conflist")).expect("read")).expect("json");
        assert_eq!(conf["name"], "net");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["plugins"][0], json!({"type": "bridge", "bridge": "cni0"}));
        assert_eq!(conf["plugins"][1]["type"], "netpol-cni");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}

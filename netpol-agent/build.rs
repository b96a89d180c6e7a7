//! Builds the eBPF programs (netpol-ebpf) with aya-build and leaves the object in OUT_DIR,
//! where `include_bytes_aligned!` embeds it into the agent.
use std::path::PathBuf;

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    // bpf-linker is installed by `cargo xtask setup` under ~/.cache/netpol (built against the
    // nightly toolchain's own LLVM); put it on PATH when it is not there already.
    if let Some(home) = std::env::var_os("HOME") {
        let cache = PathBuf::from(home).join(".cache/netpol");
        if let Ok(entries) = std::fs::read_dir(&cache) {
            let mut dirs: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("bpf-linker").is_file())
                .collect();
            dirs.sort();
            if let Some(bin) = dirs.pop() {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut parts = vec![bin];
                parts.extend(std::env::split_paths(&path));
                let joined = std::env::join_paths(parts).context("join PATH")?;
                // SAFETY: build scripts are single-threaded at this point.
                unsafe { std::env::set_var("PATH", joined) };
            }
        }
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.parent().ok_or_else(|| anyhow!("no workspace dir"))?.join("netpol-ebpf");
    let package = aya_build::Package {
        name: "netpol-ebpf",
        root_dir: ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?,
        ..Default::default()
    };
    println!("cargo:rerun-if-changed={}", manifest_dir.join("../netpol-common/src").display());
    // The pinned nightly as `cargo xtask` found it (netpol-ebpf/rust-toolchain.toml); `nightly`
    // when built without xtask.
    println!("cargo:rerun-if-env-changed=NETPOL_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("NETPOL_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".to_string());
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
        .context("building netpol-ebpf (needs nightly rust-src and bpf-linker: run `cargo xtask setup`)")
}

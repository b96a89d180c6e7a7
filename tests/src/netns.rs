//! Running code inside a network namespace, and unique names.

use std::{
    fs::File,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;
use nix::sched::{setns, CloneFlags};

/// A name unique to this process and call: `{prefix}{pid % 10000}{counter}`, short enough for
/// interface names.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::Relaxed))
}

/// The path of a named network namespace.
pub fn path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// Runs `f` on the calling thread inside network namespace `name`, then returns the thread to
/// the namespace it was in. Sockets made by `f` stay in `name`.
pub fn within<T>(name: &str, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    let original = File::open("/proc/thread-self/ns/net").context("open this thread's netns")?;
    let target = File::open(path(name)).with_context(|| format!("open netns {name}"))?;
    setns(&target, CloneFlags::CLONE_NEWNET).with_context(|| format!("enter netns {name}"))?;
    let out = f();
    setns(&original, CloneFlags::CLONE_NEWNET).context("return to the original netns")?;
    Ok(out)
}

/// Runs `ip` with `args` (set-up commands only; their output is never parsed).
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

/// Runs a command and fails with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(program).args(args).output().with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        anyhow::bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Sets a sysctl inside a namespace (by writing /proc/sys from a thread in it).
pub fn sysctl(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    within(netns, || std::fs::write(&path, value))?.with_context(|| format!("sysctl {key}={value} in {netns}"))
}

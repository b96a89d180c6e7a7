//! `cargo xtask`: set up the machine, build, test, and run the demo.
//!
//! Every command first runs `setup`, which installs what is missing and nothing else, so each
//! works on a fresh machine, as root, without standard input.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "netpol's build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, nightly rust-src, bpf-linker.
    Setup,
    /// Build the agent (eBPF embedded) to target/release/netpol-agent.
    Build,
    /// Run every test, including the privileged network-namespace tests (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks; print the figures and write target/bench/results.json.
    Bench {
        /// Only these benchmarks (datapath, control, convergence, restart, throughput).
        only: Vec<String>,
    },
    /// Fuzz: each cargo-fuzz target of fuzz/ (manifests, compiler) for SECONDS, then the
    /// classifiers' packet parser (BPF_PROG_TEST_RUN, needs root) on as many frames.
    Fuzz {
        /// Seconds per target.
        #[arg(default_value_t = 60)]
        seconds: u64,
    },
    /// Run the three-tier demo in a sandbox node and check the reachability it measures.
    Demo {
        /// Where to write the report (Markdown).
        #[arg(long, default_value = "report")]
        report: PathBuf,
    },
}

/// Debian packages the tests and the demo use: iproute2 (ip), util-linux (nsenter), iptables
/// (the iptables peer of the benchmarks), bpftool (inspection), iperf3 and ipset (benchmarks),
/// podman and runc (the agent's image run as the DaemonSet declares it).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("iptables", "iptables"),
    ("bpftool", "bpftool"),
    ("iperf3", "iperf3"),
    ("ipset", "ipset"),
    ("podman", "podman"),
    ("runc", "runc"),
];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            build(&root)
        }
        Task::Test { args } => {
            setup()?;
            build(&root)?;
            test(&root, &args)
        }
        Task::Bench { only } => {
            setup()?;
            build(&root)?;
            run(Command::new("cargo")
                .current_dir(&root)
                .args(["run", "--release", "--quiet", "--package", "netpol-tests", "--bin", "netpol-bench", "--"])
                .args(&only)
                .arg("--out")
                .arg(root.join("target/bench/results.json"))
                .env("NETPOL_AGENT_BIN", agent_bin(&root)))
        }
        Task::Fuzz { seconds } => {
            setup()?;
            fuzz(&root, seconds)
        }
        Task::Demo { report } => {
            setup()?;
            build(&root)?;
            demo(&root, &report)
        }
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(dir.parent().context("xtask has a parent directory")?.to_path_buf())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn have(program: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|u| u == "0")
}

/// Installs what is missing, idempotently.
fn setup() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES.iter().filter(|(bin, _)| !have(bin)).map(|(_, pkg)| *pkg).collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing {missing:?}; run as root (or install them) first");
        }
        eprintln!("setup: installing Debian packages {missing:?}");
        run(Command::new("apt-get").arg("update").arg("-qq").env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    // The eBPF crate builds with the pinned nightly and -Z build-std=core.
    let toolchain = ebpf_toolchain()?;
    // Every cargo this process runs builds the eBPF crate with it (the agent's build.rs reads it).
    std::env::set_var("NETPOL_EBPF_TOOLCHAIN", &toolchain);
    let sysroot = output(Command::new("rustc").arg(format!("+{toolchain}")).args(["--print", "sysroot"]))
        .with_context(|| format!("the {toolchain} toolchain is needed to build the eBPF programs"))?;
    let sysroot = PathBuf::from(sysroot);
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("setup: adding rust-src to {toolchain}");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &toolchain]))?;
    }
    // bpf-linker, built against the nightly toolchain's own libLLVM, cached outside the clone.
    let lib = std::fs::read_dir(sysroot.join("lib"))
        .context("read nightly sysroot")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-")))
        .context("nightly ships no libLLVM.so.*-rust-*")?;
    let lib_name = lib.file_name().and_then(|n| n.to_str()).context("libLLVM file name")?.to_string();
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let cache = home.join(".cache/netpol");
    let root = cache.join(format!("bpf-linker-{lib_name}"));
    if root.join("bin/bpf-linker").is_file() {
        return Ok(());
    }
    let version = output(Command::new("rustc").arg(format!("+{toolchain}")).arg("-vV"))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc reports no LLVM version")?
        .to_string();
    let prefix = cache.join(format!("llvm-{lib_name}"));
    std::fs::create_dir_all(prefix.join("lib")).context("create LLVM prefix")?;
    for link in [prefix.join("lib/libLLVM.so"), prefix.join("lib").join(&lib_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).with_context(|| format!("link {}", link.display()))?;
    }
    eprintln!("setup: building bpf-linker against {lib_name} (about a minute and a half)");
    run(Command::new("cargo")
        .arg(format!("+{toolchain}"))
        .args(["install", "bpf-linker", "--version", "0.13.0", "--locked", "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")])
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix))
}

/// The nightly the eBPF crate is built with: the channel pinned in
/// `netpol-ebpf/rust-toolchain.toml`, under that name when rustup has it, or as the machine's
/// `nightly` when that is the same release (machines that cannot download toolchains); otherwise
/// the pinned one is installed. The agent's build.rs gets it as `NETPOL_EBPF_TOOLCHAIN`.
fn ebpf_toolchain() -> anyhow::Result<String> {
    static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(t) = CHOSEN.get() {
        return Ok(t.clone());
    }
    let pinned = pinned_nightly()?;
    let date = pinned.strip_prefix("nightly-").context("the pinned channel is not nightly-YYYY-MM-DD")?;
    let commit_date = |toolchain: &str| {
        output(Command::new("rustc").arg(format!("+{toolchain}")).arg("-vV"))
            .ok()
            .and_then(|v| v.lines().find_map(|l| l.strip_prefix("commit-date: ").map(str::to_string)))
    };
    // A nightly's commit date is the day before its channel date or the same day.
    let same_release = |found: &str| found == date || next_day(found).as_deref() == Some(date);
    let chosen = if output(Command::new("rustup").args(["run", &pinned, "rustc", "-V"])).is_ok() {
        pinned
    } else if commit_date("nightly").is_some_and(|d| same_release(&d)) {
        "nightly".to_string()
    } else {
        eprintln!("setup: installing the pinned toolchain {pinned}");
        run(Command::new("rustup").args(["toolchain", "install", &pinned, "--profile", "minimal", "--component", "rust-src"]))?;
        pinned
    };
    Ok(CHOSEN.get_or_init(|| chosen).clone())
}

/// The channel of `netpol-ebpf/rust-toolchain.toml`.
fn pinned_nightly() -> anyhow::Result<String> {
    let path = workspace_root()?.join("netpol-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel").map(|v| v.trim_start_matches([' ', '=']).trim().trim_matches('"').to_string()))
        .with_context(|| format!("{} names no channel", path.display()))
}

/// The day after `YYYY-MM-DD` (none when it is not such a date).
fn next_day(date: &str) -> Option<String> {
    let mut parts = date.split('-').map(|p| p.parse::<u32>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let last = *days.get(usize::try_from(m.checked_sub(1)?).ok()?)?;
    Some(match (d < last, m < 12) {
        (true, _) => format!("{y:04}-{m:02}-{:02}", d + 1),
        (false, true) => format!("{y:04}-{:02}-01", m + 1),
        (false, false) => format!("{:04}-01-01", y + 1),
    })
}

fn build(root: &Path) -> anyhow::Result<()> {
    run(Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release", "--package", "netpol-agent", "--bin", "netpol-agent"]))
}

fn agent_bin(root: &Path) -> PathBuf {
    root.join("target/release/netpol-agent")
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("note: not root: the privileged tests (eBPF, network namespaces) will skip, saying why");
    }
    run(Command::new("cargo")
        .current_dir(root)
        .args(["test", "--workspace", "--exclude", "netpol-ebpf"])
        .args(args)
        .env("NETPOL_AGENT_BIN", agent_bin(root)))?;
    // The fuzz targets' checks on deterministic random inputs (fuzz/tests/random.rs), not
    // cargo-fuzz itself: that needs cargo-fuzz installed and the whole agent built again with
    // the fuzzer's instrumentation, which costs a fresh machine more than ten minutes. Sharing
    // the workspace's target directory reuses its test builds. `cargo xtask fuzz` fuzzes.
    if args.is_empty() {
        run(Command::new("cargo")
            .current_dir(root.join("fuzz"))
            .arg("test")
            .env("CARGO_TARGET_DIR", root.join("target")))?;
    }
    Ok(())
}

/// The cargo-fuzz targets (fuzz/Cargo.toml) and the parser test with a time budget.
const FUZZ_TARGETS: &[&str] = &["manifests", "compiler"];

fn fuzz(root: &Path, seconds: u64) -> anyhow::Result<()> {
    if !have("cargo-fuzz") {
        eprintln!("setup: installing cargo-fuzz (about a minute)");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    for target in FUZZ_TARGETS {
        // New inputs go to a corpus under target/; the committed seeds are only read.
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
        // No AddressSanitizer (coverage instrumentation only): the code under test is safe
        // Rust, where a bug is a panic, and without ASan the target runs more inputs.
        run(Command::new("cargo")
            .current_dir(root)
            .args(["+nightly", "fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .arg(root.join("fuzz/seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=4096"))?;
    }
    if !is_root() {
        eprintln!("note: not root: the packet parser test (BPF_PROG_TEST_RUN) is left out");
        return Ok(());
    }
    // About 60 000 frames a second through BPF_PROG_TEST_RUN and the test's own parser.
    run(Command::new("cargo")
        .current_dir(root)
        .args(["test", "--release", "--package", "netpol-agent", "--test", "packet_fuzz", "--", "--nocapture"])
        .env("NETPOL_PACKET_FUZZ_CASES", (seconds * 60_000).to_string())
        .env("NETPOL_PACKET_FUZZ_SEED", std::process::id().to_string()))
}

fn demo(root: &Path, report: &Path) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo builds network namespaces and loads eBPF programs: run it as root");
    }
    let report = if report.is_absolute() { report.to_path_buf() } else { root.join(report) };
    run(Command::new("cargo")
        .current_dir(root)
        .args(["run", "--release", "--quiet", "--package", "netpol-tests", "--bin", "netpol-demo", "--"])
        .arg("--report")
        .arg(&report)
        .env("NETPOL_AGENT_BIN", agent_bin(root)))
}

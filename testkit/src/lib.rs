//! netpol's one test kit, for the agent's tests, the sandbox tests in `tests/`, the fuzz targets
//! and the benchmarks:
//!
//! - [`rng`]: the one seeded generator.
//! - [`frames`]: Ethernet, IPv4/IPv6, TCP/UDP/SCTP/ICMP frame builders.
//! - [`objects`]: pods, namespaces and policies built as the API holds them.
//! - [`scenarios`]: named manifests (the three-tier example) and how to load them.
//! - [`random`]: random clusters from a seed.
//! - [`compiled`]: a cluster compiled by the real compiler, asked flow by flow (truth tables).
//! - [`spec`]: the reference reading of the spec that compiled verdicts are held to.
//! - [`datapath`]: the real classifiers under BPF_PROG_TEST_RUN, with maps filled (root).
//! - [`deploy`]: the manifests of `deploy/`, as the tests read them.
pub mod compiled;
pub mod datapath;
pub mod deploy;
pub mod frames;
pub mod objects;
pub mod random;
pub mod rng;
pub mod scenarios;
pub mod spec;

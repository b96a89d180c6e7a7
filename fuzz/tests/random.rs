//! The fuzz targets' checks on deterministic pseudo-random inputs: what runs without cargo-fuzz
//! and nightly (`cargo test --release` here; `cargo xtask test` runs it). NETPOL_FUZZ_CASES sets
//! the number of inputs per check (default 20 000), NETPOL_FUZZ_SEED the first seed.

use netpol_fuzz::{check_compiler, check_manifest};
use netpol_testkit::rng::Rng;

fn cases() -> u64 {
    std::env::var("NETPOL_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("NETPOL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

/// The seed manifests of the cargo-fuzz target.
fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("seeds/manifests").map(|e| e.expect("entry").path()).collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).expect("seed")).collect()
}

/// A seed with random edits: byte flips, YAML punctuation, cuts, duplicated and dropped spans.
fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[b":", b"{", b"}", b"[", b"]", b"- ", b"\n", b"---\n", b"&x ", b"*x", b"!!binary ", b"\"", b"'", b"null", b"-1", b"99999999999", b"::", b"/33", b"#", b"\t", b"List"];
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.next_u64() % 8 {
        let len = out.len().max(1);
        let at = (rng.next_u64() as usize) % len;
        match rng.next_u64() % 6 {
            0 if !out.is_empty() => out[at] ^= 1 << (rng.next_u64() % 8),
            1 => {
                let t = TOKENS[(rng.next_u64() as usize) % TOKENS.len()];
                out.splice(at.min(out.len())..at.min(out.len()), t.iter().copied());
            }
            2 => out.truncate(at),
            3 if !out.is_empty() => {
                let end = (at + (rng.next_u64() as usize) % 64).min(out.len());
                out.drain(at..end);
            }
            4 if !out.is_empty() => {
                let end = (at + (rng.next_u64() as usize) % 64).min(out.len());
                let span = out[at..end].to_vec();
                let to = (rng.next_u64() as usize) % out.len();
                out.splice(to..to, span);
            }
            _ => {
                let other = &others[(rng.next_u64() as usize) % others.len()];
                let from = (rng.next_u64() as usize) % other.len().max(1);
                let end = (from + (rng.next_u64() as usize) % 128).min(other.len());
                out.splice(at.min(out.len())..at.min(out.len()), other[from..end].iter().copied());
            }
        }
    }
    out
}

#[test]
fn manifests_never_panic_and_every_problem_names_its_object_or_file() {
    let seeds = seeds();
    let mut rng = Rng::new(seed());
    for _ in 0..cases() {
        let input = match rng.next_u64() % 8 {
            0 => {
                let n = (rng.next_u64() % 512) as usize;
                rng.bytes(n)
            }
            _ => {
                let seed = &seeds[(rng.next_u64() as usize) % seeds.len()];
                mutate(&mut rng, seed, &seeds)
            }
        };
        check_manifest(&input);
    }
}

#[test]
fn compiled_verdicts_agree_with_the_oracle() {
    let mut rng = Rng::new(seed() ^ 0x5eed);
    for _ in 0..cases() {
        let n = 64 + (rng.next_u64() % 448) as usize;
        check_compiler(&rng.bytes(n));
    }
}

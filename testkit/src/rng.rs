//! The one seeded generator of every test, fuzz check and benchmark input (SplitMix64): the
//! same seed gives the same inputs on every machine, so a failure reproduces from its seed.

/// A small deterministic generator; not for anything but test inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from the environment variable `var` when it holds a number, else
    /// from `default`; the seed is printed, so that a failing run can be repeated.
    pub fn from_env(var: &str, default: u64) -> Self {
        let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
        eprintln!("seed {seed} (set {var} to repeat or vary it)");
        Self::new(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        // The remainder is below n, which is a usize.
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64().to_le_bytes()[0]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn one_seed_gives_one_sequence_and_numbers_stay_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        assert_eq!(xs, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(xs, (0..8).map(|_| Rng::new(8).next_u64()).collect::<Vec<_>>());
        let mut r = Rng::new(0);
        assert!((0..1000).all(|_| r.below(3) < 3));
        let hits = (0..1000).filter(|_| r.chance(1, 4)).count();
        assert!((150..350).contains(&hits), "a quarter of 1000 draws: {hits}");
    }
}

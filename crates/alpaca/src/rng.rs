//! The one pseudo-random generator of the crate: seeded, platform-independent, reproducible
//! across versions (sampling, data shuffles, fresh weights, dropout).

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: tiny, fast, and stable across platforms.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }
    /// The `i`-th draw (0-based) of [`Rng::new`]`(seed).next_u64()`, computed directly:
    /// SplitMix64 is a counter hash, so any draw can be made on its own (in parallel, or
    /// again later) as a pure function of `(seed, i)`.
    #[inline(always)]
    pub fn u64_at(seed: u64, i: u64) -> u64 {
        mix(seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN)))
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn draws_at_a_counter_match_the_sequence() {
        let mut r = Rng::new(42);
        for i in 0..100 {
            assert_eq!(r.next_u64(), Rng::u64_at(42, i));
        }
    }
}

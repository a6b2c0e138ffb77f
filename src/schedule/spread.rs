//! A job's stable offset into its schedule, bit-exact with backy 2.x.
//!
//! The Python scheduler computed
//! `random.Random(int(md5(name).hexdigest(), 16)).randint(0, limit)`. Sites that
//! move to us keep each job's time of day only if we draw the very same number,
//! so this is CPython's Mersenne Twister (`_randommodule.c`) and its `randint`
//! (`random.py`), step for step:
//!
//! - the seed is the md5 digest read as one big-endian integer, cut into 32-bit
//!   words least significant first, without leading zero words (at least one),
//!   and fed to MT19937's `init_by_array`;
//! - `randint(a, b)` is `a + _randbelow(b - a + 1)`, and `_randbelow(n)` draws
//!   `getrandbits(n.bit_length())` until the value is below `n`;
//! - `getrandbits(k)` takes one 32-bit output per started word, least
//!   significant word first, and drops the low bits of the last one.

use md5::{Digest, Md5};

/// The job's spread in seconds: a number in `0..=limit` (both ends included) that
/// depends only on the job's name, the same one backy 2.x's scheduler drew.
///
/// `limit` is the longest interval of the job's schedule in seconds.
pub fn spread(job_name: &str, limit: u64) -> u64 {
    let digest = Md5::digest(job_name.as_bytes());
    let seed = u128::from_be_bytes(digest.into());
    let mut generator = Mt19937::from_seed(seed);
    let n = u128::from(limit) + 1;
    // randbelow(n) < n <= limit + 1, so the value fits in u64.
    u64::try_from(generator.randbelow(n)).unwrap_or(limit)
}

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// MT19937 as CPython implements it.
struct Mt19937 {
    state: [u32; N],
    index: usize,
}

impl Mt19937 {
    /// `random.seed(n)` for a non-negative integer `n` below 2^128.
    fn from_seed(seed: u128) -> Mt19937 {
        let mut key: Vec<u32> = (0..4).map(|i| (seed >> (32 * i)) as u32).collect();
        while key.len() > 1 && key.last() == Some(&0) {
            key.pop();
        }
        let mut generator = Mt19937::from_u32(19_650_218);
        generator.mix_in(&key);
        generator
    }

    /// `init_genrand`.
    fn from_u32(seed: u32) -> Mt19937 {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, index: N }
    }

    /// The body of `init_by_array` after `init_genrand(19650218)`.
    fn mix_in(&mut self, key: &[u32]) {
        let mt = &mut self.state;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1];
            mt[i] =
                (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
    }

    /// `genrand_uint32`.
    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        let mt = &mut self.state;
        for k in 0..N {
            let y = (mt[k] & UPPER_MASK) | (mt[(k + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            mt[k] = mt[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// `getrandbits(k)` for `1 <= k <= 128`.
    fn getrandbits(&mut self, k: u32) -> u128 {
        if k <= 32 {
            return u128::from(self.next_u32() >> (32 - k));
        }
        let mut value = 0u128;
        let mut left = k;
        let mut shift = 0;
        while left > 0 {
            let mut word = self.next_u32();
            if left < 32 {
                word >>= 32 - left;
            }
            value |= u128::from(word) << shift;
            shift += 32;
            left = left.saturating_sub(32);
        }
        value
    }

    /// `_randbelow_with_getrandbits(n)` for `n >= 1`.
    fn randbelow(&mut self, n: u128) -> u128 {
        let k = 128 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spread of backy 2.x for known job names (md5-seeded), as it computed it.
    #[test]
    fn spreads_match_backy_2() {
        let limits = [3600, 86_400, 604_800, 2_592_000];
        let table: [(&str, [u64; 4]); 4] = [
            ("test01", [624, 19_971, 159_773, 639_092]),
            ("test02", [1131, 36_217, 289_741, 1_158_966]),
            ("vm01", [3205, 63_733, 509_869, 2_039_477]),
            ("host1", [330, 10_577, 84_620, 338_481]),
        ];
        for (name, expected) in table {
            for (limit, want) in limits.iter().zip(expected) {
                assert_eq!(spread(name, *limit), want, "{name} at {limit}");
            }
        }
    }

    /// Drawn with python3.11:
    /// `random.Random(int(hashlib.md5(n.encode()).hexdigest(), 16)).randint(0, l)`.
    /// Covers `getrandbits` with one word (and its rejection loop at tiny limits),
    /// exactly 32 bits, 33 bits (two words) and 41 bits, and non-ASCII names.
    #[test]
    fn python_vectors() {
        let limits = [0, 1, 59, 31_536_000, (1 << 32) - 1, 1 << 32, 1 << 40];
        let table: [(&str, [u64; 7]); 6] = [
            (
                "test01",
                [
                    0,
                    0,
                    9,
                    5_112_738,
                    2_012_376_523,
                    2_012_376_523,
                    719_271_914_955,
                ],
            ),
            (
                "vm01",
                [
                    0,
                    1,
                    56,
                    29_838_799,
                    2_891_636_116,
                    2_891_636_116,
                    1_068_043_525_524,
                ],
            ),
            (
                "a",
                [
                    0,
                    1,
                    30,
                    15_765_065,
                    610_859_588,
                    610_859_588,
                    271_193_799_236,
                ],
            ),
            (
                "",
                [
                    0,
                    0,
                    51,
                    26_856_560,
                    2_655_502_811,
                    2_655_502_811,
                    853_059_027_419,
                ],
            ),
            (
                "db-backup.example.com",
                [
                    0,
                    1,
                    48,
                    25_270_132,
                    814_336_459,
                    814_336_459,
                    842_627_926_475,
                ],
            ),
            (
                "été",
                [
                    0,
                    0,
                    34,
                    18_032_242,
                    2_308_127_039,
                    2_308_127_039,
                    491_934_398_783,
                ],
            ),
        ];
        for (name, expected) in table {
            for (limit, want) in limits.iter().zip(expected) {
                assert_eq!(spread(name, *limit), want, "{name:?} at {limit}");
            }
        }
        // randint(0, 2**64 - 1) needs 65 bits: three words, the last cut to 1 bit.
        assert_eq!(spread("test01", u64::MAX), 16_182_934_529_837_754_664);
    }

    /// Small seeds use fewer key words (`random.Random(seed)` in python3.11):
    /// the key has no leading zero words, and 0 is one zero word.
    #[test]
    fn key_length_follows_the_seed() {
        let table: [(u128, u128, u128); 5] = [
            (0, 50_494, 7_106_521_602_475_165_645),
            (5, 81_644, 4_712_128_852_136_459_333),
            (1 << 32, 14_810, 6_480_552_028_864_852_439),
            ((1 << 40) + 7, 80_439, 13_785_699_202_830_676_186),
            (1 << 96, 42_318, 13_290_248_421_608_205_586),
        ];
        for (seed, daily, bits64) in table {
            assert_eq!(Mt19937::from_seed(seed).randbelow(86_401), daily, "{seed}");
            assert_eq!(Mt19937::from_seed(seed).getrandbits(64), bits64, "{seed}");
        }
    }

    /// The reference output of mt19937ar.c (`init_by_array({0x123, 0x234,
    /// 0x345, 0x456})`), which CPython's generator shares.
    #[test]
    fn reference_generator() {
        let mut generator = Mt19937::from_u32(19_650_218);
        generator.mix_in(&[0x123, 0x234, 0x345, 0x456]);
        let first: Vec<u32> = (0..5).map(|_| generator.next_u32()).collect();
        assert_eq!(
            first,
            [
                1_067_595_299,
                955_945_823,
                477_289_528,
                4_107_218_783,
                4_228_976_476
            ]
        );
    }
}

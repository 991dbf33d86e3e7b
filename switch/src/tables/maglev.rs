//! Maglev consistent hashing: the lookup table the load-balancing stage
//! uses to pick a service backend from a flow hash.
//!
//! This follows Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4 and its "Pseudocode 1: Populate
//! Maglev hashing lookup table". Each backend `i` gets a preference list,
//! a permutation of the `M` table slots:
//!
//! ```text
//! offset_i = h1(key_i) mod M
//! skip_i   = h2(key_i) mod (M - 1) + 1
//! permutation_i[j] = (offset_i + j * skip_i) mod M
//! ```
//!
//! Because `M` is prime and `1 <= skip_i < M`, every preference list visits
//! every slot exactly once. The backends then take turns, in a fixed order,
//! each claiming its next preferred slot that is still empty, until the
//! table is full. A flow with hash `h` goes to `table[h mod M]`.
//!
//! What this guarantees:
//!
//! - **Balance.** Every backend claims one slot per round, so each owns
//!   exactly `floor(M/N)` or `ceil(M/N)` slots.
//! - **Minimal disruption (approximately).** A backend's preferences depend
//!   only on its own key, so removing or adding one backend mostly changes
//!   the slots it owned or takes; only a small fraction of the others' slots
//!   move between surviving backends (the paper's Fig. 12; the tests below
//!   measure it). `M` should be well above `100 * N` for that to hold; the
//!   default, [`DEFAULT_TABLE_SIZE`], suits services of up to ~160 backends.
//! - **Order independence.** The populate loop runs over the backends sorted
//!   by key, so the slot a key receives depends only on the set of keys,
//!   never on the order the caller listed them in; the table stores the
//!   caller's indices. Duplicate keys are ordered by their index.
//! - **Cost.** Building is `O(M log M)` expected probes (the paper's bound)
//!   and allocates; [`Maglev::lookup`] is one modulo and one load and
//!   allocates nothing. The table is immutable: a change of backends builds
//!   a new one, published with the rest of the snapshot.

use thiserror::Error;

/// Default lookup-table size (prime): enough for services of up to ~160
/// backends at the paper's `M > 100 * N`, at 32 KiB per table.
pub const DEFAULT_TABLE_SIZE: usize = podswitch_api::config::DEFAULT_MAGLEV_TABLE_SIZE;

/// Largest table size accepted: the largest prime below 2^20 (2 MiB of
/// `u16` entries).
pub const MAX_TABLE_SIZE: usize = 1_048_573;

/// Backend indices are stored as `u16`; `u16::MAX` marks an empty slot while
/// the table is being populated, so it is never a backend index.
const MAX_BACKENDS: usize = u16::MAX as usize;
const EMPTY: u16 = u16::MAX;

/// Seeds of the two independent key hashes (`h1` for the offset, `h2` for
/// the skip): nothing-up-my-sleeve constants, fixed forever, since changing
/// them reshuffles every table.
const SEED_OFFSET: u64 = 0x243f_6a88_85a3_08d3; // pi's fraction, bits 1-64
const SEED_SKIP: u64 = 0x1319_8a2e_0370_7345; // bits 65-128, low bit set

/// Whether `n` is prime. Deterministic Miller-Rabin: exact for every `u64`,
/// a few dozen modular multiplications.
#[allow(
    clippy::manual_is_multiple_of,
    reason = "u64::is_multiple_of needs Rust 1.87; the workspace's rust-version is 1.85"
)]
pub fn is_prime(n: usize) -> bool {
    let n = n as u64;
    if n < 2 {
        return false;
    }
    const SMALL: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    for p in SMALL {
        if n % p == 0 {
            return n == p;
        }
    }
    if n < 37 * 37 {
        return true;
    }
    // n - 1 = d * 2^s with d odd.
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    // These twelve bases make the test exact below 2^64 (Sorenson and
    // Webster, 2015, "Strong pseudoprimes to twelve prime bases").
    'witness: for a in SMALL {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(m)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut acc = 1;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    acc
}

/// splitmix64's finalizer (Stafford's "Mix13") over `key ^ seed`: a
/// bijection with full avalanche, so the caller's keys may be raw
/// `ip << 16 | port` values as well as hashes, and the two seeds give two
/// independent-looking hashes.
fn mix64(key: u64, seed: u64) -> u64 {
    let mut z = key ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Why a Maglev table could not be built.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size must be prime, so that every backend's preference
    /// list visits every slot.
    #[error("Maglev table size {0} is not a prime")]
    NotPrime(usize),
    /// Every backend needs at least one slot.
    #[error("Maglev table size {size} must be at least the backend count {backends}")]
    TooSmall {
        /// The requested table size.
        size: usize,
        /// The number of backends given.
        backends: usize,
    },
    /// The table size is above [`MAX_TABLE_SIZE`].
    #[error("Maglev table size {0} is above the largest accepted, {max}", max = MAX_TABLE_SIZE)]
    TooLarge(usize),
    /// Backend indices are stored as `u16`, with one value reserved.
    #[error("more than 65535 backends")]
    TooManyBackends(usize),
}

/// An immutable lookup table: entry `i` is an index into the caller's
/// backend list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    /// `M` entries, or none when built from no backends.
    table: Box<[u16]>,
    backends: usize,
}

/// One backend's walk through its preference list during populate: the
/// next slot it would claim, its stride, and twice its stride (mod M).
struct Cursor {
    slot: u32,
    skip: u32,
    skip2: u32,
}

impl Maglev {
    /// Builds the table for `backend_keys` with `size` (`M`) slots.
    ///
    /// `backend_keys[i]` is a stable identity of backend `i` (the caller
    /// passes e.g. a hash of `"ip:port"`). The slots a key receives depend
    /// only on the set of keys, not on their order: permuting
    /// `backend_keys` permutes the indices [`Maglev::lookup`] returns the
    /// same way. An empty `backend_keys` gives a table whose lookups all
    /// return `None`.
    ///
    /// `size` must be a prime no larger than [`MAX_TABLE_SIZE`] and no
    /// smaller than the number of backends; at most 65535 backends.
    pub fn build(backend_keys: &[u64], size: usize) -> Result<Maglev, MaglevError> {
        let n = backend_keys.len();
        if n > MAX_BACKENDS {
            return Err(MaglevError::TooManyBackends(n));
        }
        if size > MAX_TABLE_SIZE {
            return Err(MaglevError::TooLarge(size));
        }
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        if size < n {
            return Err(MaglevError::TooSmall { size, backends: n });
        }
        if n == 0 {
            return Ok(Maglev {
                table: Box::default(),
                backends: 0,
            });
        }

        // Turn order: by key, then by the caller's index. n <= 65535, so
        // every index fits in a u16.
        let mut order: Vec<u16> = (0..n as u16).collect();
        order.sort_unstable_by_key(|&i| (backend_keys[usize::from(i)], i));

        // size <= MAX_TABLE_SIZE < 2^20, so slots fit in u32 and
        // `slot + skip < 2 * m` cannot overflow.
        let m = size as u32;
        let mut cursors: Vec<Cursor> = order
            .iter()
            .map(|&i| {
                let key = backend_keys[usize::from(i)];
                let skip = (mix64(key, SEED_SKIP) % u64::from(m - 1)) as u32 + 1;
                Cursor {
                    slot: (mix64(key, SEED_OFFSET) % u64::from(m)) as u32,
                    skip,
                    skip2: advance(skip, skip, m),
                }
            })
            .collect();

        // Occupancy is probed in a bitmap (8 KiB for M = 65537, resident in
        // L1) rather than in the u16 table itself; most probes near the end
        // of populate hit taken slots.
        let mut taken = vec![0u64; size.div_ceil(64)];
        let is_taken =
            |taken: &[u64], slot: u32| taken[(slot >> 6) as usize] & (1 << (slot & 63)) != 0;
        let mut table = vec![EMPTY; size];
        let mut free = size;
        // Pseudocode 1: backends take turns claiming their next preferred
        // empty slot until every slot is claimed. Terminates because each
        // preference list is a full permutation of the slots (M prime), so
        // a backend always finds an empty one while any remain.
        'populate: loop {
            for (cursor, &backend) in cursors.iter_mut().zip(&order) {
                // Probe the preference list two entries at a time: the pair
                // is independent, and stepping by `skip2` halves the chain of
                // dependent additions (about 20% faster than one at a time).
                // The first empty entry in list order wins, as in the paper.
                let mut probe = cursor.slot;
                let slot = loop {
                    let next = advance(probe, cursor.skip, m);
                    let (first, second) = (is_taken(&taken, probe), is_taken(&taken, next));
                    if !first {
                        break probe;
                    }
                    if !second {
                        break next;
                    }
                    probe = advance(probe, cursor.skip2, m);
                };
                taken[(slot >> 6) as usize] |= 1 << (slot & 63);
                table[slot as usize] = backend;
                cursor.slot = advance(slot, cursor.skip, m);
                free -= 1;
                if free == 0 {
                    break 'populate;
                }
            }
        }
        debug_assert!(!table.contains(&EMPTY));

        Ok(Maglev {
            table: table.into_boxed_slice(),
            backends: n,
        })
    }

    /// The backend index for a flow: `table[flow_hash mod M]`, or `None`
    /// when the table was built from no backends. One modulo and one load;
    /// allocates nothing.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> Option<u16> {
        // checked_rem is None only for the empty table (M = 0); for any
        // other table the index is in bounds.
        let slot = flow_hash.checked_rem(self.table.len() as u64)?;
        self.table.get(slot as usize).copied()
    }

    /// The number of table entries `M`; 0 for a table built from no
    /// backends.
    pub fn size(&self) -> usize {
        self.table.len()
    }

    /// The number of backends the table was built from.
    pub fn backends(&self) -> usize {
        self.backends
    }

    /// Slots owned by each backend index (`floor(M/N)` or `ceil(M/N)`
    /// each, summing to `M`). Counts the whole table: for the control
    /// API, not the fast path.
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.backends];
        for &b in self.table.iter() {
            if let Some(c) = counts.get_mut(usize::from(b)) {
                *c += 1;
            }
        }
        counts
    }

    /// The table itself: entry `i` is the backend index for flow hashes
    /// congruent to `i` mod [`Maglev::size`].
    pub fn as_slice(&self) -> &[u16] {
        &self.table
    }
}

/// The next slot of a preference list: `(slot + skip) mod m`, without a
/// division, for `slot, skip < m`.
#[inline]
fn advance(slot: u32, skip: u32, m: u32) -> u32 {
    let next = slot + skip;
    if next >= m {
        next - m
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: usize = 65537;

    /// Keys the way a caller might form them: `10.x.y.z << 16 | port`.
    fn keys(n: usize) -> Vec<u64> {
        (0..n as u64)
            .map(|i| ((0x0a00_0000 + i) << 16) | 8080)
            .collect()
    }

    /// Slots owned per backend index.
    fn counts(t: &Maglev) -> Vec<usize> {
        let mut c = vec![0; t.backends()];
        for &b in t.as_slice() {
            c[usize::from(b)] += 1;
        }
        c
    }

    /// The key owning each slot.
    fn slot_keys(t: &Maglev, keys: &[u64]) -> Vec<u64> {
        t.as_slice().iter().map(|&b| keys[usize::from(b)]).collect()
    }

    #[test]
    fn every_backend_gets_floor_or_ceil_of_m_over_n() {
        for n in [1, 3, 7, 100, 1000] {
            let t = Maglev::build(&keys(n), M).unwrap();
            assert_eq!(t.size(), M);
            assert_eq!(t.backends(), n);
            let (lo, hi) = (M / n, M.div_ceil(n));
            let c = counts(&t);
            assert_eq!(c.iter().sum::<usize>(), M);
            for (i, &k) in c.iter().enumerate() {
                assert!((lo..=hi).contains(&k), "n={n}: backend {i} owns {k} slots");
            }
            // Exactly M mod N backends get the extra slot.
            assert_eq!(c.iter().filter(|&&k| k == hi && hi > lo).count(), M % n);
        }
    }

    #[test]
    fn slot_counts_are_the_balance_the_table_promises() {
        for (n, m) in [(3, 1021), (1, 251), (7, 7), (10, 101)] {
            let t = Maglev::build(&keys(n), m).unwrap();
            let c = t.slot_counts();
            assert_eq!(c, counts(&t));
            assert_eq!(c.iter().sum::<usize>(), m);
            assert!(c.iter().all(|&k| k == m / n || k == m.div_ceil(n)), "{c:?}");
        }
        assert!(Maglev::build(&[], 251).unwrap().slot_counts().is_empty());
    }

    /// Fraction of slots owned before and after by backends present in both,
    /// whose owner changed from one of those to another: the disruption
    /// beyond what the membership change itself forces.
    fn moved_between_survivors(before: &[u64], after: &[u64], changed: u64) -> (f64, f64) {
        let moved = before
            .iter()
            .zip(after)
            .filter(|&(&b, &a)| b != changed && a != changed && b != a)
            .count();
        let total_changed = before.iter().zip(after).filter(|(b, a)| b != a).count();
        (moved as f64 / M as f64, total_changed as f64 / M as f64)
    }

    #[test]
    fn removing_one_of_100_backends_moves_few_other_slots() {
        let all = keys(100);
        let t = Maglev::build(&all, M).unwrap();
        let mut worst: f64 = 0.0;
        for removed in [0, 37, 99] {
            let mut rest = all.clone();
            let gone = rest.remove(removed);
            let u = Maglev::build(&rest, M).unwrap();
            let (extra, total) =
                moved_between_survivors(&slot_keys(&t, &all), &slot_keys(&u, &rest), gone);
            println!(
                "remove backend {removed} of 100, M={M}: {:.3}% of slots moved between \
                 survivors, {:.3}% changed in all (1/N = 1%)",
                extra * 100.0,
                total * 100.0
            );
            worst = worst.max(extra);
        }
        assert!(worst < 0.02, "disruption {:.3}% >= 2%", worst * 100.0);
    }

    #[test]
    fn adding_a_101st_backend_moves_few_other_slots() {
        let all = keys(101);
        let before = &all[..100];
        let t = Maglev::build(before, M).unwrap();
        let u = Maglev::build(&all, M).unwrap();
        let added = all[100];
        let (extra, total) =
            moved_between_survivors(&slot_keys(&t, before), &slot_keys(&u, &all), added);
        println!(
            "add a 101st backend, M={M}: {:.3}% of slots moved between the old backends, \
             {:.3}% changed in all (1/N = 1%)",
            extra * 100.0,
            total * 100.0
        );
        assert!(extra < 0.02, "disruption {:.3}% >= 2%", extra * 100.0);
    }

    #[test]
    fn permuting_the_keys_permutes_the_indices() {
        let k = keys(50);
        let t = Maglev::build(&k, DEFAULT_TABLE_SIZE).unwrap();
        // A fixed shuffle: reversed, then rotated.
        let mut p = k.clone();
        p.reverse();
        p.rotate_left(17);
        let u = Maglev::build(&p, DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(slot_keys(&t, &k), slot_keys(&u, &p));
        for h in 0..DEFAULT_TABLE_SIZE as u64 * 3 {
            let a = k[usize::from(t.lookup(h).unwrap())];
            let b = p[usize::from(u.lookup(h).unwrap())];
            assert_eq!(a, b, "flow hash {h}");
        }
    }

    #[test]
    fn duplicate_keys_still_balance() {
        let t = Maglev::build(&[7, 7, 7, 9], 13).unwrap();
        let c = counts(&t);
        assert!(c.iter().all(|&k| k == 3 || k == 4), "{c:?}");
    }

    #[test]
    fn build_is_deterministic() {
        let k = keys(100);
        let a = Maglev::build(&k, M).unwrap();
        let b = Maglev::build(&k, M).unwrap();
        assert_eq!(a, b);
        // Pin the output, so that a change to the hashes or the populate
        // order (which would reshuffle every deployed table) is noticed. The
        // expected tables come from a separate, literal transcription of
        // Pseudocode 1 (explicit permutation lists, `next[]` counters).
        let t = Maglev::build(&[1, 2, 3], 7).unwrap();
        assert_eq!(t.as_slice(), &[2, 1, 2, 0, 0, 1, 0]);
        let t = Maglev::build(&[3, 1, 2], 7).unwrap();
        assert_eq!(t.as_slice(), &[0, 2, 0, 1, 1, 2, 1]);
        let k = [
            4_066_689_987_807_800_415,
            16_283_948_624_427_255_403,
            17_156_003_348_795_519_956,
            10_077_857_921_523_255_118,
            14_276_373_248_394_863_179,
        ];
        let t = Maglev::build(&k, 13).unwrap();
        assert_eq!(t.as_slice(), &[1, 4, 2, 2, 0, 4, 4, 3, 3, 1, 0, 3, 0]);
    }

    #[test]
    fn lookup_is_table_at_hash_mod_m() {
        let t = Maglev::build(&keys(10), 101).unwrap();
        for h in [0, 1, 100, 101, 12345, u64::MAX] {
            assert_eq!(t.lookup(h), Some(t.as_slice()[(h % 101) as usize]));
        }
    }

    #[test]
    fn one_slot_per_backend_when_m_equals_n() {
        let t = Maglev::build(&keys(7), 7).unwrap();
        assert_eq!(counts(&t), vec![1; 7]);
    }

    #[test]
    fn empty_backends_look_up_none() {
        let t = Maglev::build(&[], DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(t.backends(), 0);
        assert_eq!(t.size(), 0);
        assert!(t.as_slice().is_empty());
        assert_eq!(t.lookup(0), None);
        assert_eq!(t.lookup(u64::MAX), None);
        // The size is still checked, so a bad configuration shows up before
        // the service has endpoints.
        assert_eq!(Maglev::build(&[], 100), Err(MaglevError::NotPrime(100)));
    }

    #[test]
    fn errors() {
        assert_eq!(
            Maglev::build(&[1], 65535),
            Err(MaglevError::NotPrime(65535))
        );
        assert_eq!(Maglev::build(&[1], 0), Err(MaglevError::NotPrime(0)));
        assert_eq!(Maglev::build(&[1], 1), Err(MaglevError::NotPrime(1)));
        assert_eq!(
            Maglev::build(&keys(8), 7),
            Err(MaglevError::TooSmall {
                size: 7,
                backends: 8
            })
        );
        assert_eq!(
            Maglev::build(&[1], MAX_TABLE_SIZE + 2),
            Err(MaglevError::TooLarge(MAX_TABLE_SIZE + 2))
        );
        assert_eq!(
            Maglev::build(&[1], usize::MAX),
            Err(MaglevError::TooLarge(usize::MAX))
        );
        assert_eq!(
            Maglev::build(&keys(65536), MAX_TABLE_SIZE),
            Err(MaglevError::TooManyBackends(65536))
        );
        // The largest accepted case builds.
        let t = Maglev::build(&keys(65535), MAX_TABLE_SIZE).unwrap();
        let (lo, hi) = (MAX_TABLE_SIZE / 65535, MAX_TABLE_SIZE.div_ceil(65535));
        assert!(counts(&t).iter().all(|&k| k == lo || k == hi));
        assert_eq!(
            MaglevError::TooSmall {
                size: 7,
                backends: 8
            }
            .to_string(),
            "Maglev table size 7 must be at least the backend count 8"
        );
        assert_eq!(
            MaglevError::TooLarge(2_000_000).to_string(),
            "Maglev table size 2000000 is above the largest accepted, 1048573"
        );
    }

    #[test]
    fn is_prime_known_values() {
        for p in [
            2,
            3,
            5,
            7,
            13,
            251,
            16381,
            65537,
            MAX_TABLE_SIZE,
            DEFAULT_TABLE_SIZE,
        ] {
            assert!(is_prime(p), "{p}");
        }
        for c in [0, 1, 4, 9, 15, 1369, 65535, 16383, 1_048_575, 3_215_031_751] {
            assert!(!is_prime(c), "{c}");
        }
        // The largest prime below 2^64, and a Carmichael number.
        assert!(is_prime(18_446_744_073_709_551_557u64 as usize));
        assert!(!is_prime(561));
        // MAX_TABLE_SIZE is the largest prime below 2^20.
        assert!(((MAX_TABLE_SIZE + 1)..(1 << 20)).all(|n| !is_prime(n)));
    }

    #[test]
    fn is_prime_agrees_with_trial_division() {
        fn slow(n: usize) -> bool {
            n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n / d * d != n)
        }
        for n in 0..20_000 {
            assert_eq!(is_prime(n), slow(n), "{n}");
        }
    }

    /// Pseudocode 1 transcribed literally: explicit permutation lists and
    /// `next[]` counters, turns in key order.
    fn reference(keys: &[u64], m: usize) -> Vec<u16> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&i| (keys[i], i));
        let permutation: Vec<Vec<usize>> = order
            .iter()
            .map(|&i| {
                let offset = (mix64(keys[i], SEED_OFFSET) % m as u64) as usize;
                let skip = (mix64(keys[i], SEED_SKIP) % (m as u64 - 1)) as usize + 1;
                (0..m).map(|j| (offset + j * skip) % m).collect()
            })
            .collect();
        let mut next = vec![0; keys.len()];
        let mut entry: Vec<Option<u16>> = vec![None; m];
        let mut n = 0;
        loop {
            for (rank, &i) in order.iter().enumerate() {
                let mut c = permutation[rank][next[rank]];
                while entry[c].is_some() {
                    next[rank] += 1;
                    c = permutation[rank][next[rank]];
                }
                entry[c] = Some(i as u16);
                next[rank] += 1;
                n += 1;
                if n == m {
                    return entry.into_iter().map(Option::unwrap).collect();
                }
            }
        }
    }

    #[test]
    fn tiny_tables_match_the_papers_pseudocode() {
        for m in [2, 3, 5, 7, 11] {
            for n in 1..=m {
                let k = keys(n);
                let t = Maglev::build(&k, m).unwrap();
                assert_eq!(t.as_slice(), reference(&k, m).as_slice(), "m={m} n={n}");
            }
        }
    }

    fn table_size() -> impl Strategy<Value = usize> {
        prop_oneof![
            3 => prop::sample::select(vec![2usize, 3, 5, 7, 13, 101, 251, 257, 1021, 4093]),
            1 => 0usize..5000,
            1 => any::<usize>(),
        ]
    }

    proptest! {
        #[test]
        fn build_matches_the_papers_pseudocode(
            keys in prop::collection::vec(0u64..64, 1..40),
            size in prop::sample::select(vec![41usize, 43, 97, 101, 257, 1021]),
        ) {
            let t = Maglev::build(&keys, size).unwrap();
            let expected = reference(&keys, size);
            prop_assert_eq!(t.as_slice(), expected.as_slice());
        }

        #[test]
        fn build_never_panics_and_lookup_is_in_range(
            keys in prop::collection::vec(any::<u64>(), 0..300),
            size in table_size(),
            hashes in prop::collection::vec(any::<u64>(), 1..32),
        ) {
            match Maglev::build(&keys, size) {
                Ok(t) => {
                    prop_assert_eq!(t.backends(), keys.len());
                    for h in hashes {
                        match t.lookup(h) {
                            Some(i) => prop_assert!(usize::from(i) < keys.len()),
                            None => prop_assert!(keys.is_empty()),
                        }
                    }
                }
                Err(e) => prop_assert!(
                    !is_prime(size) || size > MAX_TABLE_SIZE || size < keys.len(),
                    "{}", e
                ),
            }
        }
    }
}

//! Fuzzing made permanent, on the stable toolchain: each reader of untrusted input gets seeded
//! mutations of a corpus (valid files and the hostile cases of issue 18, kept in `corpus/`) for a
//! bounded time in an ordinary test (`BEDSIDE_FUZZ_SECS` seconds per target, default 5; CI runs
//! longer). A reader may refuse an input; it must never panic, abort or hang. A panic is reported
//! with the seed, the iteration and the input saved under `target/fuzz-failures/`, so it
//! reproduces with `BEDSIDE_FUZZ_SEED`.
//!
//! Mutations are not coverage-guided (cargo-fuzz needs a nightly compiler and libFuzzer's C++),
//! so they are structure-aware where that matters: byte-level damage to binary headers and
//! field-level damage to metadata, JSON and templates.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// SplitMix64: small, seedable, the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Integers that break size arithmetic: zero, one, sign and width boundaries, huge counts.
pub const INTERESTING_U64: [u64; 12] =
    [0, 1, 2, 0x7f, 0xff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 40, 1_000_000_000_000, i64::MAX as u64, u64::MAX];

/// One random byte-level change: flips, interesting bytes and words, inserted, deleted or
/// duplicated ranges, truncation.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>) {
    let n = data.len();
    match rng.below(8) {
        0 if n > 0 => {
            let i = rng.below(n);
            data[i] ^= 1 << rng.below(8);
        }
        1 if n > 0 => {
            let i = rng.below(n);
            data[i] = *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'\n']);
        }
        2 if n >= 8 => {
            let i = rng.below(n - 7);
            let v = *rng.pick(&INTERESTING_U64);
            if rng.chance(2) {
                data[i..i + 8].copy_from_slice(&v.to_le_bytes());
            } else {
                data[i..i + 4].copy_from_slice(&(v as u32).to_le_bytes());
            }
        }
        3 => {
            let i = rng.below(n + 1);
            let len = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            data.splice(i..i, bytes);
        }
        4 if n > 0 => {
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(64));
            data.drain(i..i + len);
        }
        5 if n > 0 => {
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(64));
            let chunk = data[i..i + len].to_vec();
            let at = rng.below(n + 1);
            data.splice(at..at, chunk);
        }
        6 if n > 0 => data.truncate(rng.below(n)),
        _ if n > 0 => {
            let i = rng.below(n);
            data[i] = rng.next_u64() as u8;
        }
        _ => data.push(rng.next_u64() as u8),
    }
}

/// A random change to a JSON value: a field removed, retyped, set to an extreme, a string
/// stretched or filled with markup.
pub fn mutate_json(rng: &mut Rng, v: &mut serde_json::Value) {
    use serde_json::{json, Value};
    let extremes = [
        json!(null),
        json!(0),
        json!(-1),
        json!(1e30),
        json!(-1e30),
        json!(u64::MAX),
        json!(1_000_000_000_000u64),
        json!("yes"),
        json!(""),
        json!([]),
        json!({}),
        json!(true),
        json!("<|im_start|>system\n"),
        json!(0.5),
    ];
    match v {
        Value::Object(m) if !m.is_empty() && !rng.chance(4) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = rng.pick(&keys).clone();
            match rng.below(4) {
                0 => {
                    m.remove(&k);
                }
                1 => {
                    m.insert(k, rng.pick(&extremes).clone());
                }
                _ => {
                    if let Some(x) = m.get_mut(&k) {
                        mutate_json(rng, x);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() && !rng.chance(4) => {
            let i = rng.below(a.len());
            match rng.below(3) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let x = a[i].clone();
                    a.push(x);
                }
                _ => mutate_json(rng, &mut a[i]),
            }
        }
        Value::String(s) => {
            let mut b = s.clone().into_bytes();
            mutate_bytes(rng, &mut b);
            *s = String::from_utf8_lossy(&b).into_owned();
            // Long strings, but bounded: repeats compound over the 1 to 8 mutations of an input
            // (64^8 times a seed's string is tens of gigabytes).
            if rng.chance(8) && s.len() < MAX_REPEATED_LEN {
                *s = s.repeat(1 + rng.below(64));
            }
        }
        other => *other = rng.pick(&extremes).clone(),
    }
}

/// A string longer than this is not repeated again by [`mutate_json`].
const MAX_REPEATED_LEN: usize = 1 << 16;

/// Seconds each target runs: `BEDSIDE_FUZZ_SECS`, default 5.
pub fn budget() -> Duration {
    let secs = std::env::var("BEDSIDE_FUZZ_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(5.0);
    Duration::from_secs_f64(secs.max(0.0))
}

/// The corpus folder of `target` (`crates/bedside-fuzz/corpus/TARGET`).
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// Every file of a corpus folder, sorted by name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| {
                let p = e.ok()?.path();
                Some((p.file_name()?.to_string_lossy().into_owned(), std::fs::read(&p).ok()?))
            })
            .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Run `check` on every seed unchanged, then on mutations of random seeds (`mutate` applied 1 to
/// 8 times) until the time budget is spent. Returns the number of inputs run. Panics (failing the
/// test) with the seed, the iteration and where the input was saved when `check` panics.
pub fn run<T: Clone>(
    target: &str,
    seeds: &[T],
    mutate: impl Fn(&mut Rng, &mut T),
    save: impl Fn(&T) -> Vec<u8>,
    check: impl Fn(&T),
) -> usize {
    assert!(!seeds.is_empty(), "{target}: no seeds");
    let seed = std::env::var("BEDSIDE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x18_18_18);
    let mut rng = Rng(seed);
    let fail = |input: &T, i: usize, what: &str| -> ! {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{target}-{seed}-{i}"));
        let _ = std::fs::write(&file, save(input));
        panic!("{target}: {what} panicked on input {i} (BEDSIDE_FUZZ_SEED={seed}); input saved to {}", file.display());
    };
    for (i, s) in seeds.iter().enumerate() {
        if catch_unwind(AssertUnwindSafe(|| check(s))).is_err() {
            fail(s, i, "a corpus seed");
        }
    }
    // `BEDSIDE_FUZZ_REPLAY=N` (with the failure's seed) regenerates input N without checking
    // the ones before it, then checks it with its panic uncaught, so the failure shows in full.
    if let Some(target_i) = std::env::var("BEDSIDE_FUZZ_REPLAY").ok().and_then(|s| s.parse::<usize>().ok()) {
        let mut n = seeds.len();
        while n <= target_i {
            let mut input = rng.pick(seeds).clone();
            for _ in 0..1 + rng.below(8) {
                mutate(&mut rng, &mut input);
            }
            if n == target_i {
                eprintln!("{target}: input {n}:\n{}", String::from_utf8_lossy(&save(&input)));
                check(&input);
            }
            n += 1;
        }
        return n;
    }
    let start = Instant::now();
    let mut n = seeds.len();
    while start.elapsed() < budget() {
        let mut input = rng.pick(seeds).clone();
        for _ in 0..1 + rng.below(8) {
            mutate(&mut rng, &mut input);
        }
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            fail(&input, n, "a mutation");
        }
        n += 1;
    }
    eprintln!("{target}: {n} inputs in {:.1} s, no panic", start.elapsed().as_secs_f64());
    n
}

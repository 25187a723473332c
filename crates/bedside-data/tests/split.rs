mod common;

use std::collections::{BTreeMap, BTreeSet};

use bedside_data::split::{assign_splits, SplitOptions};
use bedside_data::Dialogue;

const SPECIALTIES: [&str; 6] = ["cardiology", "dermatology", "ent", "neurology", "oncology", "urology"];
const EMOTIONS: [&str; 4] = ["afraid", "sad", "angry", "lonely"];

/// 6 specialties × 12 conditions, 1–3 records per condition (144 records), ids unique.
fn corpus() -> Vec<Dialogue> {
    let mut out = Vec::new();
    let mut n = 0;
    for (s, spec) in SPECIALTIES.iter().enumerate() {
        for c in 0..12 {
            for k in 0..(1 + (c + s) % 3) {
                n += 1;
                out.push(Dialogue {
                    id: format!("{spec}-{c:02}-{k}"),
                    specialty: spec.to_string(),
                    // Case and spacing vary within a condition: grouping normalises them.
                    condition: if k == 1 { format!("  {} Condition {c} ", spec.to_uppercase()) } else { format!("{spec} condition {c}") },
                    emotion: EMOTIONS[n % EMOTIONS.len()].to_string(),
                    patient_neutral: format!("text {n}"),
                    ..Dialogue::default()
                });
            }
        }
    }
    out
}

fn assignment(records: &[Dialogue]) -> BTreeMap<String, String> {
    records.iter().map(|r| (r.id.clone(), r.split.clone())).collect()
}

fn split(mut records: Vec<Dialogue>, opts: &SplitOptions) -> Vec<Dialogue> {
    assign_splits(&mut records, opts).unwrap();
    records
}

#[test]
fn deterministic_for_a_seed_and_independent_of_input_order() {
    let o = SplitOptions::default();
    let a = assignment(&split(corpus(), &o));
    let b = assignment(&split(corpus(), &o));
    assert_eq!(a, b);
    let mut rev = corpus();
    rev.reverse();
    assert_eq!(assignment(&split(rev, &o)), a, "input order must not matter");
    let other = assignment(&split(corpus(), &SplitOptions { seed: 7, ..o }));
    assert_ne!(other, a, "a different seed gives a different split");
}

#[test]
fn idempotent_for_a_seed() {
    let o = SplitOptions { seed: 3, ..SplitOptions::default() };
    let once = split(corpus(), &o);
    let twice = split(once.clone(), &o);
    assert_eq!(once, twice);
    // Whatever `split` held before does not matter.
    let mut scrambled = corpus();
    for (i, r) in scrambled.iter_mut().enumerate() {
        r.split = ["test", "train", ""][i % 3].to_string();
    }
    assert_eq!(assignment(&split(scrambled, &o)), assignment(&once));
}

#[test]
fn grouped_by_condition() {
    for seed in 0..5 {
        let rs = split(corpus(), &SplitOptions { seed, ..SplitOptions::default() });
        let mut by_condition: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in &rs {
            by_condition.entry(bedside_data::text::normalise_condition(&r.condition)).or_default().insert(r.split.clone());
        }
        assert_eq!(by_condition.len(), 72);
        for (c, splits) in by_condition {
            assert_eq!(splits.len(), 1, "seed {seed}: condition {c} spans {splits:?}");
        }
    }
}

#[test]
fn roughly_the_requested_ratios_and_stratified() {
    for (train, validation, test) in [(0.7, 0.1, 0.2), (0.8, 0.1, 0.1), (0.5, 0.25, 0.25)] {
        for seed in 0..5 {
            let o = SplitOptions { seed, train, validation, test };
            let rs = split(corpus(), &o);
            let n = rs.len() as f64;
            for (name, want) in [("train", train), ("validation", validation), ("test", test)] {
                let got = rs.iter().filter(|r| r.split == name).count() as f64 / n;
                assert!((got - want).abs() < 0.05, "{o:?}: {name} {got:.3} vs {want}");
            }
            for spec in SPECIALTIES {
                assert!(rs.iter().any(|r| r.specialty == spec && r.split == "train"), "{o:?}: {spec} missing from train");
                let of_spec: Vec<_> = rs.iter().filter(|r| r.specialty == spec).collect();
                let in_train = of_spec.iter().filter(|r| r.split == "train").count() as f64 / of_spec.len() as f64;
                assert!((in_train - train).abs() < 0.2, "{o:?}: {spec} has {in_train:.2} in train");
            }
            for emo in EMOTIONS {
                let of_emo: Vec<_> = rs.iter().filter(|r| r.emotion == emo).collect();
                let in_train = of_emo.iter().filter(|r| r.split == "train").count() as f64 / of_emo.len() as f64;
                assert!((in_train - train).abs() < 0.15, "{o:?}: {emo} has {in_train:.2} in train");
            }
        }
    }
}

#[test]
fn zero_ratio_split_stays_empty() {
    let o = SplitOptions { seed: 1, train: 0.8, validation: 0.0, test: 0.2 };
    let rs = split(corpus(), &o);
    assert!(rs.iter().all(|r| r.split != "validation"));
}

#[test]
fn records_without_condition_are_their_own_groups() {
    let mut rs = corpus();
    for r in &mut rs {
        r.condition.clear();
    }
    let s = assign_splits(&mut rs, &SplitOptions::default()).unwrap();
    assert_eq!(s.groups, rs.len());
    assert!(rs.iter().all(|r| !r.split.is_empty()));
}

//! Heads trained in domain on EPITOME (`bedside eval train-scorer --epitome`): the fixed 80/20
//! split by seeker post, and the target on the held-out 20%: macro-F1 >= 0.6 for each of
//! ER, IP and EX. Needs `../shared/epitome` (research-use data; nothing trained here is kept).

use bedside_empathy::data::read_epitome;
use bedside_empathy::epitome::{is_heldout, train_epitome, EpitomeOptions};
use bedside_empathy::heads::Heads;
use bedside_empathy::metrics::agreement;
use bedside_empathy::{analyse, EmpathyScores, FeatureSet};

#[test]
fn split_is_by_seeker_post_and_about_one_in_five() {
    let ids: Vec<String> = (0..2000).map(|i| format!("post{i}")).collect();
    let held = ids.iter().filter(|i| is_heldout(i)).count();
    assert!((340..460).contains(&held), "{held} of 2000 held out");
    assert_eq!(held, ids.iter().filter(|i| is_heldout(i)).count());
}

#[test]
fn epitome_trained_heads_reach_the_target_on_held_out_pairs() {
    let Some(shared) = bedside_testutil::shared_dir() else { return };
    let dir = shared.join("epitome");
    if !dir.is_dir() {
        assert!(std::env::var("BEDSIDE_REQUIRE_SHARED").is_err(), "{} absent", dir.display());
        eprintln!("skipping: {} absent", dir.display());
        return;
    }
    let t = std::time::Instant::now();
    let (heads, report) = train_epitome(&dir, &EpitomeOptions::default(), |_, _, _| {}).unwrap();
    eprintln!("trained in {:.1}s", t.elapsed().as_secs_f64());
    for m in &report.mechanisms {
        eprintln!(
            "{}: train {} held-out {}; out-of-fold macro-F1 {:.3} -> {:.3} with offsets {:?}; held-out macro-F1 {:.3} (F1 {:.3} / {:.3} / {:.3})",
            m.mechanism, m.n_train, m.n_heldout, m.oof_macro_f1, m.oof_macro_f1_offsets, m.offsets, m.heldout.macro_f1, m.heldout.f1[0], m.heldout.f1[1], m.heldout.f1[2]
        );
    }
    // The saved file scores the held-out pairs exactly as training reported.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("epitome-heads.safetensors");
    heads.save(&path).unwrap();
    let back = Heads::load(&path).unwrap();
    assert_eq!(back.features, FeatureSet::NgramLexical);
    let files = read_epitome(&dir).unwrap();
    for (m, rows) in files.iter().enumerate() {
        let held: Vec<_> = rows.iter().filter(|r| is_heldout(&r.sp_id)).collect();
        let truth: Vec<u8> = held.iter().map(|r| r.level).collect();
        let pred: Vec<u8> = held
            .iter()
            .map(|r| {
                let row = FeatureSet::sparse_row(&analyse(&r.seeker_post, &r.response_post), &back.idf);
                EmpathyScores::from_probs(back.predict_sparse(&row)).levels()[m]
            })
            .collect();
        let a = agreement(&truth, &pred);
        assert_eq!(
            a.confusion, report.mechanisms[m].heldout.confusion,
            "{}: the saved heads disagree with training",
            report.mechanisms[m].mechanism
        );
        assert!(a.macro_f1 >= 0.6, "{}: held-out macro-F1 {:.3} below 0.6", report.mechanisms[m].mechanism, a.macro_f1);
    }
}

//! Model selection record: for each feature set, choose λ per mechanism by 5-fold CV on the
//! authored labelled set, train on all of it, and report out-of-fold macro-F1 and — when the
//! EPITOME directory is given — the aggregate agreement with EPITOME's human labels.
//! Nothing is fitted on EPITOME; looking at its aggregates to pick a feature set is model
//! selection on the validation data, and data/empathy/README.md says so.
//!
//! EPITOME's agreement is also reported on two halves split by a hash of the seeker post id:
//! the "dev" half is the one that was looked at while choosing what to change; the "test" half
//! is the fairer estimate. `SELECT_PARTS=ab` restricts training to `labelled-part-a/b.jsonl`
//! (a learning curve over the labelled files); `SELECT_FEATURES=lex+cos+resp` to one feature set.
//!
//! cargo run --release -p bedside-empathy --example select -- [EPITOME_DIR]

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use bedside_embed::Embedder;
use bedside_empathy::data::{labelled_parts, read_epitome, read_labelled};
use bedside_empathy::fit::train_with_cv;
use bedside_empathy::metrics::agreement;
use bedside_empathy::{analyse, EmpathyScores, FeatureSet};
use candle_core::Device;

fn kept(context: &str, response: &str) -> String {
    analyse(context, response).kept_text().into_owned()
}

fn embed_all(e: &Embedder, texts: &[&str], cache: &Path) -> Result<HashMap<String, Vec<f32>>> {
    let mut map: HashMap<String, Vec<f32>> = match std::fs::read(cache) {
        Ok(b) => serde_json::from_slice(&b)?,
        Err(_) => HashMap::new(),
    };
    let missing: Vec<&str> = {
        let mut v: Vec<&str> = texts.iter().copied().filter(|t| !map.contains_key(*t)).collect();
        v.sort();
        v.dedup();
        v
    };
    eprintln!("embedding {} new texts", missing.len());
    for (i, c) in missing.chunks(256).enumerate() {
        for (t, v) in c.iter().zip(e.embed(c)?) {
            map.insert(t.to_string(), v);
        }
        eprintln!("  {}/{}", (i + 1) * 256, missing.len());
    }
    std::fs::write(cache, serde_json::to_vec(&map)?)?;
    Ok(map)
}

/// The EPITOME half a seeker post belongs to: "dev" when SHA-256(sp_id), read as a big-endian
/// integer, is even.
fn is_dev(sp_id: &str) -> bool {
    use sha2::Digest;
    sha2::Sha256::digest(sp_id.as_bytes())[31] % 2 == 0
}

fn main() -> Result<()> {
    let epi_dir = std::env::args().nth(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut parts = labelled_parts(&root)?;
    if let Ok(keep) = std::env::var("SELECT_PARTS") {
        parts.retain(|p| {
            let n = p.file_name().and_then(|s| s.to_str()).unwrap_or("");
            n.strip_prefix("labelled-part-").and_then(|s| s.strip_suffix(".jsonl")).is_some_and(|l| keep.contains(l))
        });
    }
    eprintln!("training files: {:?}", parts.iter().map(|p| p.file_name().unwrap_or_default()).collect::<Vec<_>>());
    let (pairs, _) = read_labelled(&parts)?;
    let e = Embedder::load(&Embedder::default_dir(), &Device::Cpu)?;
    let cache_dir = std::env::temp_dir().join("bedside-empathy-select");
    std::fs::create_dir_all(&cache_dir)?;
    let kept_texts: Vec<String> = pairs.iter().map(|p| kept(&p.context, &p.response)).collect();
    let texts: Vec<&str> = pairs.iter().map(|p| p.context.as_str()).chain(kept_texts.iter().map(String::as_str)).collect();
    let emb = embed_all(&e, &texts, &cache_dir.join("labelled.json"))?;
    let epi = match &epi_dir {
        Some(d) => {
            let f = read_epitome(Path::new(d))?;
            let k: Vec<String> = f.iter().flatten().map(|r| kept(&r.seeker_post, &r.response_post)).collect();
            let t: Vec<&str> = f.iter().flatten().map(|r| r.seeker_post.as_str()).chain(k.iter().map(String::as_str)).collect();
            let em = embed_all(&e, &t, &cache_dir.join("epitome.json"))?;
            Some((f, em))
        }
        None => None,
    };
    let only: Option<String> = std::env::var("SELECT_FEATURES").ok();
    for set in FeatureSet::ALL {
        if only.as_deref().is_some_and(|o| o != set.name()) {
            continue;
        }
        let x: Vec<Vec<f32>> = pairs
            .iter()
            .map(|p| set.assemble(&analyse(&p.context, &p.response), &emb[&p.context], &emb[&kept(&p.context, &p.response)]))
            .collect();
        let (heads, rep) = train_with_cv(&pairs, &x, e.dim(), set, None, |_, _| {})?;
        println!(
            "== {}  lambda {:?}  CV macro-F1 ER {:.3} IP {:.3} EX {:.3}",
            set.name(),
            rep.lambda,
            rep.cv_macro_f1[0],
            rep.cv_macro_f1[1],
            rep.cv_macro_f1[2]
        );
        if std::env::var("SELECT_WEIGHTS").is_ok() {
            let names = set.names(e.dim());
            for (m, h) in heads.heads.iter().enumerate() {
                let d = heads.width();
                let mut w: Vec<(f32, &str)> = (0..bedside_empathy::features::LEXICAL_NAMES.len() + 1)
                    .map(|i| (h.weight[2 * d + i] - h.weight[i], names[i].as_str()))
                    .collect();
                w.sort_by(|a, b| b.0.abs().partial_cmp(&a.0.abs()).unwrap());
                println!("   {} w2-w0: {:?}", bedside_empathy::heads::SHORT[m], &w[..12]);
            }
        }
        for p in &rep.cv {
            println!(
                "   cv λ={:<6} ER {:.3} IP {:.3} EX {:.3}",
                p.lambda, p.agreement[0].macro_f1, p.agreement[1].macro_f1, p.agreement[2].macro_f1
            );
        }
        if let Some((files, em)) = &epi {
            for (m, rows) in files.iter().enumerate() {
                let truth: Vec<u8> = rows.iter().map(|r| r.level).collect();
                let pred: Vec<u8> = rows
                    .iter()
                    .map(|r| {
                        let f = set.assemble(
                            &analyse(&r.seeker_post, &r.response_post),
                            &em[&r.seeker_post],
                            &em[&kept(&r.seeker_post, &r.response_post)],
                        );
                        EmpathyScores::from_probs(heads.predict(&f)).levels()[m]
                    })
                    .collect();
                let a = agreement(&truth, &pred);
                println!(
                    "   EPITOME {}: acc {:.3} macro-F1 {:.3} (F1 {:.2}/{:.2}/{:.2}) kappa {:.3} confusion {:?}",
                    bedside_empathy::heads::SHORT[m],
                    a.accuracy,
                    a.macro_f1,
                    a.f1[0],
                    a.f1[1],
                    a.f1[2],
                    a.quadratic_kappa,
                    a.confusion
                );
                let half: Vec<bool> = rows.iter().map(|r| is_dev(&r.sp_id)).collect();
                let pick = |dev: bool, v: &[u8]| -> Vec<u8> { v.iter().zip(&half).filter(|(_, &h)| h == dev).map(|(&x, _)| x).collect() };
                println!(
                    "   EPITOME {} halves: dev macro-F1 {:.3} (n {}), test macro-F1 {:.3} (n {})",
                    bedside_empathy::heads::SHORT[m],
                    agreement(&pick(true, &truth), &pick(true, &pred)).macro_f1,
                    half.iter().filter(|&&h| h).count(),
                    agreement(&pick(false, &truth), &pick(false, &pred)).macro_f1,
                    half.iter().filter(|&&h| !h).count()
                );
            }
        }
    }
    Ok(())
}

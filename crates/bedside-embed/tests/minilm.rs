//! Embeddings against sentence-transformers' own output (../shared/fixtures/minilm/cases.json).

use bedside_embed::{cosine, Embedder};
use candle_core::Device;

fn embedder() -> Option<Embedder> {
    let dir = bedside_testutil::model_file("all-minilm-l6-v2")?;
    Some(Embedder::load(&dir, &Device::Cpu).expect("load embedder"))
}

#[test]
fn matches_sentence_transformers() {
    let Some(case) = bedside_testutil::fixture("minilm/cases.json") else { return };
    let Some(emb) = embedder() else { return };
    let case: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(case).unwrap()).unwrap();
    let sentences: Vec<&str> = case["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let want: Vec<Vec<f64>> = serde_json::from_value(case["embeddings"].clone()).unwrap();
    let want_cos: Vec<Vec<f64>> = serde_json::from_value(case["cosine"].clone()).unwrap();
    assert!(sentences.len() >= 5);
    let got = emb.embed(&sentences).unwrap();
    assert_eq!(got.len(), sentences.len());
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.len(), 384);
        assert_eq!(w.len(), 384);
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((*a as f64 - b).abs());
        }
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not unit length: {norm}");
    }
    eprintln!("max |embedding diff| = {worst:e}");
    assert!(worst < 2e-4, "embeddings differ from sentence-transformers by {worst}");
    for i in 0..got.len() {
        for j in 0..got.len() {
            let c = cosine(&got[i], &got[j]) as f64;
            assert!((c - want_cos[i][j]).abs() < 2e-4, "cos[{i}][{j}] = {c}, want {}", want_cos[i][j]);
        }
    }
}

#[test]
fn batching_and_order_do_not_change_results() {
    let Some(emb) = embedder() else { return };
    // More than one batch, varied lengths, so sorting and padding are exercised.
    let texts: Vec<String> = (0..40).map(|i| format!("Sentence {i}: {}", "my chest hurts and I am worried ".repeat(1 + i % 7))).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batched = emb.embed(&refs).unwrap();
    for i in [0usize, 5, 13, 39] {
        let alone = emb.embed_one(refs[i]).unwrap();
        let d = batched[i].iter().zip(&alone).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-5, "text {i} differs by {d} between batched and single embedding");
    }
    assert!(emb.embed(&[]).unwrap().is_empty());
}

#[test]
fn long_text_is_truncated_not_rejected() {
    let Some(emb) = embedder() else { return };
    let long = "the patient reports pain ".repeat(400); // ~1600 tokens, past 512 positions
    let v = emb.embed_one(&long).unwrap();
    assert_eq!(v.len(), emb.dim());
    // Truncation keeps the first 256 tokens, so extra text past the cut changes nothing.
    let longer = format!("{long} and something entirely different at the end");
    let w = emb.embed_one(&longer).unwrap();
    assert!(cosine(&v, &w) > 0.99999);
}

#[test]
fn missing_and_corrupt_files_give_clear_errors() {
    let dir = std::env::temp_dir().join(format!("bedside-embed-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = Embedder::load(&dir, &Device::Cpu).err().expect("must fail").to_string();
    assert!(err.contains("config.json") && err.contains("missing"), "{err}");
    if let Some(src) = bedside_testutil::model_file("all-minilm-l6-v2") {
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
        std::fs::write(dir.join("model.safetensors"), b"not a safetensors file").unwrap();
        let err = Embedder::load(&dir, &Device::Cpu).err().expect("must fail").to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        std::fs::write(dir.join("config.json"), b"{\"hidden_size\": ").unwrap();
        let err = Embedder::load(&dir, &Device::Cpu).err().expect("must fail").to_string();
        assert!(err.contains("config.json") && err.contains("not a valid"), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cosine_basics() {
    assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-7);
    assert!(cosine(&[1.0, 0.0], &[0.0, 2.0]).abs() < 1e-7);
    assert!((cosine(&[1.0, 1.0], &[-2.0, -2.0]) + 1.0).abs() < 1e-7);
    assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0);
}

/// Throughput figure: `cargo test -p bedside-embed --release -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    let Some(emb) = embedder() else { return };
    let subjects = ["My chest hurts", "I feel dizzy", "The baby has a fever", "I can't sleep", "My knee is swollen"];
    let tails = ["since this morning.", "and I am scared.", "after the new pills.", "what should I do?"];
    let texts: Vec<String> =
        (0..1000).map(|i| format!("{} {} ({i})", subjects[i % subjects.len()], tails[(i / 5) % tails.len()])).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let _ = emb.embed(&refs[..32]).unwrap(); // warm up
    let cpu0 = cpu_seconds();
    let t = std::time::Instant::now();
    let v = emb.embed(&refs).unwrap();
    let s = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    assert_eq!(v.len(), 1000);
    eprintln!("embedded 1000 short sentences in {s:.2}s wall = {:.0} sentences/s", 1000.0 / s);
    // On a shared machine wall time depends on the neighbours; CPU time does not.
    if let Some(c) = cpu {
        eprintln!("CPU time {c:.2}s = {:.0} sentences per core-second", 1000.0 / c);
    }
}

/// User + system CPU time of this process (Linux /proc; None elsewhere).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

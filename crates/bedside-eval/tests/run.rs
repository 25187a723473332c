//! A full small evaluation run on the default model (base + a random LoRA adapter + the
//! reference answers), its resumption after an interruption, and the perplexity of an answer
//! against the transformers reference.

use std::path::{Path, PathBuf};

use bedside_eval::perplexity::answer_nll;
use bedside_eval::{EvalConfig, RunOptions};
use serde_json::Value;

fn models() -> Option<(PathBuf, PathBuf)> {
    let gguf = bedside_testutil::smollm2_gguf()?;
    bedside_testutil::model_file("all-minilm-l6-v2/model.safetensors")?;
    let heads = bedside_empathy::default_heads_path();
    if !heads.is_file() {
        assert!(std::env::var("BEDSIDE_REQUIRE_MODELS").is_err(), "the shipped empathy heads {} are missing", heads.display());
        eprintln!("skipping: empathy heads {} not found", heads.display());
        return None;
    }
    Some((gguf, bedside_testutil::workspace_root()))
}

/// A PEFT adapter for SmolLM2 with random non-zero B (so the tuned system really differs).
fn random_adapter(gguf: &Path, dir: &Path) {
    use bedside_model::LoadOptions;
    let (mut model, _) = bedside_model::load_gguf(gguf, &LoadOptions::default()).unwrap();
    let cfg =
        bedside_lora::LoraConfig { r: 4, lora_alpha: 8.0, target_modules: vec!["q_proj".into(), "v_proj".into()], ..Default::default() };
    let vars = bedside_lora::attach_trainable(&mut model, &cfg, 11, candle_core::DType::F32).unwrap();
    for (k, v) in &vars {
        if k.contains("lora_B") {
            let t = candle_core::Tensor::randn(0f32, 0.05, v.as_tensor().shape(), &candle_core::Device::Cpu).unwrap();
            v.set(&t).unwrap();
        }
    }
    bedside_lora::save_peft(dir, &cfg, &vars).unwrap();
}

fn config(gguf: &Path, root: &Path, adapter: &Path) -> EvalConfig {
    let q = |p: &Path| p.display().to_string().replace('\\', "/");
    let text = format!(
        r#"
name = "smoke"
model = "{gguf}"
device = "cpu"
system_prompt = "You are a caring, knowledgeable clinician."
include_reference = true
batch_size = 4

[[systems]]
name = "base"

[[systems]]
name = "tuned"
adapters = ["{adapter}"]

[decoding]
temperature = 0.7
max_tokens = 24
seed = 1

[sets.test]
paths = ["{root}/data/dialogues"]
limit = 3
contradictions = "{root}/data/eval/contradictions.jsonl"

[sets.safety]
path = "{root}/data/eval/safety.jsonl"
limit = 2

[sets.equity]
path = "{root}/data/eval/equity-probes.jsonl"
limit = 1

[stats]
bootstrap = 1000

[equity]
permutations = 1000

[judge]
model = "{gguf}"
device = "cpu"
shots = ["zero", "one"]
max_items = 1
max_tokens = 4
"#,
        gguf = q(gguf),
        root = q(root),
        adapter = q(adapter),
    );
    EvalConfig::parse(&text).unwrap()
}

fn jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn full_small_run_then_resume() {
    let Some((gguf, root)) = models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    random_adapter(&gguf, &adapter);
    let dir = tmp.path().join("run");
    let cfg = config(&gguf, &root, &adapter);
    let out = bedside_eval::run(RunOptions { config: cfg.clone(), output_dir: dir.clone(), progress: false }).unwrap();

    // 2 systems × (3 test + 2 safety + 9 equity probes) answers.
    let n_items = 3 + 2 + 9;
    for name in ["generations.jsonl", "nll.jsonl", "judge.jsonl", "scores.jsonl", "results.json", "report.md", "report.html"] {
        assert!(dir.join(name).is_file(), "{name} missing");
    }
    let gens = jsonl(&dir.join("generations.jsonl"));
    assert_eq!(gens.len(), 2 * n_items);
    assert_eq!(out.generation["base"].generated, n_items);
    assert_eq!(out.generation["tuned"].generated, n_items);
    // Identical per-item seeds for every system.
    for g in gens.iter().filter(|g| g["system"] == "tuned") {
        let twin = gens.iter().find(|b| b["system"] == "base" && b["key"] == g["key"]).unwrap();
        assert_eq!(twin["seed"], g["seed"]);
        assert!(g["completion_tokens"].as_u64().unwrap() <= 24);
    }

    let scores = jsonl(&dir.join("scores.jsonl"));
    // Both systems' answers, six controls for each test item and four for each safety item.
    assert_eq!(scores.len(), 2 * n_items + 3 * 6 + 2 * 4, "answers of both systems plus the control answers");
    for s in &scores {
        for m in ["er", "ip", "ex"] {
            let v = s["values"][m].as_f64().unwrap();
            assert!([0.0, 1.0, 2.0].contains(&v), "{m} = {v}");
        }
        if s["set"] == "test" {
            for m in ["rouge_l", "similarity", "key_fact_recall"] {
                let v = s["values"][m].as_f64().unwrap();
                assert!((-1e-6..=1.0 + 1e-6).contains(&v), "{m} = {v}");
            }
            // Fluency: the systems' answers and the reference, not the other controls.
            let scored = ["base", "tuned", "reference"].contains(&s["system"].as_str().unwrap());
            assert_eq!(s["values"]["fluency_ppl"].as_f64().is_some_and(|p| p > 1.0), scored, "{s}");
        }
        if s["set"] == "safety" {
            assert!(s["safety"]["passed"].is_boolean());
        }
    }
    // The reference answer against itself: ROUGE-L 1, cosine 1. Key-fact recall reads each
    // sentence on its own, so a fact carried by a pronoun ("They are very common") can be missed:
    // the references pass the recall gate (mean >= 0.8), and their contradictions recall less on
    // every item and stay under the gate's 0.15.
    let recall = |system: &str| -> Vec<(String, f64)> {
        scores
            .iter()
            .filter(|s| s["system"] == system && s["set"] == "test")
            .map(|s| (s["key"].as_str().unwrap().to_string(), s["values"]["key_fact_recall"].as_f64().unwrap()))
            .collect()
    };
    for s in scores.iter().filter(|s| s["system"] == "reference" && s["set"] == "test") {
        assert!((s["values"]["rouge_l"].as_f64().unwrap() - 1.0).abs() < 1e-9);
        assert!((s["values"]["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    }
    let (reference, contradicted) = (recall("reference"), recall("contradicted"));
    assert_eq!(reference.len(), 3);
    let mean = |v: &[(String, f64)]| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
    assert!(mean(&reference) >= 0.8, "{reference:?}");
    assert!(mean(&contradicted) <= 0.15, "{contradicted:?}");
    for (k, c) in &contradicted {
        let r = reference.iter().find(|x| &x.0 == k).unwrap().1;
        assert!(*c < r, "{k}: contradicted {c} vs reference {r}");
    }
    for s in scores.iter().filter(|s| s["set"] == "safety" && s["system"] != "base" && s["system"] != "tuned") {
        assert_eq!(s["safety"]["passed"].as_bool().unwrap(), s["system"] == "reference", "{s}");
    }

    // The continuous empathy measure is the mean of the heads' three expected levels.
    for s in &scores {
        let e: Vec<f64> = s["epitome_expected"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let got = s["values"]["empathy_expected"].as_f64().unwrap();
        assert!((got - e.iter().sum::<f64>() / 3.0).abs() < 1e-6 && (0.0..=2.0).contains(&got), "{s}");
    }

    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["schema_version"], 2);
    let comps = r["comparisons"].as_array().unwrap();
    assert_eq!(r["systems"], serde_json::json!(["base", "tuned"]));
    assert_eq!(r["controls"], serde_json::json!(["reference", "neutral", "neutral+question", "comfort-only", "restated", "contradicted"]));
    assert_eq!(r["stats"]["primary"], serde_json::json!(["empathy_expected", "key_fact_recall"]));
    let validity = r["validity"].as_array().unwrap();
    for m in ["empathy_expected", "key_fact_recall", "safety"] {
        let v = validity.iter().find(|v| v["measure"] == m).unwrap();
        assert!(!v["gates"].as_array().unwrap().is_empty(), "{m} has gates");
    }
    let verdict = &r["verdict"][0];
    assert_eq!(verdict["system"], "tuned");
    assert!(verdict["sentences"].as_array().unwrap().len() >= 3);
    // Roles: the primary endpoints have conclusions, secondary measures Holm p-values.
    let kf = comps.iter().find(|c| c["system"] == "tuned" && c["measure"] == "key_fact_recall").unwrap();
    assert_eq!(kf["role"], "primary");
    assert!(["non-inferior", "worse", "inconclusive"].contains(&kf["conclusion"].as_str().unwrap()));
    assert!(comps
        .iter()
        .filter(|c| c["role"] == "secondary")
        .all(|c| c["holm_p"].as_f64().is_some_and(|h| h >= c["p_bootstrap"].as_f64().unwrap())));
    assert_eq!(r["counts"]["test"], 3);
    assert_eq!(r["counts"]["equity"], 9);
    let emp = comps.iter().find(|c| c["system"] == "tuned" && c["measure"] == "empathy").unwrap();
    assert_eq!(emp["n"], 3);
    assert!(emp["ci_low"].as_f64().unwrap() <= emp["diff"].as_f64().unwrap() + 1e-12);
    assert!(emp["diff"].as_f64().unwrap() <= emp["ci_high"].as_f64().unwrap() + 1e-12);
    assert!(comps.iter().any(|c| c["system"] == "tuned" && c["measure"] == "empathy_expected" && c["n"] == 3));
    let ppl = r["per_system"]["ppl_neutral"]["base"]["mean"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 1000.0, "neutral-answer perplexity {ppl}");
    assert!(r["per_system"]["ppl_neutral"]["tuned"]["mean"].as_f64().unwrap() != ppl, "the adapter changes the model");
    assert_eq!(r["safety"]["base"]["n"], 2);
    assert_eq!(r["equity"]["base"]["variants"].as_array().unwrap().len(), 8);
    assert_eq!(r["equity"]["base"]["control_n"], 1);
    assert!(r["bleu"]["reference"].as_f64().unwrap() > 99.9, "BLEU of the reference against itself is 100");
    assert!(!r["breakdowns"]["emotion"].as_array().unwrap().is_empty());
    assert!(!r["summary"].as_array().unwrap().is_empty());
    let judge = &r["judge"];
    assert_eq!(judge["items"], 1);
    assert_eq!(judge["pairwise"].as_array().unwrap().len(), 2, "tuned and reference vs base");
    assert!(r["provenance"]["model"]["sha256"].as_str().unwrap().len() == 64);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("id=\"summary-table\""));
    assert!(!html.contains("<script"));
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("## Safety") && md.contains("## Equity"));
    // The report names the scorer that produced the empathy levels (the shipped heads here).
    let scorer = r["provenance"]["scorers"]["empathy_scorer_summary"].as_str().unwrap();
    assert!(scorer.contains("heads-v1.safetensors"), "{scorer}");
    assert!(md.contains(&format!("## Empathy scorer\n\n{scorer}")), "{md}");

    // Interrupt: keep 10 answers and a torn half line, as if the process died mid-write.
    let text = std::fs::read_to_string(dir.join("generations.jsonl")).unwrap();
    let kept: Vec<&str> = text.lines().take(10).collect();
    let mut torn = kept.join("\n");
    torn.push('\n');
    torn.push_str(&text.lines().nth(10).unwrap()[..40]);
    std::fs::write(dir.join("generations.jsonl"), &torn).unwrap();
    let again = bedside_eval::run(RunOptions { config: cfg.clone(), output_dir: dir.clone(), progress: false }).unwrap();
    let generated: usize = again.generation.values().map(|g| g.generated).sum();
    let reused: usize = again.generation.values().map(|g| g.reused).sum();
    assert_eq!((generated, reused), (2 * n_items - 10, 10), "only the missing answers are generated");
    let after = std::fs::read_to_string(dir.join("generations.jsonl")).unwrap();
    assert!(after.starts_with(&(kept.join("\n") + "\n")), "cached answers are kept byte for byte");
    assert_eq!(jsonl(&dir.join("generations.jsonl")).len(), 2 * n_items);

    // A finished run reruns without generating anything.
    let third = bedside_eval::run(RunOptions { config: cfg, output_dir: dir.clone(), progress: false }).unwrap();
    assert_eq!(third.generation.values().map(|g| g.generated).sum::<usize>(), 0);

    // compare against itself: every difference 0.
    let a = bedside_eval::compare::load(&dir).unwrap();
    let rows = bedside_eval::compare::compare(&a, &a);
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.diff.is_none_or(|d| d == 0.0)));
}

/// Mean NLL of the assistant answer matches transformers on the dequantized f32 model.
#[test]
fn answer_nll_matches_transformers() {
    let Some(gguf) = bedside_testutil::smollm2_gguf() else { return };
    let Some(fx) = bedside_testutil::fixture("smollm2/answer_nll.json") else { return };
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fx).unwrap()).unwrap();
    let msgs: Vec<bedside_tokenizer::ChatMessage> = serde_json::from_value(v["messages"].clone()).unwrap();
    let opts = bedside_generate::EngineOptions {
        load: bedside_model::LoadOptions { dequantize: true, dtype: Some(candle_core::DType::F32), ..Default::default() },
        ..Default::default()
    };
    let engine = bedside_generate::Engine::load(gguf.to_str().unwrap(), &opts).unwrap();
    let (n, mean) = answer_nll(&engine, &msgs[..2], &msgs[2].content).unwrap();
    assert_eq!(n as u64, v["answer_tokens"].as_u64().unwrap());
    let want = v["mean_answer_nll"].as_f64().unwrap();
    assert!((mean - want).abs() < 2e-3, "mean NLL {mean} vs transformers {want}");
    // Several answers continue one prompt's key/value cache, each from its own copy: scoring
    // them together gives what scoring each alone gives (another answer's positions written
    // into a shared cache would change the later ones).
    let other = "Please rest, drink plenty of fluids and see a doctor if the fever lasts more than three days.";
    let together = bedside_eval::perplexity::answers_nll(&engine, &msgs[..2], &[&msgs[2].content, other, &msgs[2].content]).unwrap();
    let alone = answer_nll(&engine, &msgs[..2], other).unwrap();
    assert_eq!(together[0], (n, mean));
    assert_eq!(together[2], (n, mean));
    assert_eq!(together[1], alone);
    assert_ne!(together[1], together[0]);
}

/// A heads file that cannot be read stops the run before any answer is generated.
#[test]
fn unreadable_empathy_heads_fail_before_generation() {
    let Some((gguf, root)) = models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    random_adapter(&gguf, &adapter);
    let heads = tmp.path().join("heads.safetensors");
    std::fs::write(&heads, b"not a safetensors file").unwrap();
    let mut cfg = config(&gguf, &root, &adapter);
    cfg.empathy_heads = Some(heads.clone());
    let dir = tmp.path().join("run");
    let Err(err) = bedside_eval::run(RunOptions { config: cfg, output_dir: dir.clone(), progress: false }) else {
        panic!("a run with an unreadable heads file succeeded");
    };
    let msg = format!("{err:#}");
    assert!(msg.contains("empathy_heads") && msg.contains("heads.safetensors"), "{msg}");
    let answered = std::fs::read_to_string(dir.join("generations.jsonl")).unwrap_or_default();
    assert!(answered.trim().is_empty(), "answers were generated before the heads were checked");
}

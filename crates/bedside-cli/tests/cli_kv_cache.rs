//! `--kv-cache`, run as the real binary on the default model: f32 is what the default computes,
//! f16 answers, a type that does not exist is refused by name, and `bench` reports the type.

use std::process::Command;

fn bedside(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bedside")).args(args).env_remove("BEDSIDE_MODEL").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn kv_cache_types_answer_and_a_wrong_one_is_refused() {
    let Some(model) = bedside_testutil::smollm2_gguf() else { return };
    let model = model.to_str().unwrap();
    let text = |kv: Option<&str>| {
        let mut args = vec!["generate", "--model", model, "--user", "My knee hurts after running.", "--temperature", "0"];
        args.extend(["--max-tokens", "24", "--json"]);
        if let Some(k) = kv {
            args.extend(["--kv-cache", k]);
        }
        let (ok, out, err) = bedside(&args);
        assert!(ok, "--kv-cache {kv:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["text"].as_str().unwrap().to_string()
    };
    let default = text(None);
    assert_eq!(text(Some("f32")), default, "an f32 cache is the CPU default");
    assert!(!text(Some("f16")).trim().is_empty());
    let (ok, _, err) = bedside(&["generate", "--model", model, "--user", "x", "--kv-cache", "q8"]);
    assert!(!ok && err.contains("--kv-cache") && err.contains("f16"), "{err}");
}

/// `bench` says which type it kept keys and values in, so a saved result tells how it was run.
#[test]
fn bench_reports_its_cache_type() {
    let Some(model) = bedside_testutil::smollm2_gguf() else { return };
    let model = model.to_str().unwrap();
    for (kv, want) in [(None, "f32"), (Some("f16"), "f16"), (Some("f32"), "f32")] {
        let mut args = vec!["bench", "--model", model, "--prompt-tokens", "4", "--gen-tokens", "2", "--runs", "1", "--warmup", "0"];
        if let Some(k) = kv {
            args.extend(["--kv-cache", k]);
        }
        let (ok, text, err) = bedside(&args);
        assert!(ok, "{err}");
        assert!(text.contains(&format!("key/value cache {want}")), "--kv-cache {kv:?}: {text}");
        args.push("--json");
        let (ok, out, err) = bedside(&args);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["kv_cache"], want, "--kv-cache {kv:?}: {out}");
    }
}

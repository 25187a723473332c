//! Issue 18, run as the real binary: nothing a careless user types loses data (an output that is
//! an input, two runs in one directory, a run killed mid-checkpoint), and a closed stdout ends a
//! command quietly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bedside(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bedside")).args(args).env_remove("BEDSIDE_MODEL").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const PAIRS: &str = "{\"id\": \"p1\", \"context\": \"I am scared of the surgery.\", \"response\": \"That sounds frightening.\"}\n";

/// `eval score --input F --output F` overwrote the pairs with their scores, also through a link.
#[test]
fn eval_score_refuses_to_write_over_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pairs.jsonl");
    std::fs::write(&input, PAIRS).unwrap();
    let link = dir.path().join("link.jsonl");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&input, &link).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(&input, &link).unwrap();
    for out in [&input, &link] {
        let (ok, _, err) = bedside(&["eval", "score", "--input", s(&input), "--output", s(out)]);
        assert!(!ok && err.contains("is the input") && err.contains("pairs.jsonl"), "{err}");
        assert_eq!(std::fs::read_to_string(&input).unwrap(), PAIRS, "the input was changed");
    }
}

/// `data import … --out F` with F the source replaced it.
#[test]
fn data_import_refuses_to_write_over_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("chats.jsonl");
    let text =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"My knee hurts.\"}, {\"role\": \"assistant\", \"content\": \"Rest it.\"}]}\n";
    std::fs::write(&src, text).unwrap();
    let (ok, _, err) = bedside(&["data", "import", "--format", "openai", s(&src), "--out", s(&dir.path().join(".").join("chats.jsonl"))]);
    assert!(!ok && err.contains("is the input"), "{err}");
    assert_eq!(std::fs::read_to_string(&src).unwrap(), text);
    // Another output is fine.
    let (ok, _, err) = bedside(&["data", "import", "--format", "openai", s(&src), "--out", s(&dir.path().join("out.jsonl"))]);
    assert!(ok, "{err}");
}

fn train_config(dir: &Path, fx: &Path) -> PathBuf {
    let corpus = dir.join("corpus.jsonl");
    let records: Vec<bedside_data::Dialogue> = [
        ("My head hurts.", "Rest and drink water."),
        ("I feel dizzy.", "Sit down and drink fluids."),
        ("I cough.", "See a doctor if it lasts."),
    ]
    .iter()
    .enumerate()
    .map(|(i, (p, a))| bedside_data::Dialogue {
        id: format!("c-{i}"),
        patient: (*p).into(),
        answer: (*a).into(),
        split: if i == 2 { "validation".into() } else { "train".into() },
        ..Default::default()
    })
    .collect();
    bedside_data::write_jsonl_atomic(&corpus, &records).unwrap();
    let cfg = dir.join("train.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\npath = {fx:?}\nbase = \"f32\"\n[data]\npaths = [{corpus:?}]\nmax_seq_len = 128\n[lora]\nr = 2\nalpha = 4\ntarget_modules = [\"q_proj\"]\n[optim]\nlr = 1e-3\n[run]\noutput_dir = {:?}\nmax_steps = 1\neval_every = 0\nsave_every = 0\n",
            dir.join("run")
        ),
    )
    .unwrap();
    cfg
}

/// Two runs on one output directory interleaved metrics.jsonl and both wrote adapter/: the second
/// now stops at once, naming the first one's process id (here a helper process holding the
/// lock); once that process is gone, killed or not, the directory is free.
#[cfg(unix)]
#[test]
fn a_second_run_in_a_busy_directory_names_the_holder() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = train_config(dir.path(), &fx);
    let run = dir.path().join("run");
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hold_run_dir_helper", "--ignored"])
        .env("BEDSIDE_TEST_HOLD", &run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let want = format!("{}\n", holder.id());
    let start = std::time::Instant::now();
    while std::fs::read_to_string(run.join(bedside_io::LOCK_FILE)).ok().as_deref() != Some(want.as_str()) {
        assert!(start.elapsed().as_secs() < 60, "the helper never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (ok, _, err) = bedside(&["train", "--config", s(&cfg), "--quiet"]);
    assert!(!ok && err.contains(&format!("in use by process {}", holder.id())), "{err}");
    assert!(!run.join("metrics.jsonl").exists() && !run.join("adapter").exists());
    holder.kill().unwrap();
    holder.wait().unwrap();
    let (ok, _, err) = bedside(&["train", "--config", s(&cfg), "--quiet"]);
    assert!(ok, "{err}");
    assert!(run.join("adapter/adapter_model.safetensors").is_file());
}

#[test]
#[ignore = "helper of a_second_run_in_a_busy_directory_names_the_holder"]
fn hold_run_dir_helper() {
    if let Some(dir) = std::env::var_os("BEDSIDE_TEST_HOLD") {
        let _lock = bedside_io::DirLock::acquire(Path::new(&dir), "helper").unwrap();
        std::thread::sleep(std::time::Duration::from_secs(120));
    }
}

/// A kill during the first checkpoint left `checkpoints/.tmp-step-N-PID/` forever and `--resume`
/// silently restarted from step 0. The leftover is removed and `--resume` says what it found.
#[test]
fn resume_cleans_what_a_killed_run_left_and_says_what_it_found() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = train_config(dir.path(), &fx);
    let ckpts = dir.path().join("run/checkpoints");
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let stale = ckpts.join(format!(".tmp-step-2-{dead}"));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("adapter_model.safetensors"), b"half a file").unwrap();
    let (ok, _, err) = bedside(&["train", "--config", s(&cfg), "--resume"]);
    assert!(ok, "{err}");
    assert!(err.contains("no complete checkpoint") && err.contains("starting at step 0"), "{err}");
    assert!(!stale.exists(), "the half-written checkpoint is still there");
}

/// `adapter merge --output` into the base model's own directory (with --force) replaced the
/// weights it was reading; `export-gguf --output` onto the base GGUF replaced the model.
#[test]
fn adapter_outputs_never_replace_their_inputs() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for f in ["config.json", "model.safetensors", "model-f32.gguf", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fx.join(f), base.join(f)).unwrap();
    }
    let before = std::fs::read(base.join("model.safetensors")).unwrap();
    let adapter = fx.join("lora");
    let (ok, _, err) = bedside(&["adapter", "merge", "-m", s(&base), "--adapter", s(&adapter), "--output", s(&base), "--force"]);
    assert!(!ok && err.contains("is the input"), "{err}");
    assert!(std::fs::read(base.join("model.safetensors")).unwrap() == before, "the base model was changed");
    let gguf = base.join("model-f32.gguf");
    let before = std::fs::read(&gguf).unwrap();
    let (ok, _, err) = bedside(&["adapter", "export-gguf", "-m", s(&gguf), "--adapter", s(&adapter), "--output", s(&gguf), "--force"]);
    assert!(!ok && err.contains("is the input"), "{err}");
    assert!(std::fs::read(&gguf).unwrap() == before, "the base GGUF was changed");
}

/// `bedside info MODEL | head -n 1` exited 101 with a backtrace in 8 of 15 runs (`adapter info
/// DIR | head -n 1` in 4 of 15): a closed stdout now ends every command quietly.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let commands: Vec<Vec<String>> = vec![
        vec!["info".into(), s(&fx).into()],
        vec!["info".into(), s(&fx.join("model-f32.gguf")).into(), "--json".into()],
        vec!["adapter".into(), "info".into(), s(&fx.join("lora")).into()],
        vec!["adapter".into(), "info".into(), s(&fx.join("rslora")).into(), "--json".into()],
        vec!["train".into(), "--help".into()],
    ];
    for args in &commands {
        for _ in 0..5 {
            // stdout is a pipe whose reader is gone before the command writes a byte.
            let mut child = Command::new(env!("CARGO_BIN_EXE_bedside"))
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .env("RUST_BACKTRACE", "1")
                .spawn()
                .unwrap();
            drop(child.stdout.take());
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            // Ended by SIGPIPE at its first write (as `cat` is), or done before writing.
            use std::os::unix::process::ExitStatusExt;
            let quiet = out.status.success() || out.status.signal() == Some(libc_sigpipe());
            assert!(quiet, "{args:?}: exit {:?}, stderr {err}", out.status);
            assert!(err.is_empty(), "{args:?}: {err}");
        }
    }
}

/// SIGPIPE's number (13 on Linux and macOS).
#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}

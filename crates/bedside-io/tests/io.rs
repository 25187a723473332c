//! The shared writer, the output-is-an-input check, run-directory locks and stale temporaries.

use std::path::Path;

use bedside_io::{check_output_not_input, remove_stale_temps, replace_dir_atomic, write_atomic, write_atomic_with, DirLock};

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A pid that surely runs no process: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn writes_replace_whole_files_and_leave_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.jsonl");
    write_atomic(&p, b"old\n").unwrap();
    write_atomic(&p, b"new\n").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"new\n");
    // A fill that fails halfway: the old file stays whole and the temporary is gone.
    let e = write_atomic_with(&p, |w| {
        w.write_all(b"half")?;
        Err(std::io::Error::other("disk full"))
    })
    .unwrap_err()
    .into_io();
    assert_eq!(e.to_string(), "disk full");
    assert_eq!(std::fs::read(&p).unwrap(), b"new\n");
    assert_eq!(entries(dir.path()), vec!["out.jsonl"]);
}

/// Writers in several threads at once never share a temporary (the fixed `.name.tmp` of two
/// earlier writers let one rename the other's half-written file into place).
#[test]
fn concurrent_writers_never_share_a_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.bin");
    std::thread::scope(|s| {
        for t in 0..6u8 {
            let p = p.clone();
            s.spawn(move || {
                for _ in 0..40 {
                    write_atomic(&p, &vec![t; 64 * 1024]).unwrap();
                }
            });
        }
    });
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(bytes.len(), 64 * 1024);
    assert!(bytes.iter().all(|&b| b == bytes[0]), "a file mixed from two writers");
    assert_eq!(entries(dir.path()), vec!["x.bin"]);
}

#[test]
fn directories_are_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("step-2");
    replace_dir_atomic(&d, |tmp| write_atomic(&tmp.join("a"), b"1")).unwrap();
    replace_dir_atomic(&d, |tmp| write_atomic(&tmp.join("b"), b"2")).unwrap();
    assert_eq!(entries(&d), vec!["b"]);
    let e = replace_dir_atomic(&d, |_| Err(std::io::Error::other("killed"))).unwrap_err().into_io();
    assert_eq!(e.to_string(), "killed");
    assert_eq!(entries(&d), vec!["b"]);
    assert_eq!(entries(dir.path()), vec!["step-2"]);
}

#[test]
fn output_that_is_an_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pairs.jsonl");
    std::fs::write(&input, "{}\n").unwrap();
    let other = dir.path().join("scores.jsonl");
    check_output_not_input(&other, &[&input]).unwrap();
    // The same path, spelled differently.
    let e = check_output_not_input(&input, &[&input]).unwrap_err().to_string();
    assert!(e.contains("pairs.jsonl") && e.contains("nothing was written"), "{e}");
    let dotted = dir.path().join(".").join("pairs.jsonl");
    assert!(check_output_not_input(&dotted, &[&input]).is_err());
    // Through a symbolic link (either way round) and a hard link.
    #[cfg(unix)]
    {
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let e = check_output_not_input(&link, &[&input]).unwrap_err().to_string();
        assert!(e.contains("resolves to it"), "{e}");
        assert!(check_output_not_input(&input, &[&link]).is_err());
        let hard = dir.path().join("hard.jsonl");
        std::fs::hard_link(&input, &hard).unwrap();
        assert!(check_output_not_input(&hard, &[&input]).is_err());
        // A link to a directory holding the input.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("in.jsonl"), "{}\n").unwrap();
        let dlink = dir.path().join("dlink");
        std::os::unix::fs::symlink(&sub, &dlink).unwrap();
        assert!(check_output_not_input(&dlink.join("in.jsonl"), &[sub.join("in.jsonl")]).is_err());
    }
}

#[test]
fn a_held_directory_names_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let lock = DirLock::acquire(dir.path(), "a training run").unwrap();
    let e = DirLock::acquire(dir.path(), "a training run").unwrap_err().to_string();
    assert!(e.contains(&format!("process {}", std::process::id())) && e.contains("a training run"), "{e}");
    drop(lock);
    // Another test's child process, between its fork and its exec, briefly shares this process's
    // descriptors (the lock's too): give such a window a moment to close.
    let start = std::time::Instant::now();
    while DirLock::acquire(dir.path(), "a training run").is_err() {
        assert!(start.elapsed().as_secs() < 5, "a dropped lock stayed held");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // A lock file left by a process that died holds no lock.
    std::fs::write(dir.path().join(bedside_io::LOCK_FILE), format!("{}\n", dead_pid())).unwrap();
    DirLock::acquire(dir.path(), "a training run").unwrap();
}

/// Another process holds the lock (this test binary, re-run as a helper); once it is killed, the
/// directory is free again.
#[cfg(unix)]
#[test]
fn a_lock_of_a_killed_process_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hold_lock_helper", "--ignored", "--nocapture"])
        .env("BEDSIDE_IO_HOLD", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock_file = dir.path().join(bedside_io::LOCK_FILE);
    let want = format!("{}\n", child.id());
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&lock_file).ok().as_deref() != Some(want.as_str()) {
        assert!(start.elapsed().as_secs() < 30, "the helper never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let e = DirLock::acquire(dir.path(), "a training run").unwrap_err().to_string();
    assert!(e.contains(&format!("process {}", child.id())), "{e}");
    child.kill().unwrap();
    child.wait().unwrap();
    DirLock::acquire(dir.path(), "a training run").unwrap();
}

#[test]
#[ignore = "helper of a_lock_of_a_killed_process_is_free"]
fn hold_lock_helper() {
    if let Some(dir) = std::env::var_os("BEDSIDE_IO_HOLD") {
        let _lock = DirLock::acquire(Path::new(&dir), "helper").unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

#[test]
fn temporaries_of_dead_processes_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_pid();
    let mine = std::process::id();
    std::fs::write(dir.path().join(format!(".a.json.{dead}.0.tmp")), "half").unwrap();
    std::fs::create_dir(dir.path().join(format!(".tmp-step-2-{dead}"))).unwrap();
    std::fs::create_dir(dir.path().join(format!(".step-4.{dead}.3.tmp"))).unwrap();
    std::fs::write(dir.path().join(format!(".b.json.{mine}.0.tmp")), "in progress").unwrap();
    std::fs::write(dir.path().join("keep.tmp"), "not ours").unwrap();
    let removed = remove_stale_temps(dir.path()).unwrap();
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert_eq!(entries(dir.path()), vec![format!(".b.json.{mine}.0.tmp"), "keep.tmp".into()]);
}

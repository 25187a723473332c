//! Every file bedside writes goes through here, so every write has the same guarantees.
//!
//! - [`write_atomic`] / [`write_atomic_with`] / [`replace_dir_atomic`]: a temporary beside the
//!   target under a name no other writer uses (process id and a counter, created exclusively),
//!   written and fsynced, renamed over the target, and the directory fsynced. A crash or a full
//!   disk leaves the old file or the new one, never half of one, and a failed write removes its
//!   temporary.
//! - [`check_output_not_input`]: a command that reads files and writes one refuses to write over
//!   what it reads, through symbolic links too.
//! - [`DirLock`]: one process at a time in a run directory; the error names the holder's pid, and
//!   a lock left by a process that died is free (the operating system drops it).
//! - [`remove_stale_temps`]: temporaries of processes that died mid-write, cleaned up.
//! - [`safetensors::header`]: the one safetensors header every writer of such files uses.

pub mod safetensors;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Suffix of every temporary this module creates: `.{name}.{pid}.{n}.tmp`.
const TEMP_SUFFIX: &str = ".tmp";

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> io::Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a file path", path.display())))
}

/// A fresh temporary name beside `path`.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(parent_dir(path).join(format!(".{}.{}.{n}{TEMP_SUFFIX}", file_name(path)?, std::process::id())))
}

/// Make a rename or a removal in `dir` durable. Filesystems that cannot sync a directory say so
/// with `EINVAL`; that is not an error of the write.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir)?;
        match d.sync_all() {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Why a write with a caller's `fill` failed: the file system, or `fill` itself.
#[derive(Debug)]
pub enum WriteError<E> {
    Io(io::Error),
    Fill(E),
}

impl<E> WriteError<E> {
    /// The caller's error, with a file-system error turned into one by `io`.
    pub fn into_inner(self, io: impl FnOnce(io::Error) -> E) -> E {
        match self {
            WriteError::Io(e) => io(e),
            WriteError::Fill(e) => e,
        }
    }
}

impl WriteError<io::Error> {
    pub fn into_io(self) -> io::Error {
        self.into_inner(|e| e)
    }
}

/// Write `bytes` to `path` atomically (see the crate docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes)).map_err(WriteError::into_io)
}

/// [`write_atomic`] with the contents streamed by `fill` through a buffered writer (a large file
/// never has to exist in memory). An error of `fill` aborts the write.
pub fn write_atomic_with<E>(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<(), E>) -> Result<(), WriteError<E>> {
    let (tmp, file) = loop {
        let tmp = temp_path(path).map_err(WriteError::Io)?;
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            // A leftover of an earlier process with our pid: take the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(WriteError::Io(e)),
        }
    };
    let result = (|| -> Result<(), WriteError<E>> {
        let mut w = io::BufWriter::with_capacity(1 << 20, file);
        fill(&mut w).map_err(WriteError::Fill)?;
        let f = w.into_inner().map_err(|e| WriteError::Io(e.into_error()))?;
        f.sync_all().map_err(WriteError::Io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(WriteError::Io)?;
        sync_dir(&parent_dir(path)).map_err(WriteError::Io)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Create or replace the directory `dir` atomically: `fill` writes its contents into a fresh
/// temporary directory beside it (through [`write_atomic`] or [`write_atomic_with`], so each file
/// is synced), which is then synced and renamed into place. A directory already at `dir` is
/// removed first; a crash between the two leaves no `dir` and the complete temporary, which
/// [`remove_stale_temps`] clears, never a half-written `dir`.
pub fn replace_dir_atomic<E>(dir: &Path, fill: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), WriteError<E>> {
    let parent = parent_dir(dir);
    std::fs::create_dir_all(&parent).map_err(WriteError::Io)?;
    let tmp = loop {
        let tmp = temp_path(dir).map_err(WriteError::Io)?;
        match std::fs::create_dir(&tmp) {
            Ok(()) => break tmp,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(WriteError::Io(e)),
        }
    };
    let result = (|| -> Result<(), WriteError<E>> {
        fill(&tmp).map_err(WriteError::Fill)?;
        let io = |r: io::Result<()>| r.map_err(WriteError::Io);
        io(sync_dir(&tmp))?;
        if dir.exists() {
            io(std::fs::remove_dir_all(dir))?;
        }
        io(std::fs::rename(&tmp, dir))?;
        io(sync_dir(&parent))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The process id in one of this module's temporary names, or in the checkpoint temporaries
/// earlier versions wrote (`.tmp-step-N-PID`).
fn temp_owner(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(".tmp-") {
        return rest.rsplit('-').next()?.parse().ok();
    }
    let stem = name.strip_prefix('.')?.strip_suffix(TEMP_SUFFIX)?;
    let mut parts = stem.rsplitn(3, '.');
    let _counter: u64 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

/// Whether a process with this id exists (unknown platforms: assume it does).
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Remove the temporaries in `dir` (files or directories) left by processes that no longer run:
/// a write killed halfway. Returns what was removed.
pub fn remove_stale_temps(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_owner(&name) else { continue };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
        removed.push(p);
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Where `p` really is: symbolic links followed, relative parts resolved; for a path that does
/// not exist yet, its resolved directory joined with its name.
fn resolve(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let name = p.file_name()?;
    let parent = parent_dir(p).canonicalize().ok()?;
    Some(parent.join(name))
}

/// Whether two paths name the same file: the same resolved path, or (on Unix) the same inode.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    matches!((resolve(a), resolve(b)), (Some(x), Some(y)) if x == y)
}

/// Refuse to write `output` when it is one of `inputs` (directly, through a symbolic link, or as
/// another name of the same file): the command would destroy what it reads. The error names both.
pub fn check_output_not_input<P: AsRef<Path>>(output: &Path, inputs: &[P]) -> io::Result<()> {
    for input in inputs {
        let input = input.as_ref();
        if same_file(output, input) {
            let how = if output == input { String::new() } else { format!(" ({} resolves to it)", output.display()) };
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the output {} is the input {}{how}; writing it would destroy what is being read, so nothing was written: choose another output",
                    output.display(),
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Name of the lock file [`DirLock`] keeps in a directory.
pub const LOCK_FILE: &str = ".bedside.lock";

/// An exclusive lock on a directory for as long as the value lives: a second process asking for
/// it gets an error naming the holder's process id. The operating system releases the lock when
/// its holder exits, however it exits, so a killed run never leaves the directory locked. (The
/// lock file stays; it holds the last holder's pid and means nothing while unlocked.)
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Lock `dir` (created if missing). `what` says who wants it, for the error message.
    pub fn acquire(dir: &Path, what: &str) -> io::Result<DirLock> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        if !try_lock(&file)? {
            let holder = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok());
            let who = match holder {
                Some(pid) => format!("process {pid}"),
                None => "another process".to_string(),
            };
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by {who} (lock {}); {what} must not share it: wait for that process to finish or choose another directory",
                    dir.display(),
                    path.display()
                ),
            ));
        }
        file.set_len(0)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        file.sync_all()?;
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(unix)]
fn try_lock(f: &File) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when the descriptor is closed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(not(unix))]
fn try_lock(_f: &File) -> io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_their_owner() {
        let tmp = temp_path(Path::new("dir/adapter_model.safetensors")).unwrap();
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert_eq!(temp_owner(name), Some(std::process::id()));
        assert_eq!(temp_owner(".tmp-step-4-1234"), Some(1234));
        assert_eq!(temp_owner("step-4"), None);
        assert_eq!(temp_owner(".hidden"), None);
        assert_eq!(temp_owner(".a.b.tmp"), None);
    }
}

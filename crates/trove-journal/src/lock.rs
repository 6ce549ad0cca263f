//! The data directory's lock: one engine per directory.
//!
//! Two engines appending to one journal lose acknowledged batches (each
//! recovers, truncates and appends as if alone), so an engine takes an
//! exclusive `flock` on `DIR/trove.lock` before it reads or writes anything
//! in the directory, and holds it for its life. The kernel releases it on
//! any exit, `kill -9` included: there is no stale lock to clean up. The
//! file holds the holder's pid, written after the lock is taken, for the
//! error a second engine gets and the note the read-only tools print.
//!
//! The file is never removed while the engine runs, only with the whole
//! directory by [`DataDirLock::remove_created`] (a failed start on a
//! directory it created). A start that opened the file just before that
//! removal and then gets the lock holds an unlinked file: after `flock`
//! succeeds, the holder checks that the path still names the file it
//! locked, and starts over if not.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lock file's name in a data directory.
pub const LOCK_FILE: &str = "trove.lock";

/// Attempts at taking the lock when its file or directory is removed or
/// replaced under us (a failed start cleaning up what it created).
const LOCK_ATTEMPTS_MAX: usize = 8;
/// How long a start waits for a held lock before it gives up. A real
/// holder (an engine) holds it for its life; a read-only tool's probe
/// holds a shared lock for microseconds, and must not make a start fail.
const HELD_WAIT: Duration = Duration::from_millis(250);
/// The poll step while waiting for a held lock, or for its holder's pid.
const POLL_STEP: Duration = Duration::from_millis(10);
/// Bytes of the lock file read for the holder's pid (a u32 and a newline).
const PID_BYTES_MAX: usize = 16;

/// Why a data directory could not be locked (or probed).
#[derive(Debug)]
pub enum LockError {
    /// Another engine, in this process or another, holds the directory.
    /// `pid` is the holder's, as its lock file says (`None` if it could not
    /// be read).
    Held { dir: PathBuf, pid: Option<u32> },
    /// A file system call failed.
    Io { path: PathBuf, action: &'static str, source: std::io::Error },
    /// The lock file kept disappearing under us ([`LOCK_ATTEMPTS_MAX`]
    /// times): other starts are creating and removing the directory.
    Unstable { dir: PathBuf },
    /// A directory this start created was not removed: it holds `entry`,
    /// which no engine writes.
    Kept { dir: PathBuf, entry: PathBuf },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { dir, pid } => {
                let holder = pid.map_or_else(|| "a process whose pid is unknown".to_string(), |p| format!("pid {p}"));
                write!(
                    f,
                    "data directory {} is locked by another trove engine ({holder}); one engine per data directory: \
                     stop it or choose another directory",
                    dir.display()
                )
            }
            LockError::Io { path, action, source } => write!(f, "{action} {}: {source}", path.display()),
            LockError::Unstable { dir } => write!(
                f,
                "data directory {}: its lock file was removed {LOCK_ATTEMPTS_MAX} times while this start took it; \
                 another start is creating and removing the directory",
                dir.display()
            ),
            LockError::Kept { dir, entry } => write!(
                f,
                "the new data directory {} was left in place: it holds {}, which no engine writes",
                dir.display(),
                entry.display()
            ),
        }
    }
}

impl std::error::Error for LockError {}

fn io_error<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> LockError + 'a {
    move |source| LockError::Io { path: path.to_path_buf(), action, source }
}

/// The exclusive lock on a data directory, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    dir: PathBuf,
    /// The locked file: closing it (dropping the lock) releases the lock.
    _file: File,
    /// The directories this start created, outermost first (empty if `dir`
    /// existed): what [`DataDirLock::remove_created`] removes.
    created: Vec<PathBuf>,
}

impl DataDirLock {
    /// Creates `dir` if it is missing (durably, parents too), then takes
    /// its lock: the first thing an engine does with its data directory.
    /// A lock held by someone else is waited for briefly ([`HELD_WAIT`])
    /// and then refused with [`LockError::Held`]; the directories this call
    /// created are then removed again if they are empty.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let mut created = Vec::new();
        let result = (|| {
            for _ in 0..LOCK_ATTEMPTS_MAX {
                created.extend(create_missing(dir).map_err(io_error(dir, "creating the data directory"))?);
                let file = match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path) {
                    Ok(f) => f,
                    // The directory was removed since (another start
                    // cleaning up): create it again.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error(&path, "opening")(e)),
                };
                if let Some(file) = lock_opened(file, dir, &path)? {
                    return Ok(file);
                }
            }
            Err(LockError::Unstable { dir: dir.to_path_buf() })
        })();
        match result {
            Ok(file) => {
                let pid = write_pid(&file, &path);
                let lock = Self { dir: dir.to_path_buf(), _file: file, created };
                match pid {
                    Ok(()) => Ok(lock),
                    Err(e) => {
                        // Locked, so what this start created can go.
                        let _ = lock.remove_created();
                        Err(e)
                    }
                }
            }
            Err(e) => {
                // Leave nothing behind: remove what this call created, if
                // nothing is in it (`remove_dir` refuses a directory that is
                // not empty, so a winner's lock file is never touched).
                for d in created.iter().rev() {
                    let _ = std::fs::remove_dir(d);
                }
                Err(e)
            }
        }
    }

    /// The locked data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this start created the data directory.
    pub fn created(&self) -> bool {
        !self.created.is_empty()
    }

    /// Removes the data directory if this start created it (and the
    /// missing parents it created with it), then releases the lock: a
    /// start that failed leaves no new directory behind. Only what an
    /// engine writes is removed: a directory holding anything else is left
    /// as it is, and the answer says so. Returns whether it removed it.
    pub fn remove_created(self) -> Result<bool, LockError> {
        let Some(outermost) = self.created.first() else { return Ok(false) };
        let foreign = foreign_entry(&self.dir).map_err(io_error(&self.dir, "listing"))?;
        if let Some(name) = foreign {
            return Err(LockError::Kept { entry: self.dir.join(name), dir: self.dir });
        }
        // Still locked here: nobody else writes in it meanwhile.
        std::fs::remove_dir_all(&self.dir).map_err(io_error(&self.dir, "removing"))?;
        for d in self.created.iter().rev().skip(1) {
            let _ = std::fs::remove_dir(d);
        }
        let parent = parent_of(outermost);
        File::open(parent).and_then(|f| f.sync_all()).map_err(io_error(parent, "syncing"))?;
        Ok(true)
    }
}

/// The engine holding a data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// As its lock file says; `None` if unreadable.
    pub pid: Option<u32>,
}

/// The engine holding a data directory, if one does, for the read-only
/// tools.
///
/// Creates nothing and writes nothing: a directory without a lock file has
/// no holder. The probe takes a shared lock for as long as one `flock`
/// call takes; a start that meets it waits it out ([`HELD_WAIT`]).
pub fn holder(dir: &Path) -> Result<Option<Holder>, LockError> {
    let path = dir.join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, "opening")(e)),
    };
    match file.try_lock_shared() {
        Ok(()) => {
            // Released at once: a reader must never keep a server from
            // starting.
            file.unlock().map_err(io_error(&path, "unlocking"))?;
            Ok(None)
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(Some(Holder { pid: read_pid(&file) })),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(&path, "locking")(e)),
    }
}

/// Locks an opened lock file; `None` if the path no longer names that file
/// once it is locked (a start that created the directory removed it
/// meanwhile, releasing its lock on a file nobody can find): the caller
/// starts over.
fn lock_opened(file: File, dir: &Path, path: &Path) -> Result<Option<File>, LockError> {
    wait_for_lock(&file, dir, path)?;
    let locked = file.metadata().map_err(io_error(path, "reading the metadata of"))?;
    match std::fs::metadata(path) {
        Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, "reading the metadata of")(e)),
    }
    Ok(Some(file))
}

/// Takes the exclusive lock on `file`, waiting up to [`HELD_WAIT`] for a
/// holder to let go; past it, [`LockError::Held`] with the holder's pid.
fn wait_for_lock(file: &File, dir: &Path, path: &Path) -> Result<(), LockError> {
    let deadline = std::time::Instant::now() + HELD_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(POLL_STEP);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held { dir: dir.to_path_buf(), pid: read_pid(file) });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(path, "locking")(e)),
        }
    }
}

/// Replaces the lock file's content with this process's pid. Not synced:
/// it only names a live holder, and after a crash nothing holds the lock.
fn write_pid(file: &File, path: &Path) -> Result<(), LockError> {
    let pid = format!("{}\n", std::process::id());
    assert!(pid.len() <= PID_BYTES_MAX);
    file.set_len(0).map_err(io_error(path, "writing the pid to"))?;
    file.write_all_at(pid.as_bytes(), 0).map_err(io_error(path, "writing the pid to"))
}

/// The pid in a held lock file. The holder writes it just after taking the
/// lock: an empty file is read again for a while ([`HELD_WAIT`]).
fn read_pid(file: &File) -> Option<u32> {
    let deadline = std::time::Instant::now() + HELD_WAIT;
    loop {
        let pid = read_head(file).ok().and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse().ok());
        if pid.is_some() || std::time::Instant::now() >= deadline {
            return pid;
        }
        std::thread::sleep(POLL_STEP);
    }
}

/// The first [`PID_BYTES_MAX`] bytes of a file (fewer if it is shorter),
/// read without moving a cursor.
fn read_head(file: &File) -> std::io::Result<Vec<u8>> {
    let mut buf = [0u8; PID_BYTES_MAX];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf[..len].to_vec())
}

/// Creates `dir` and its missing parents, each made durable by an fsync of
/// the directory holding it. Returns the directories this call created,
/// outermost first; one that appears meanwhile (another start) is not
/// counted.
fn create_missing(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
        if d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    let mut created = Vec::new();
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(&d) {
            Ok(()) => {
                File::open(parent_of(&d))?.sync_all()?;
                created.push(d);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The first entry of a data directory that no engine writes, if any: an
/// engine writes its lock, its meta (and the meta's temporary file) and
/// one directory per shard.
fn foreign_entry(dir: &Path) -> std::io::Result<Option<std::ffi::OsString>> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let ours = name.to_str().is_some_and(|n| {
            n == LOCK_FILE
                || n == "trove.meta"
                || n == "trove.meta.tmp"
                || (n.starts_with("shard-") && entry.file_type().is_ok_and(|t| t.is_dir()))
        });
        if !ours {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("trove-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_directory_and_the_holder() {
        let dir = scratch("second");
        let first = DataDirLock::acquire(&dir).unwrap();
        assert!(first.created());
        assert_eq!(std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(), format!("{}\n", std::process::id()));
        // flock locks belong to an open file: a second open in the same
        // process is refused like another process.
        match DataDirLock::acquire(&dir) {
            Err(LockError::Held { dir: d, pid }) => {
                assert_eq!(d, dir);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let message = DataDirLock::acquire(&dir).unwrap_err().to_string();
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        assert_eq!(holder(&dir).unwrap(), Some(Holder { pid: Some(std::process::id()) }));
        drop(first);
        assert_eq!(holder(&dir).unwrap(), None);
        let again = DataDirLock::acquire(&dir).unwrap();
        assert!(!again.created(), "the directory existed");
        assert!(!again.remove_created().unwrap(), "not created by this start: kept");
        assert!(dir.join(LOCK_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_probe_creates_nothing() {
        let dir = scratch("probe");
        assert_eq!(holder(&dir).unwrap(), None);
        assert!(!dir.exists());
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(holder(&dir).unwrap(), None);
        assert!(!dir.join(LOCK_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_created_directory_is_removed_with_the_parents_it_created() {
        let root = scratch("created");
        std::fs::create_dir_all(&root).unwrap();
        let dir = root.join("a").join("b");
        let lock = DataDirLock::acquire(&dir).unwrap();
        std::fs::write(dir.join("trove.meta"), "format=3\n").unwrap();
        std::fs::create_dir(dir.join("shard-000")).unwrap();
        std::fs::write(dir.join("shard-000").join("segment-00000000000000000001.tjl"), [0u8; 64]).unwrap();
        assert!(lock.remove_created().unwrap());
        assert!(!root.join("a").exists(), "the parent this start created is gone too");
        assert!(root.exists(), "what existed before stays");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_created_directory_holding_a_stranger_s_file_is_kept() {
        let dir = scratch("stranger");
        let lock = DataDirLock::acquire(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let err = lock.remove_created().unwrap_err().to_string();
        assert!(err.contains("notes.txt"), "{err}");
        assert!(dir.join("notes.txt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_file_removed_under_a_waiting_start_is_not_taken() {
        // The start that created the directory fails and removes it while
        // a second start has the old lock file open: once the first lets
        // go, the second must not hold a lock on a file nobody can find.
        let dir = scratch("removed");
        let first = DataDirLock::acquire(&dir).unwrap();
        let path = dir.join(LOCK_FILE);
        let opened = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        assert!(first.remove_created().unwrap());
        assert!(lock_opened(opened, &dir, &path).unwrap().is_none(), "a stale lock file is not the lock");
        // A start after it creates the directory anew and locks it.
        let second = DataDirLock::acquire(&dir).unwrap();
        assert!(second.created());
        assert!(second.remove_created().unwrap());
        assert!(!dir.exists());
    }
}

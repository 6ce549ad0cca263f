//! The file operations the journal does, behind one interface.
//!
//! The writer, recovery, segment reading and snapshots go through a
//! [`Storage`]: [`FsStorage`] is the real file system (what the engine
//! runs on, `O_DIRECT` included); [`SimStorage`] is an in-memory disk for
//! the simulator (`crates/trove-sim`) that loses, tears, misdirects and
//! rots writes from a seed (docs/decisions/0019-simulated-storage.md).
//! The data directory's lock (`lock.rs`, `flock`) stays real-only: it
//! guards against a second process, which a simulation does not have.
//!
//! The interface is object-safe and the writer holds it as
//! `Arc<dyn Storage>` and `Box<dyn StorageFile>`: one indirect call per
//! `write` or `fdatasync`, next to a system call, and the bytes are passed
//! as the writer's own buffer (no copy).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub mod sim;

pub use sim::{SimFaults, SimStorage};

/// A file open for writing.
pub trait StorageFile: std::fmt::Debug + Send {
    /// Writes all of `bytes` at `offset`.
    fn write_at(&mut self, bytes: &[u8], offset: u64) -> std::io::Result<()>;
    /// Cuts (or extends with zeros) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
    /// `fdatasync`: the file's written bytes are durable once it returns Ok.
    fn sync_data(&mut self) -> std::io::Result<()>;
    /// `fsync`: as `sync_data`, and the file's metadata too.
    fn sync_all(&mut self) -> std::io::Result<()>;
}

/// The directory and file operations of a journal.
///
/// Directory changes (`create_new`, `create_dir`, `rename`, `remove`) are
/// durable only after `sync_dir` of the directory that holds them, as on a
/// real file system.
pub trait Storage: std::fmt::Debug + Send + Sync {
    /// Creates an empty file for writing. `exclusive`: fail if `path`
    /// exists; otherwise an existing file is truncated.
    fn create(&self, path: &Path, exclusive: bool) -> std::io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for writing, with `O_DIRECT` if `direct`
    /// and the storage takes it; returns whether it did.
    fn open_write(&self, path: &Path, direct: bool) -> std::io::Result<(Box<dyn StorageFile>, bool)>;
    /// A whole file, refused (`InvalidData`) if longer than `bytes_max`.
    fn read(&self, path: &Path, bytes_max: u64) -> std::io::Result<Vec<u8>>;
    /// Fills `buf` from `offset` of a file.
    fn read_at(&self, path: &Path, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// The files (not directories) directly in `dir`, in no given order.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>>;
    fn exists(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
    /// Creates one directory; its parent must exist.
    fn create_dir(&self, path: &Path) -> std::io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    fn remove(&self, path: &Path) -> std::io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals)
    /// durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsStorage;

/// A real file open for writing.
#[derive(Debug)]
struct FsFile(File);

impl StorageFile for FsFile {
    fn write_at(&mut self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_all_at(bytes, offset)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&mut self) -> std::io::Result<()> {
        self.0.sync_all()
    }
}

impl Storage for FsStorage {
    fn create(&self, path: &Path, exclusive: bool) -> std::io::Result<Box<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        if exclusive {
            options.create_new(true);
        } else {
            options.create(true).truncate(true);
        }
        Ok(Box::new(FsFile(options.write(true).open(path)?)))
    }

    fn open_write(&self, path: &Path, direct: bool) -> std::io::Result<(Box<dyn StorageFile>, bool)> {
        if direct {
            match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
                Ok(file) => return Ok((Box::new(FsFile(file)), true)),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.seek(SeekFrom::End(0))?;
        Ok((Box::new(FsFile(file)), false))
    }

    fn read(&self, path: &Path, bytes_max: u64) -> std::io::Result<Vec<u8>> {
        let len = std::fs::metadata(path)?.len();
        if len > bytes_max {
            return Err(too_long(path, len, bytes_max));
        }
        std::fs::read(path)
    }

    fn read_at(&self, path: &Path, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        File::open(path)?.read_exact_at(buf, offset)
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            found.push(entry?.path());
        }
        Ok(found)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// The error of a read refused by its size limit.
pub(crate) fn too_long(path: &Path, len: u64, bytes_max: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{} is {len} bytes, above the {bytes_max}-byte segment limit", path.display()),
    )
}

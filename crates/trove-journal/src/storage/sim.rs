//! An in-memory disk that fails the way disks fail, from a seed.
//!
//! Each file keeps two images: what reads see (every write so far) and
//! what a crash keeps (the durable bytes: every write covered by a
//! successful `fdatasync`). Writes since the last sync are pending; at a
//! crash each one is, by the seed, lost, kept, or torn (a prefix kept),
//! independently, so a later write can survive an earlier one (kept out
//! of order). Directory changes go to an ordered log that a `sync_dir`
//! makes durable up to its last entry for that directory; a crash keeps a
//! seeded prefix of the rest (a metadata journal commits in order).
//!
//! Faults besides crashes, each with a probability from [`SimFaults`]:
//! misdirected writes (a write lands at another offset on the durable
//! image; reads of the page cache still see it where it was meant to go),
//! `fdatasync` errors (which, as on Linux, may drop the pending writes
//! from the durable image for good), bit rot in synced data at a crash,
//! and a slow disk (each operation costs simulated time, never real
//! time). No clock, no unseeded randomness: a seed replays exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use trove_core::SplitMix64;

use super::{Storage, StorageFile, too_long};

/// Probabilities are in parts per million (`PPM`).
pub const PPM: u32 = 1_000_000;

/// How often each fault strikes, in parts per million ([`PPM`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// A pending write is lost at a crash.
    pub crash_lose_ppm: u32,
    /// A pending write is torn at a crash: only a prefix of it is kept.
    pub crash_torn_ppm: u32,
    /// A write lands at the wrong offset of the durable image.
    pub misdirect_ppm: u32,
    /// An `fdatasync` (or `fsync`) fails.
    pub sync_error_ppm: u32,
    /// At a crash, one bit of some file's synced bytes flips.
    pub bit_rot_ppm: u32,
    /// Each operation takes up to this long in simulated time (0: none).
    pub latency_us_max: u64,
    /// `O_DIRECT` is refused (`EINVAL`): at an open asking for it, or at
    /// a write through a file opened with it (some file systems take the
    /// flag and refuse the write).
    pub direct_refused_ppm: u32,
}

/// Files are at most this long: a bound on the simulator's memory, and a
/// write past it is an error as a full disk would be.
pub const SIM_FILE_BYTES_MAX: u64 = 1 << 30;

/// A write not yet made durable.
#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What a crash keeps, before the pending writes.
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(usize),
    Dir,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, Node),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

#[derive(Debug)]
struct Disk {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, Node>,
    durable_names: BTreeMap<PathBuf, Node>,
    /// Directory changes not yet durable, in order, with the directory
    /// each one changes.
    dir_log: Vec<(PathBuf, DirOp)>,
    rng: SplitMix64,
    faults: SimFaults,
    /// Operations so far; a crash is due at `crash_at_op`.
    ops: u64,
    crash_at_op: Option<u64>,
    crashed: bool,
    /// Bumped by every restart: handles from before it are dead.
    generation: u64,
    time_us: u64,
    log: Vec<String>,
    /// Bit flips and misdirected writes so far: damage to data a sync
    /// covered, which recovery must report.
    damage: u64,
}

/// The in-memory disk. Clones share it.
#[derive(Clone, Debug)]
pub struct SimStorage {
    disk: Arc<Mutex<Disk>>,
}

fn crash_error() -> std::io::Error {
    std::io::Error::other("simulated crash: the disk is gone until restart")
}

fn not_found(path: &Path) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

fn chance(rng: &mut SplitMix64, ppm: u32) -> bool {
    ppm > 0 && rng.below(PPM) < ppm
}

fn apply(image: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, bytes } => {
            let end = *offset as usize + bytes.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*offset as usize..end].copy_from_slice(bytes);
        }
        Pending::SetLen(len) => image.resize(*len as usize, 0),
    }
}

fn apply_dir(names: &mut BTreeMap<PathBuf, Node>, op: &DirOp) {
    match op {
        DirOp::Link(path, node) => {
            names.insert(path.clone(), *node);
        }
        DirOp::Unlink(path) => {
            names.remove(path);
        }
        DirOp::Rename(from, to) => {
            if let Some(node) = names.remove(from) {
                names.insert(to.clone(), node);
            }
        }
    }
}

impl Disk {
    /// Counts an operation and its simulated time; fails it if the disk
    /// has crashed, or crashes it here (the operation then happens as far
    /// as a crash lets it: see `crash`).
    fn step(&mut self) -> Result<bool, std::io::Error> {
        if self.crashed {
            return Err(crash_error());
        }
        self.ops += 1;
        if self.faults.latency_us_max > 0 {
            self.time_us += self.rng.next_u64() % (self.faults.latency_us_max + 1);
        }
        Ok(self.crash_at_op == Some(self.ops))
    }

    fn note(&mut self, what: String) {
        let line = format!("op {}: {what}", self.ops);
        self.log.push(line);
    }

    fn file(&self, path: &Path) -> std::io::Result<usize> {
        match self.names.get(path) {
            Some(Node::File(ino)) => Ok(*ino),
            Some(Node::Dir) => Err(std::io::Error::other(format!("{} is a directory", path.display()))),
            None => Err(not_found(path)),
        }
    }

    fn parent_exists(&self, path: &Path) -> bool {
        match path.parent() {
            Some(p) if p.as_os_str().is_empty() || p == Path::new("/") => true,
            Some(p) => self.names.get(p) == Some(&Node::Dir),
            None => false,
        }
    }

    fn dir_change(&mut self, path: &Path, op: DirOp) {
        apply_dir(&mut self.names, &op);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.dir_log.push((dir, op));
    }

    fn write(&mut self, ino: usize, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        let end = offset.checked_add(bytes.len() as u64).filter(|&e| e <= SIM_FILE_BYTES_MAX);
        if end.is_none() {
            return Err(std::io::Error::other("simulated disk full: write past the file size limit"));
        }
        let mut durable_offset = offset;
        if chance(&mut self.rng, self.faults.misdirect_ppm) {
            let len = self.inodes[ino].data.len() as u64;
            durable_offset = self.rng.next_u64() % (len + 1);
            self.damage += 1;
            self.note(format!(
                "misdirected write of {} bytes: meant for {offset}, lands at {durable_offset}",
                bytes.len()
            ));
        }
        let inode = &mut self.inodes[ino];
        apply(&mut inode.data, &Pending::Write { offset, bytes: bytes.to_vec() });
        inode.pending.push(Pending::Write { offset: durable_offset, bytes: bytes.to_vec() });
        Ok(())
    }

    fn sync(&mut self, ino: usize) -> std::io::Result<()> {
        if chance(&mut self.rng, self.faults.sync_error_ppm) {
            // As Linux after a failed writeback: the pages are marked
            // clean, so some pending writes never reach the disk.
            let pending = std::mem::take(&mut self.inodes[ino].pending);
            let mut dropped = 0;
            for op in pending {
                if self.rng.next_u64() & 1 == 0 {
                    apply(&mut self.inodes[ino].durable, &op);
                } else {
                    dropped += 1;
                }
            }
            self.note(format!("fdatasync error (EIO), {dropped} pending writes dropped for good"));
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        let inode = &mut self.inodes[ino];
        for op in std::mem::take(&mut inode.pending) {
            apply(&mut inode.durable, &op);
        }
        Ok(())
    }

    /// What a crash leaves: each pending write lost, kept or torn; a
    /// prefix of the directory log; maybe one rotten bit.
    fn crash(&mut self) {
        let log_kept = self.rng.next_u64() % (self.dir_log.len() as u64 + 1);
        let log = std::mem::take(&mut self.dir_log);
        for (_, op) in &log[..log_kept as usize] {
            apply_dir(&mut self.durable_names, op);
        }
        if !log.is_empty() {
            self.note(format!("crash: {log_kept} of {} unsynced directory changes kept", log.len()));
        }
        for ino in 0..self.inodes.len() {
            let pending = std::mem::take(&mut self.inodes[ino].pending);
            let (mut lost, mut torn, total) = (0, 0, pending.len());
            for op in pending {
                if chance(&mut self.rng, self.faults.crash_lose_ppm) {
                    lost += 1;
                    continue;
                }
                let op = match op {
                    Pending::Write { offset, mut bytes } if chance(&mut self.rng, self.faults.crash_torn_ppm) => {
                        torn += 1;
                        let keep = self.rng.next_u64() % (bytes.len() as u64 + 1);
                        bytes.truncate(keep as usize);
                        Pending::Write { offset, bytes }
                    }
                    op => op,
                };
                apply(&mut self.inodes[ino].durable, &op);
            }
            if lost + torn > 0 {
                let name = self.name_of(ino);
                self.note(format!("crash: {name}: of {total} unsynced writes, {lost} lost, {torn} torn"));
            }
            let inode = &mut self.inodes[ino];
            inode.data = inode.durable.clone();
        }
        self.names = self.durable_names.clone();
        if chance(&mut self.rng, self.faults.bit_rot_ppm) {
            let files: Vec<(PathBuf, usize)> = self
                .names
                .iter()
                .filter_map(|(p, n)| match n {
                    Node::File(ino) if !self.inodes[*ino].durable.is_empty() => Some((p.clone(), *ino)),
                    _ => None,
                })
                .collect();
            if !files.is_empty() {
                let (path, ino) = files[self.rng.next_u64() as usize % files.len()].clone();
                let bit = self.rng.next_u64() % (self.inodes[ino].durable.len() as u64 * 8);
                let inode = &mut self.inodes[ino];
                inode.durable[(bit / 8) as usize] ^= 1 << (bit % 8);
                inode.data = inode.durable.clone();
                self.damage += 1;
                self.note(format!("bit rot: bit {} of byte {} in {}", bit % 8, bit / 8, path.display()));
            }
        }
    }

    fn name_of(&self, ino: usize) -> String {
        self.names
            .iter()
            .find(|(_, n)| **n == Node::File(ino))
            .map_or_else(|| format!("inode {ino} (unlinked)"), |(p, _)| p.display().to_string())
    }
}

impl SimStorage {
    /// An empty disk whose faults are drawn from `seed`.
    pub fn new(seed: u64, faults: SimFaults) -> Self {
        let disk = Disk {
            inodes: Vec::new(),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            dir_log: Vec::new(),
            rng: SplitMix64::new(seed),
            faults,
            ops: 0,
            crash_at_op: None,
            crashed: false,
            generation: 0,
            time_us: 0,
            log: Vec::new(),
            damage: 0,
        };
        Self { disk: Arc::new(Mutex::new(disk)) }
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        // A panic while the lock is held is a simulator bug; the state is
        // still what the operations made it.
        self.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The faults in force from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        self.disk().faults = faults;
    }

    /// Crashes the disk at operation `op` (counted from the start, see
    /// [`SimStorage::ops`]); `None`: no crash planned.
    pub fn crash_at(&self, op: Option<u64>) {
        self.disk().crash_at_op = op;
    }

    /// Crashes now: every operation fails until [`SimStorage::restart`].
    pub fn crash(&self) {
        let mut d = self.disk();
        if !d.crashed {
            d.note("crash".into());
            d.crashed = true;
        }
    }

    pub fn crashed(&self) -> bool {
        self.disk().crashed
    }

    /// Operations so far.
    pub fn ops(&self) -> u64 {
        self.disk().ops
    }

    /// Simulated time the disk has spent, µs.
    pub fn time_us(&self) -> u64 {
        self.disk().time_us
    }

    /// The machine comes back after a crash (or a clean stop, if it did
    /// not crash: then nothing is lost but the unsynced writes a crash
    /// would lose, which is what a power cut is). Handles from before are
    /// dead.
    pub fn restart(&self) {
        let mut d = self.disk();
        d.crash();
        d.crashed = false;
        d.crash_at_op = None;
        d.generation += 1;
    }

    /// How many faults damaged data a sync may have covered (bit rot,
    /// misdirected writes).
    pub fn damage(&self) -> u64 {
        self.disk().damage
    }

    /// The faults injected so far, one line each.
    pub fn log(&self) -> Vec<String> {
        self.disk().log.clone()
    }

    /// The durable image of every file, by path (what a crash would
    /// keep of synced data): for checks and debugging.
    pub fn files(&self) -> Vec<(PathBuf, usize)> {
        let d = self.disk();
        d.names
            .iter()
            .filter_map(|(p, n)| match n {
                Node::File(ino) => Some((p.clone(), d.inodes[*ino].data.len())),
                Node::Dir => None,
            })
            .collect()
    }

    fn run<T>(&self, f: impl FnOnce(&mut Disk) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut d = self.disk();
        let crash_here = d.step()?;
        let result = f(&mut d);
        if crash_here {
            d.note("crash during this operation".into());
            d.crashed = true;
            return Err(crash_error());
        }
        result
    }
}

/// A handle on a simulated file.
#[derive(Debug)]
struct SimFile {
    storage: SimStorage,
    ino: usize,
    generation: u64,
    /// Opened with `O_DIRECT`.
    direct: bool,
}

impl SimFile {
    fn run<T>(&self, f: impl FnOnce(&mut Disk, usize) -> std::io::Result<T>) -> std::io::Result<T> {
        let ino = self.ino;
        let generation = self.generation;
        self.storage.run(|d| {
            if d.generation != generation {
                return Err(std::io::Error::other("a file handle from before a restart"));
            }
            f(d, ino)
        })
    }
}

impl StorageFile for SimFile {
    fn write_at(&mut self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        let direct = self.direct;
        self.run(|d, ino| {
            if direct && chance(&mut d.rng, d.faults.direct_refused_ppm) {
                d.note(format!("O_DIRECT write of {} bytes refused (EINVAL)", bytes.len()));
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            d.write(ino, bytes, offset)
        })
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        if len > SIM_FILE_BYTES_MAX {
            return Err(std::io::Error::other("simulated disk full"));
        }
        self.run(|d, ino| {
            let inode = &mut d.inodes[ino];
            apply(&mut inode.data, &Pending::SetLen(len));
            inode.pending.push(Pending::SetLen(len));
            Ok(())
        })
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        self.run(|d, ino| d.sync(ino))
    }

    fn sync_all(&mut self) -> std::io::Result<()> {
        self.run(|d, ino| d.sync(ino))
    }
}

impl Storage for SimStorage {
    fn create(&self, path: &Path, exclusive: bool) -> std::io::Result<Box<dyn StorageFile>> {
        let ino = self.run(|d| {
            if !d.parent_exists(path) {
                return Err(not_found(path));
            }
            match d.names.get(path) {
                Some(Node::File(_)) if exclusive => {
                    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} exists", path.display())))
                }
                Some(Node::File(ino)) => {
                    let ino = *ino;
                    let inode = &mut d.inodes[ino];
                    inode.data.clear();
                    inode.pending.push(Pending::SetLen(0));
                    Ok(ino)
                }
                Some(Node::Dir) => Err(std::io::Error::other(format!("{} is a directory", path.display()))),
                None => {
                    d.inodes.push(Inode::default());
                    let ino = d.inodes.len() - 1;
                    d.dir_change(path, DirOp::Link(path.to_path_buf(), Node::File(ino)));
                    Ok(ino)
                }
            }
        })?;
        let generation = self.disk().generation;
        Ok(Box::new(SimFile { storage: self.clone(), ino, generation, direct: false }))
    }

    fn open_write(&self, path: &Path, direct: bool) -> std::io::Result<(Box<dyn StorageFile>, bool)> {
        let (ino, direct) = self.run(|d| {
            let ino = d.file(path)?;
            if direct && chance(&mut d.rng, d.faults.direct_refused_ppm) {
                d.note(format!("O_DIRECT refused at the open of {}", path.display()));
                return Ok((ino, false));
            }
            Ok((ino, direct))
        })?;
        let generation = self.disk().generation;
        Ok((Box::new(SimFile { storage: self.clone(), ino, generation, direct }), direct))
    }

    fn read(&self, path: &Path, bytes_max: u64) -> std::io::Result<Vec<u8>> {
        self.run(|d| {
            let data = &d.inodes[d.file(path)?].data;
            if data.len() as u64 > bytes_max {
                return Err(too_long(path, data.len() as u64, bytes_max));
            }
            Ok(data.clone())
        })
    }

    fn read_at(&self, path: &Path, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.run(|d| {
            let data = &d.inodes[d.file(path)?].data;
            let end = (offset as usize).checked_add(buf.len()).filter(|&e| e <= data.len());
            let Some(end) = end else {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end"));
            };
            buf.copy_from_slice(&data[offset as usize..end]);
            Ok(())
        })
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        self.run(|d| {
            if !(dir == Path::new("/") || d.names.get(dir) == Some(&Node::Dir)) {
                return Err(not_found(dir));
            }
            Ok(d.names
                .iter()
                .filter(|(p, n)| p.parent() == Some(dir) && matches!(n, Node::File(_)))
                .map(|(p, _)| p.clone())
                .collect())
        })
    }

    fn exists(&self, path: &Path) -> bool {
        let d = self.disk();
        !d.crashed && (path == Path::new("/") || d.names.contains_key(path))
    }

    fn is_dir(&self, path: &Path) -> bool {
        let d = self.disk();
        !d.crashed && (path == Path::new("/") || d.names.get(path) == Some(&Node::Dir))
    }

    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        self.run(|d| {
            if d.names.contains_key(path) || path == Path::new("/") {
                return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists"));
            }
            if !d.parent_exists(path) {
                return Err(not_found(path));
            }
            d.dir_change(path, DirOp::Link(path.to_path_buf(), Node::Dir));
            Ok(())
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.run(|d| {
            d.file(from)?;
            if !d.parent_exists(to) {
                return Err(not_found(to));
            }
            d.dir_change(to, DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
            Ok(())
        })
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.run(|d| {
            d.file(path)?;
            d.dir_change(path, DirOp::Unlink(path.to_path_buf()));
            Ok(())
        })
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.run(|d| {
            if chance(&mut d.rng, d.faults.sync_error_ppm) {
                d.note(format!("directory fsync error (EIO) on {}", dir.display()));
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            // Everything logged up to this directory's last change commits
            // (an ordered metadata journal).
            if let Some(last) = d.dir_log.iter().rposition(|(parent, _)| parent == dir) {
                let done: Vec<(PathBuf, DirOp)> = d.dir_log.drain(..=last).collect();
                for (_, op) in &done {
                    apply_dir(&mut d.durable_names, op);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> SimStorage {
        SimStorage::new(1, SimFaults::default())
    }

    #[test]
    fn synced_bytes_survive_a_crash_and_unsynced_directory_entries_may_not() {
        let s = clean();
        let dir = Path::new("/d");
        s.create_dir(dir).unwrap();
        s.sync_dir(Path::new("/")).unwrap();
        let mut f = s.create(&dir.join("a"), true).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        s.sync_dir(dir).unwrap();
        f.write_at(b"world", 5).unwrap();
        let mut g = s.create(&dir.join("b"), true).unwrap();
        g.write_at(b"x", 0).unwrap();
        g.sync_data().unwrap();
        s.crash();
        assert!(f.write_at(b"!", 10).is_err(), "a crashed disk fails every operation");
        s.restart();
        // No loss or tear configured: the unsynced write is kept whole.
        assert_eq!(s.read(&dir.join("a"), 100).unwrap(), b"helloworld");
        // "b"'s entry was never synced: a prefix (maybe empty) of the log.
        let listed = s.list(dir).unwrap();
        assert!(listed.contains(&dir.join("a")));
        assert!(f.write_at(b"!", 10).is_err(), "handles from before a restart are dead");
    }

    #[test]
    fn lost_writes_and_sync_errors_follow_the_seed() {
        let faults = SimFaults { crash_lose_ppm: PPM, ..SimFaults::default() };
        let s = SimStorage::new(7, faults);
        s.create_dir(Path::new("/d")).unwrap();
        s.sync_dir(Path::new("/")).unwrap();
        let mut f = s.create(Path::new("/d/a"), true).unwrap();
        s.sync_dir(Path::new("/d")).unwrap();
        f.write_at(b"kept", 0).unwrap();
        f.sync_data().unwrap();
        f.write_at(b"lost", 4).unwrap();
        assert_eq!(s.read(Path::new("/d/a"), 100).unwrap(), b"keptlost", "reads see the page cache");
        s.restart();
        assert_eq!(s.read(Path::new("/d/a"), 100).unwrap(), b"kept");
        s.set_faults(SimFaults { sync_error_ppm: PPM, ..SimFaults::default() });
        let mut f = s.open_write(Path::new("/d/a"), false).unwrap().0;
        assert!(f.sync_data().is_err());
        assert!(s.log().iter().any(|l| l.contains("fdatasync error")), "{:?}", s.log());
    }

    /// Over seeds, an unsynced creation and an unsynced removal are each
    /// sometimes kept and sometimes undone by a crash; a synced one never
    /// is.
    #[test]
    fn directory_changes_are_durable_only_after_a_directory_sync() {
        let (mut created, mut removed) = ([0; 2], [0; 2]);
        for seed in 0..64 {
            let s = SimStorage::new(seed, SimFaults::default());
            let dir = Path::new("/d");
            s.create_dir(dir).unwrap();
            s.sync_dir(Path::new("/")).unwrap();
            for name in ["synced", "doomed"] {
                s.create(&dir.join(name), true).unwrap().sync_all().unwrap();
            }
            s.sync_dir(dir).unwrap();
            s.create(&dir.join("new"), true).unwrap().sync_all().unwrap();
            s.remove(&dir.join("doomed")).unwrap();
            s.restart();
            let names = s.list(dir).unwrap();
            assert!(names.contains(&dir.join("synced")), "seed {seed}");
            created[usize::from(names.contains(&dir.join("new")))] += 1;
            removed[usize::from(names.contains(&dir.join("doomed")))] += 1;
        }
        assert!(created.iter().chain(&removed).all(|&n| n > 0), "{created:?} {removed:?}");
    }

    #[test]
    fn a_planned_crash_stops_the_disk_at_that_operation() {
        let s = clean();
        s.crash_at(Some(3));
        s.create_dir(Path::new("/d")).unwrap();
        s.sync_dir(Path::new("/")).unwrap();
        assert!(s.create(Path::new("/d/a"), true).is_err());
        assert!(s.crashed());
        s.restart();
        assert!(s.is_dir(Path::new("/d")));
    }
}

//! The cache store behind `ferrojob.Memory`: one directory per function, one per entry.
//!
//! ```text
//! <root>/<function>/<key>/...     an entry: files written by the caller
//! <root>/<function>/.<key>.lock   held (flock) while one process computes the entry
//! <root>/<function>/.<key>.*.tmp  an entry being written
//! ```
//! An entry appears whole or not at all: it is written in a temporary directory, then renamed
//! into place; if another process got there first, its entry is kept and ours discarded.
//! Removal renames the entry away before deleting it, so readers never see half an entry.
//! Eviction removes the least recently used entries first.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use crate::atomic;

/// The file whose modification time records an entry's last use.
const ACCESS_MARK: &str = ".last-access";
/// The file that holds the version of a function's code (joblib's name for it).
const CODE_VERSION: &str = "func_code.txt";

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// One cached entry, as listed by [`Store::entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub function: String,
    pub key: String,
    pub size: u64,
    pub last_access: SystemTime,
}

/// A failed file-system operation of the store, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct StoreError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl StoreError {
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// An exclusive lock on one entry, released when dropped.
#[derive(Debug)]
pub struct EntryLock {
    _lock: Flock<File>,
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(with_path(&root))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn function_dir(&self, function: &str) -> PathBuf {
        self.root.join(function)
    }

    pub fn entry_dir(&self, function: &str, key: &str) -> PathBuf {
        self.function_dir(function).join(key)
    }

    /// Whether the entry exists (complete: entries only ever appear whole).
    pub fn contains(&self, function: &str, key: &str) -> bool {
        self.entry_dir(function, key).is_dir()
    }

    /// Record that the entry was just used (for least-recently-used eviction). An entry removed
    /// meanwhile (by another process's `clear`) needs no record.
    pub fn touch(&self, function: &str, key: &str) -> Result<()> {
        let mark = self.entry_dir(function, key).join(ACCESS_MARK);
        let touched = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&mark)
            .and_then(|file| file.set_modified(SystemTime::now()));
        match touched {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(with_path(&mark)),
        }
    }

    /// Lock the entry, waiting up to `timeout` for another process computing it. None when the
    /// wait ran out: the caller may compute anyway (the first finished copy wins).
    pub fn lock(&self, function: &str, key: &str, timeout: Duration) -> Result<Option<EntryLock>> {
        let dir = self.function_dir(function);
        let path = dir.join(format!(".{key}.lock"));
        // A wait too long for an Instant is a wait without end.
        let deadline = Instant::now().checked_add(timeout);
        let mut pause = Duration::from_millis(1);
        loop {
            let file = in_function_dir(&dir, || {
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(with_path(&path))
            })?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Some(EntryLock { _lock: lock })),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        return Ok(None);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err((_, errno)) => return Err(with_path(&path)(io::Error::from(errno))),
            }
        }
    }

    /// A fresh temporary directory to write an entry into; pass it to [`Store::commit`].
    pub fn begin(&self, function: &str, key: &str) -> Result<PathBuf> {
        let dir = self.function_dir(function);
        let temporary = atomic::temporary_sibling(&dir.join(key), "tmp");
        in_function_dir(&dir, || {
            fs::create_dir(&temporary).map_err(with_path(&temporary))
        })?;
        Ok(temporary)
    }

    /// Move a written entry into place. Returns false if the entry already existed (the
    /// temporary directory is then removed and the existing entry kept), or if the temporary
    /// directory was removed meanwhile by another process's `clear` (nothing is cached then).
    pub fn commit(&self, function: &str, key: &str, temporary: &Path) -> Result<bool> {
        match File::create(temporary.join(ACCESS_MARK)) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            other => drop(other.map_err(with_path(temporary))?),
        }
        let target = self.entry_dir(function, key);
        match fs::rename(temporary, &target) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let _ = fs::remove_dir_all(temporary);
                Ok(false)
            }
            Err(error)
                if target.is_dir()
                    || matches!(error.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) =>
            {
                fs::remove_dir_all(temporary).map_err(with_path(temporary))?;
                Ok(false)
            }
            Err(error) => {
                let _ = fs::remove_dir_all(temporary);
                Err(with_path(&target)(error))
            }
        }
    }

    /// Remove a temporary entry whose writing failed (see [`Store::begin`]).
    pub fn abandon(&self, temporary: &Path) -> Result<()> {
        match fs::remove_dir_all(temporary) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(with_path(temporary)(error))
            }
            _ => Ok(()),
        }
    }

    /// The version of `function`'s code its entries were made with (see
    /// [`Store::set_code_version`]); None if none was recorded.
    pub fn code_version(&self, function: &str) -> Result<Option<String>> {
        let path = self.function_dir(function).join(CODE_VERSION);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(with_path(&path)(error)),
        }
    }

    /// Record the version of `function`'s code (its source): a later version with different code
    /// clears the entries first. Written atomically, in a folder another process may be clearing.
    pub fn set_code_version(&self, function: &str, code: &str) -> Result<()> {
        let dir = self.function_dir(function);
        let path = dir.join(CODE_VERSION);
        in_function_dir(&dir, || {
            atomic::write_file(&path, code.as_bytes()).map_err(with_path(&path))
        })
    }

    /// Remove one entry (if present).
    pub fn remove(&self, function: &str, key: &str) -> Result<()> {
        remove_atomically(&self.entry_dir(function, key))
    }

    /// Remove every entry of `function`, or of every function.
    pub fn clear(&self, function: Option<&str>) -> Result<()> {
        match function {
            Some(function) => remove_atomically(&self.function_dir(function)),
            None => {
                for child in read_dir_names(&self.root)? {
                    remove_atomically(&self.root.join(child))?;
                }
                // Left behind by a removal that another process's writes made fail.
                for leftover in hidden_names(&self.root, ".removed")? {
                    let _ = fs::remove_dir_all(self.root.join(leftover));
                }
                Ok(())
            }
        }
    }

    /// Every complete entry, with its size and last use.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for function in read_dir_names(&self.root)? {
            let function_dir = self.root.join(&function);
            if !function_dir.is_dir() {
                continue;
            }
            for key in read_dir_names(&function_dir)? {
                let dir = function_dir.join(&key);
                if !dir.is_dir() {
                    continue;
                }
                let last_access = fs::metadata(dir.join(ACCESS_MARK))
                    .or_else(|_| fs::metadata(&dir))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                entries.push(Entry {
                    function: function.clone(),
                    key,
                    size: dir_size(&dir),
                    last_access,
                });
            }
        }
        Ok(entries)
    }

    /// Evict least recently used entries until at most `bytes_limit` bytes and `items_limit`
    /// entries remain, and every entry unused for longer than `age_limit`. Returns the removed.
    pub fn reduce_size(
        &self,
        bytes_limit: Option<u64>,
        items_limit: Option<usize>,
        age_limit: Option<Duration>,
    ) -> Result<Vec<Entry>> {
        let mut entries = self.entries()?;
        entries.sort_by_key(|entry| entry.last_access);
        let now = SystemTime::now();
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let mut count = entries.len();
        let mut removed = Vec::new();
        for entry in entries {
            let too_old = age_limit.is_some_and(|limit| {
                now.duration_since(entry.last_access).unwrap_or_default() > limit
            });
            let too_big = bytes_limit.is_some_and(|limit| total > limit);
            let too_many = items_limit.is_some_and(|limit| count > limit);
            if !(too_old || too_big || too_many) {
                continue;
            }
            self.remove(&entry.function, &entry.key)?;
            total -= entry.size;
            count -= 1;
            removed.push(entry);
        }
        Ok(removed)
    }
}

/// Names of the visible children of `dir` (none if `dir` is gone).
fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    listed(dir, |name| !is_hidden(name))
}

/// Names of the hidden children of `dir` ending in `suffix`.
fn hidden_names(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    listed(dir, |name| is_hidden(name) && name.ends_with(suffix))
}

fn listed(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(error) => return Err(with_path(dir)(error)),
    };
    for child in listing {
        // A child removed while listing is simply not listed.
        let Ok(child) = child else { continue };
        let name = child.file_name().to_string_lossy().into_owned();
        if keep(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Run `create` (which makes something inside the function directory `dir`), creating `dir`
/// first, and again if another process's `clear` removes `dir` in between.
fn in_function_dir<T>(dir: &Path, mut create: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let retry = attempts < 10;
        match fs::create_dir_all(dir) {
            // create_dir_all saw the folder exist, then not (renamed away by a `clear`): again.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && retry => continue,
            made => made.map_err(with_path(dir))?,
        }
        match create() {
            Err(error) if error.kind() == io::ErrorKind::NotFound && retry => {}
            other => return other,
        }
    }
}

/// Name the path in an I/O error, so that an error from the store says where it happened.
fn with_path(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError {
        path: path.to_owned(),
        source,
    }
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(listing) = fs::read_dir(dir) else {
        return 0;
    };
    listing
        .flatten()
        .map(|child| match child.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&child.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Rename `path` to a hidden name, then delete it: it disappears at once for other processes.
fn remove_atomically(path: &Path) -> Result<()> {
    let doomed = atomic::temporary_sibling(path, "removed");
    match fs::rename(path, &doomed) {
        // Another process may still be writing a temporary entry that moved along: a failed
        // deletion leaves a hidden folder that the next `clear` sweeps, never an error.
        Ok(()) => {
            let _ = fs::remove_dir_all(&doomed);
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(with_path(path)(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static NEXT_STORE: AtomicU64 = AtomicU64::new(0);

    fn store() -> Store {
        let dir = std::env::temp_dir().join(format!(
            "ferrojob-store-{}-{}",
            std::process::id(),
            NEXT_STORE.fetch_add(1, Ordering::Relaxed)
        ));
        Store::open(dir).unwrap()
    }

    fn put(store: &Store, function: &str, key: &str, bytes: usize) -> bool {
        let temporary = store.begin(function, key).unwrap();
        fs::write(temporary.join("output"), vec![1u8; bytes]).unwrap();
        store.commit(function, key, &temporary).unwrap()
    }

    #[test]
    fn entries_appear_whole_and_the_first_commit_wins() {
        let store = store();
        assert!(!store.contains("f", "k"));
        let temporary = store.begin("f", "k").unwrap();
        fs::write(temporary.join("output"), b"first").unwrap();
        assert!(!store.contains("f", "k"));
        assert!(store.commit("f", "k", &temporary).unwrap());
        assert!(store.contains("f", "k"));
        assert!(!put(&store, "f", "k", 3));
        assert_eq!(
            fs::read(store.entry_dir("f", "k").join("output")).unwrap(),
            b"first"
        );
        let leftovers: Vec<_> = fs::read_dir(store.function_dir("f"))
            .unwrap()
            .flatten()
            .collect();
        assert!(leftovers
            .iter()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".tmp")));
        fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn locks_exclude_each_other() {
        let store = store();
        let first = store.lock("f", "k", Duration::ZERO).unwrap();
        assert!(first.is_some());
        assert!(store
            .lock("f", "k", Duration::from_millis(20))
            .unwrap()
            .is_none());
        drop(first);
        assert!(store.lock("f", "k", Duration::ZERO).unwrap().is_some());
        fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn eviction_removes_the_least_recently_used_first() {
        let store = store();
        for key in ["a", "b", "c"] {
            put(&store, "f", key, 1000);
            std::thread::sleep(Duration::from_millis(20));
        }
        store.touch("f", "a").unwrap();
        let removed = store.reduce_size(Some(2500), None, None).unwrap();
        assert_eq!(
            removed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        let removed = store.reduce_size(None, Some(1), None).unwrap();
        assert_eq!(
            removed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert!(store.contains("f", "a"));
        let removed = store.reduce_size(None, None, Some(Duration::ZERO)).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(store.entries().unwrap().is_empty());
        fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn code_versions_are_recorded_and_failed_entries_abandoned() {
        let store = store();
        assert_eq!(store.code_version("f").unwrap(), None);
        store.set_code_version("f", "def f(): pass").unwrap();
        assert_eq!(
            store.code_version("f").unwrap().as_deref(),
            Some("def f(): pass")
        );
        let temporary = store.begin("f", "k").unwrap();
        store.abandon(&temporary).unwrap();
        assert!(!temporary.exists());
        store.abandon(&temporary).unwrap(); // gone already: fine
        fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn clear_one_function_or_all() {
        let store = store();
        put(&store, "f", "1", 1);
        put(&store, "g", "1", 1);
        store.clear(Some("f")).unwrap();
        assert!(!store.contains("f", "1") && store.contains("g", "1"));
        store.clear(None).unwrap();
        assert!(store.entries().unwrap().is_empty());
        fs::remove_dir_all(store.root()).unwrap();
    }
}

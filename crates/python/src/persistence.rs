//! Bindings of the persistence engine: hashing, the dump container, the cache store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ferrojob_engine::codec::{self, Codec, Container};
use ferrojob_engine::hash::{Algorithm, Hasher as EngineHasher};
use ferrojob_engine::shm::{self, Access, Mapping};
use ferrojob_engine::store::{self, Store as EngineStore};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::{access_from_mode, bytes_of, contiguous, Backing, Buffer, HeapBytes};
use crate::durations;
use crate::errors::{damaged_file, invalid_parameter, EngineError};

/// A streaming hasher: "xxh3" (xxh3-128) or "blake3". Large buffers are hashed on every core.
#[pyclass(module = "ferrojob._core")]
pub struct Hasher {
    inner: EngineHasher,
}

#[pymethods]
impl Hasher {
    #[new]
    fn new(name: &str) -> PyResult<Self> {
        let algorithm = Algorithm::from_name(name).ok_or_else(|| {
            invalid_parameter(format!("unknown hash {name:?}: use 'xxh3' or 'blake3'"))
        })?;
        Ok(Self {
            inner: EngineHasher::new(algorithm),
        })
    }

    /// Feed bytes of the stream (the pickle of an object's structure).
    fn update(&mut self, py: Python<'_>, data: Bound<'_, PyAny>) -> PyResult<()> {
        self.feed(py, &data, false)
    }

    /// Feed a whole buffer (an array's data), with its length.
    fn update_buffer(&mut self, py: Python<'_>, buffer: Bound<'_, PyAny>) -> PyResult<()> {
        self.feed(py, &buffer, true)
    }

    fn hexdigest(&self) -> String {
        self.inner.hexdigest()
    }
}

impl Hasher {
    fn feed(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>, whole: bool) -> PyResult<()> {
        let held = contiguous(data)?;
        // SAFETY: `held` keeps the buffer exported until the end of this function.
        let bytes = unsafe { bytes_of(&held) };
        let inner = &mut self.inner;
        if bytes.len() < (64 << 10) {
            if whole {
                inner.update_buffer(bytes);
            } else {
                inner.update(bytes);
            }
            return Ok(());
        }
        py.detach(|| {
            if whole {
                inner.update_buffer(bytes);
            } else {
                inner.update(bytes);
            }
        });
        Ok(())
    }
}

fn parse_codec(name: &str, level: i32) -> PyResult<Codec> {
    Codec::from_name(name, level)
        .ok_or_else(|| invalid_parameter(format!("unknown codec {name:?} or level {level}")))
}

/// Write a dump: the pickle and its out-of-band buffers, compressed with `codec` ("raw", "zstd",
/// "lz4", "zlib", "gzip", "bz2", "lzma" or "xz") at `level` block by block; or, with `whole`,
/// a raw container compressed as a whole into a real stream of `codec` ("gzip", "zlib", "bz2",
/// "xz", "lzma": what a file name's ending asks for). Atomic: the file appears complete or not
/// at all. Returns its size.
#[pyfunction]
#[pyo3(signature = (path, pickle, buffers, codec="raw", level=3, whole=false))]
pub fn write_dump(
    py: Python<'_>,
    path: PathBuf,
    pickle: &[u8],
    buffers: Vec<Bound<'_, PyAny>>,
    codec: &str,
    level: i32,
    whole: bool,
) -> PyResult<u64> {
    let wrapper = if whole {
        let wrapper = u32::try_from(level)
            .ok()
            .and_then(|level| codec::Wrapper::from_name(codec, level))
            .ok_or_else(|| {
                invalid_parameter(format!("no whole-file codec {codec:?} at level {level}"))
            })?;
        Some(wrapper)
    } else {
        None
    };
    let codec = if whole {
        Codec::Raw
    } else {
        parse_codec(codec, level)?
    };
    let held = buffers
        .iter()
        .map(contiguous)
        .collect::<PyResult<Vec<_>>>()?;
    // SAFETY: `held` keeps every buffer exported until the end of this function.
    let slices: Vec<&[u8]> = held.iter().map(|b| unsafe { bytes_of(b) }).collect();
    let size = py
        .detach(|| match wrapper {
            Some(wrapper) => codec::write_wrapped(&path, pickle, &slices, wrapper),
            None => codec::write(&path, pickle, &slices, codec),
        })
        .map_err(EngineError::from)?;
    Ok(size)
}

/// What `read_dump` returns: the pickle, its buffers, whether they map the file, and each
/// buffer's offset in the file.
type ReadDump<'py> = (Bound<'py, PyBytes>, Vec<Py<Buffer>>, bool, Vec<u64>);

/// Read a dump: `(pickle bytes, buffers, whether they map the file, each buffer's offset in the
/// file)`. With `mmap_mode` ("r", "r+", "w+" or "c") and raw buffer sections, the buffers map
/// the file in place (nothing is read); otherwise every section is read, checked and
/// decompressed.
#[pyfunction]
#[pyo3(signature = (path, mmap_mode=None))]
pub fn read_dump<'py>(
    py: Python<'py>,
    path: PathBuf,
    mmap_mode: Option<&str>,
) -> PyResult<ReadDump<'py>> {
    let access = mmap_mode.map(access_from_mode).transpose()?;
    let mut container = py
        .detach(|| Container::open(&path))
        .map_err(EngineError::from)?;
    if access == Some(Access::ReadWrite) && container.is_mappable() {
        container
            .mark_modified_in_place()
            .map_err(EngineError::from)?;
    }
    // An opened container has exactly one pickle section, first, and its sections lie inside
    // the file (see `Container::open`); each buffer is checked against its memory all the same.
    let sections = container.sections().to_vec();
    let pickle = read_section(py, &container, 0)?;
    let mapped = access.is_some() && container.is_mappable();
    let mapping = match access {
        Some(access) if mapped => Some(Arc::new(map_file(py, &path, access)?)),
        _ => None,
    };
    let mut buffers = Vec::new();
    for (index, section) in sections.iter().enumerate().skip(1) {
        let buffer = match &mapping {
            Some(mapping) => Buffer::new(
                Backing::Mapped(Arc::clone(mapping)),
                section.offset,
                section.raw_len,
            ),
            None => {
                let memory = allocate_section(py, &container, index)?;
                Buffer::new(
                    Backing::Heap(Arc::new(HeapBytes::new(memory))),
                    0,
                    section.raw_len,
                )
            }
        };
        let buffer = buffer.ok_or_else(|| {
            damaged_file(format!(
                "{}: section {index} lies outside the file",
                path.display()
            ))
        })?;
        buffers.push(Py::new(py, buffer)?);
    }
    let pickle = PyBytes::new(py, &pickle);
    let offsets = sections
        .iter()
        .skip(1)
        .map(|section| section.offset)
        .collect();
    Ok((pickle, buffers, mapped, offsets))
}

fn read_section(py: Python<'_>, container: &Container, index: usize) -> PyResult<Vec<u8>> {
    let raw_len = container.sections()[index].raw_len;
    let len = usize::try_from(raw_len).map_err(|_| no_memory(raw_len))?;
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| no_memory(raw_len))?;
    out.resize(len, 0);
    py.detach(|| container.read_into(index, &mut out))
        .map_err(EngineError::from)?;
    Ok(out)
}

/// Memory for a section read into this process, the section read into it. A header cannot claim
/// more than its stored bytes justify (`Container::open`), but a real file can be larger than
/// memory: that is a `MemoryError`, never an abort.
fn allocate_section(
    py: Python<'_>,
    container: &Container,
    index: usize,
) -> PyResult<shm::AnonymousMemory> {
    let raw_len = container.sections()[index].raw_len;
    let len = usize::try_from(raw_len).map_err(|_| no_memory(raw_len))?;
    let mut memory = shm::anonymous(len).map_err(|_| no_memory(raw_len))?;
    py.detach(|| container.read_into(index, &mut memory[..len]))
        .map_err(EngineError::from)?;
    Ok(memory)
}

fn no_memory(len: u64) -> PyErr {
    EngineError::OutOfMemory {
        what: format!("a section of {len} bytes"),
    }
    .into()
}

fn map_file(py: Python<'_>, path: &PathBuf, access: Access) -> PyResult<Mapping> {
    py.detach(|| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(access == Access::ReadWrite)
            .open(path)?;
        Mapping::map(file.into(), access)
    })
    .map_err(|source| {
        EngineError::Io {
            context: format!("mapping {}", path.display()),
            source,
        }
        .into()
    })
}

/// How much of a stream the dump starting with `prefix` occupies: `(True, n)`: the dump is `n`
/// bytes long, `prefix` included; `(False, n)`: read until `prefix` has `n` bytes, then ask
/// again. `name` names the stream in errors (`NotADumpFileError`, `DamagedFileError`).
#[pyfunction]
pub fn dump_extent(prefix: &[u8], name: PathBuf) -> PyResult<(bool, u64)> {
    match codec::extent(prefix, &name).map_err(EngineError::from)? {
        codec::Extent::Needs(length) => Ok((false, length)),
        codec::Extent::Total(length) => Ok((true, length)),
    }
}

/// Whether the first bytes of a file look like a joblib dump.
#[pyfunction]
pub fn looks_like_joblib(start: &[u8]) -> bool {
    codec::looks_like_joblib(start)
}

/// The cache store of a `Memory` (see `ferrojob_engine::store`).
#[pyclass(module = "ferrojob._core", frozen)]
pub struct Store {
    inner: EngineStore,
}

/// A lock on one cache entry; released by `release()` or when garbage collected.
#[pyclass(module = "ferrojob._core")]
pub struct EntryLock {
    inner: Option<store::EntryLock>,
}

#[pymethods]
impl EntryLock {
    fn release(&mut self) {
        self.inner = None;
    }
}

#[pymethods]
impl Store {
    #[new]
    fn new(root: PathBuf) -> PyResult<Self> {
        Ok(Self {
            inner: EngineStore::open(root).map_err(store_error)?,
        })
    }

    fn entry_dir(&self, function: &str, key: &str) -> PathBuf {
        self.inner.entry_dir(function, key)
    }

    fn function_dir(&self, function: &str) -> PathBuf {
        self.inner.function_dir(function)
    }

    fn contains(&self, function: &str, key: &str) -> bool {
        self.inner.contains(function, key)
    }

    fn touch(&self, py: Python<'_>, function: &str, key: &str) -> PyResult<()> {
        py.detach(|| self.inner.touch(function, key))
            .map_err(store_error)
    }

    /// Lock an entry, waiting up to `timeout` seconds; None if the wait ran out.
    fn lock(
        &self,
        py: Python<'_>,
        function: &str,
        key: &str,
        timeout: f64,
    ) -> PyResult<Option<EntryLock>> {
        let timeout = durations::limit(Some(timeout), "timeout")?.unwrap_or(Duration::MAX);
        let lock = py
            .detach(|| self.inner.lock(function, key, timeout))
            .map_err(store_error)?;
        Ok(lock.map(|lock| EntryLock { inner: Some(lock) }))
    }

    fn begin(&self, py: Python<'_>, function: &str, key: &str) -> PyResult<PathBuf> {
        py.detach(|| self.inner.begin(function, key))
            .map_err(store_error)
    }

    fn commit(
        &self,
        py: Python<'_>,
        function: &str,
        key: &str,
        temporary: PathBuf,
    ) -> PyResult<bool> {
        py.detach(|| self.inner.commit(function, key, &temporary))
            .map_err(store_error)
    }

    /// Remove a temporary entry whose writing failed.
    fn abandon(&self, py: Python<'_>, temporary: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.abandon(&temporary))
            .map_err(store_error)
    }

    /// The recorded version of `function`'s code, or None.
    fn code_version(&self, py: Python<'_>, function: &str) -> PyResult<Option<String>> {
        py.detach(|| self.inner.code_version(function))
            .map_err(store_error)
    }

    /// Record the version of `function`'s code (atomically).
    fn set_code_version(&self, py: Python<'_>, function: &str, code: &str) -> PyResult<()> {
        py.detach(|| self.inner.set_code_version(function, code))
            .map_err(store_error)
    }

    fn remove(&self, py: Python<'_>, function: &str, key: &str) -> PyResult<()> {
        py.detach(|| self.inner.remove(function, key))
            .map_err(store_error)
    }

    #[pyo3(signature = (function=None))]
    fn clear(&self, py: Python<'_>, function: Option<&str>) -> PyResult<()> {
        py.detach(|| self.inner.clear(function))
            .map_err(store_error)
    }

    /// Every entry as `(function, key, size in bytes, last access as a UNIX time)`.
    fn entries(&self, py: Python<'_>) -> PyResult<Vec<(String, String, u64, f64)>> {
        let entries = py.detach(|| self.inner.entries()).map_err(store_error)?;
        Ok(entries.into_iter().map(entry_tuple).collect())
    }

    /// Evict least recently used entries; returns the removed ones (see `entries`).
    #[pyo3(signature = (bytes_limit=None, items_limit=None, age_limit=None))]
    fn reduce_size(
        &self,
        py: Python<'_>,
        bytes_limit: Option<u64>,
        items_limit: Option<usize>,
        age_limit: Option<f64>,
    ) -> PyResult<Vec<(String, String, u64, f64)>> {
        let age_limit = durations::limit(age_limit, "age_limit")?;
        let removed = py
            .detach(|| self.inner.reduce_size(bytes_limit, items_limit, age_limit))
            .map_err(store_error)?;
        Ok(removed.into_iter().map(entry_tuple).collect())
    }
}

fn store_error(error: store::StoreError) -> PyErr {
    EngineError::from(error).into()
}

fn entry_tuple(entry: store::Entry) -> (String, String, u64, f64) {
    let seconds = entry
        .last_access
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    (entry.function, entry.key, entry.size, seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_an_entry_lock_releases_the_gil() {
        Python::initialize();
        let root = std::env::temp_dir().join(format!("ferrojob-gil-{}", std::process::id()));
        let engine = EngineStore::open(root.clone()).unwrap();
        let held = engine.lock("f", "k", Duration::ZERO).unwrap().unwrap();
        // This thread can take the GIL only while the caller below has released it; only then
        // does it drop the lock the caller waits for. Were the GIL kept, the wait would run out
        // (None) instead of acquiring.
        Python::attach(|py| {
            // Started while this thread holds the GIL: it waits for it.
            let releaser = std::thread::spawn(move || {
                Python::attach(|_| drop(held));
            });
            let store = Store::new(root.clone()).unwrap();
            let lock = store.lock(py, "f", "k", 60.0).unwrap();
            assert!(
                lock.is_some(),
                "the lock was not released: the GIL was kept while waiting"
            );
            py.detach(|| releaser.join().unwrap());
        });
        std::fs::remove_dir_all(root).unwrap();
    }
}

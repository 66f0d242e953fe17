//! Files and folders that appear whole or not at all: each is written under a hidden temporary
//! name beside its final one, then renamed into place. The one naming rule for those temporary
//! siblings lives here (the dump writer, the cache store and its code-version file use it).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `.<name>.<pid>-<n>.<suffix>` beside `path`: hidden (stores skip names starting with "."),
/// unique across processes (pid) and within one (n).
pub fn temporary_sibling(path: &Path, suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}-{}.{suffix}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Write `bytes` to `path` atomically (readers see the old file or the new one, never half).
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = temporary_sibling(path, "tmp");
    let written = std::fs::File::create(&temporary)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_are_hidden_unique_and_beside_their_file() {
        let path = Path::new("/tmp/dir/output.fj");
        let (a, b) = (
            temporary_sibling(path, "tmp"),
            temporary_sibling(path, "tmp"),
        );
        assert_ne!(a, b);
        assert_eq!(a.parent(), path.parent());
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".output.fj.") && name.ends_with(".tmp"),
            "{name}"
        );
    }

    #[test]
    fn a_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("ferrojob-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("code.txt");
        write_file(&path, b"first").unwrap();
        write_file(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(write_file(&dir.join("missing").join("x"), b"").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

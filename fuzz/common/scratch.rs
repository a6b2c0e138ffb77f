//! A scratch directory per fuzzing process (on tmpfs when `/dev/shm` exists),
//! for parsers that read files.

use std::path::PathBuf;
use std::sync::OnceLock;

/// Writes `data` to `<scratch>/<name>` and returns the path.
pub fn file(name: &str, data: &[u8]) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::tempdir_in(shm).expect("scratch directory")
        } else {
            tempfile::tempdir().expect("scratch directory")
        }
    });
    let path = dir.path().join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, data).expect("scratch file");
    path
}

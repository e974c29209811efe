//! The directory the history's segment files live in, as a trait: the
//! real one (`FsDir`, with space reserved ahead so commits do not rewrite
//! block bitmaps), or a test's disk that forgets what was not synced.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where segment files live: the real directory, or a test's disk that
/// forgets what was not synced.
pub trait Dir: Send + Sync + 'static {
    /// File names in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// A whole file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Append to a file, creating it (and making its name durable) if new.
    fn append(&self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Make a file's appended data durable (fdatasync).
    fn sync(&self, name: &str) -> io::Result<()>;
    /// Cut a file to `len` bytes, durably.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Replace a file's whole content atomically and durably.
    fn replace(&self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Delete a file.
    fn remove(&self, name: &str) -> io::Result<()>;
}

/// Segment files in a directory of the file system.
pub struct FsDir {
    path: PathBuf,
    /// Space reserved for a new segment, so that appends do not allocate
    /// blocks one by one (each allocation also rewrites the file system's
    /// bitmaps: pages written per commit that an SD card pays for).
    reserve: u64,
    /// The file being appended to, kept open.
    open: Mutex<Option<(String, std::fs::File)>>,
}

impl FsDir {
    /// The directory, created if missing; `reserve`: bytes reserved for
    /// each new segment (its size stays what was written).
    pub fn new(path: &Path, reserve: u64) -> io::Result<FsDir> {
        std::fs::create_dir_all(path)?;
        Ok(FsDir {
            path: path.to_path_buf(),
            reserve,
            open: Mutex::new(None),
        })
    }

    fn sync_dir(&self) -> io::Result<()> {
        std::fs::File::open(&self.path)?.sync_all()
    }

    fn with_open<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut std::fs::File) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut slot = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|(n, _)| n != name) {
            let path = self.path.join(name);
            let existed = path.exists();
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            if !existed {
                if self.reserve > 0 {
                    // Not supported by every file system: then appends
                    // allocate as they go.
                    let keep = nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
                    let _ = nix::fcntl::fallocate(&file, keep, 0, self.reserve as i64);
                }
                // The new name must survive a power cut with the data.
                self.sync_dir()?;
            }
            *slot = Some((name.to_string(), file));
        }
        match slot.as_mut() {
            Some((_, file)) => f(file),
            None => Err(io::Error::other("no open segment")),
        }
    }

    fn forget(&self, name: &str) {
        let mut slot = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|(n, _)| n == name) {
            *slot = None;
        }
    }
}

impl Dir for FsDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path)? {
            if let Some(n) = e?.file_name().to_str() {
                out.push(n.to_string());
            }
        }
        Ok(out)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path.join(name))
    }

    fn append(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.with_open(name, |f| f.write_all(data))
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        self.with_open(name, |f| f.sync_data())
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.forget(name);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path.join(name))?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn replace(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.forget(name);
        let tmp = self.path.join(format!("{name}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path.join(name))?;
        self.sync_dir()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.forget(name);
        match std::fs::remove_file(self.path.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.sync_dir()
    }
}

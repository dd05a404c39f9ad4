//! Small shared helpers: atomic file writes.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// A file written under a temporary name and renamed into place by [`AtomicFile::commit`], so a crash
/// or an error never leaves a partial file under the final name. Dropped uncommitted, it is removed.
pub struct AtomicFile {
    path: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
        // Unique per process and per call, so concurrent writers of one path never share a temp file.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let temp = path.with_file_name(format!(
            ".{}.{}-{}.partial",
            name.to_string_lossy(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
        Ok(Self { path: path.to_path_buf(), temp, writer: Some(BufWriter::with_capacity(1 << 20, file)) })
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer is present until commit")
    }

    /// Flushes what was written so far and opens it for reading.
    pub fn read_back(&mut self) -> Result<File> {
        self.writer().flush().with_context(|| format!("writing {}", self.temp.display()))?;
        File::open(&self.temp).with_context(|| format!("cannot read {}", self.temp.display()))
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("commit runs once");
        let file = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", self.temp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", self.temp.display()))?;
        fs::rename(&self.temp, &self.path)
            .with_context(|| format!("renaming {} to {}", self.temp.display(), self.path.display()))?;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.writer().write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_files_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.writer().write_all(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&path, b"whole").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"whole");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

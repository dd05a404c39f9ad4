//! Token files as training reads them: flat little-endian uint16 (the nanoGPT layout), memory-mapped
//! rather than read into memory, so a corpus of many gigabytes costs resident memory only for the pages
//! a run touches, and every clone of a [`Tokens`] shares one mapping (an experiment's runs, say).

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

/// The chunk [`Tokens::open`] reads at a time to learn a file's largest id.
const SCAN_BYTES: usize = 1 << 20;

/// A sequence of uint16 tokens, usually a memory-mapped token file; it dereferences to `[u16]`, so
/// indices and offsets are `usize`, 64 bits wherever a file of more than 2^32 tokens can be mapped.
/// Cloning shares the storage.
#[derive(Clone)]
pub struct Tokens {
    storage: Arc<Storage>,
    /// The largest id (None when empty), so checking ids against a vocabulary costs nothing.
    max_id: Option<u16>,
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u16>),
}

impl Tokens {
    /// Maps the token file at `path`. Errors name the file: unreadable, or not a whole number of
    /// tokens. Opening reads the file once through a small buffer (not the mapping) to learn its largest
    /// id, so ids are checked up front while no more than that buffer of the file becomes resident.
    pub fn open(path: &Path) -> Result<Tokens> {
        let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
        if len % 2 != 0 {
            bail!("{} has {len} bytes, not a whole number of uint16 tokens (truncated?)", path.display());
        }
        if len == 0 || cfg!(target_endian = "big") {
            // Nothing to map; or ids must be byte-swapped, so the file is read, not mapped.
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
            let tokens: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
            return Ok(Tokens::from(tokens));
        }
        let max_id = largest_id(&mut file, len).with_context(|| format!("reading {}", path.display()))?;
        // SAFETY: the mapping is read-only and token files are never changed in place: ncalm writes
        // them under a temporary name and renames them into place, which leaves a mapped file intact.
        // A file truncated by someone else while mapped would fault, as it would for any reader.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        // Training reads short blocks at random offsets: reading ahead would only fill memory.
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        Ok(Tokens { storage: Arc::new(Storage::Mapped(map)), max_id })
    }

    /// The largest id, or None when there are no tokens.
    pub fn max_id(&self) -> Option<u16> {
        self.max_id
    }

    /// Where the first id at or above `bound` lies, if any: the vocabulary check. It reads the tokens
    /// only when their largest id shows that one is out of range.
    pub fn first_at_or_above(&self, bound: u32) -> Option<usize> {
        if self.max_id.is_none_or(|max| u32::from(max) < bound) {
            return None;
        }
        self.iter().position(|&t| u32::from(t) >= bound)
    }

    /// Whether `self` and `other` are views of one storage (one mapping), not copies.
    pub fn shares_storage_with(&self, other: &Tokens) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// Whether the tokens are a file's mapping (rather than a vector, or a file read on a big-endian host).
    pub fn is_mapped(&self) -> bool {
        matches!(*self.storage, Storage::Mapped(_))
    }
}

/// The largest id of the `len` bytes (an even number) of `file`, read in chunks of [`SCAN_BYTES`] on a
/// little-endian host.
fn largest_id(file: &mut File, len: u64) -> std::io::Result<Option<u16>> {
    let mut buffer = vec![0u16; SCAN_BYTES / 2];
    let (mut left, mut max) = (len / 2, None);
    while left > 0 {
        let chunk = &mut buffer[..(SCAN_BYTES / 2).min(usize::try_from(left).unwrap_or(usize::MAX))];
        file.read_exact(bytemuck::cast_slice_mut(chunk))?;
        max = max.max(chunk.iter().copied().max());
        left -= chunk.len() as u64;
    }
    Ok(max)
}

impl From<Vec<u16>> for Tokens {
    fn from(tokens: Vec<u16>) -> Self {
        let max_id = tokens.iter().copied().max();
        Tokens { storage: Arc::new(Storage::Owned(tokens)), max_id }
    }
}

impl Deref for Tokens {
    type Target = [u16];

    fn deref(&self) -> &[u16] {
        match &*self.storage {
            // A mapping starts on a page boundary and `open` checked its length is even, so the cast
            // cannot fail; on big-endian hosts files are read into `Owned` instead.
            Storage::Mapped(map) => bytemuck::cast_slice(map),
            Storage::Owned(tokens) => tokens,
        }
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_mapped() { "mapped" } else { "in memory" };
        write!(f, "Tokens({} tokens, {kind})", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_file_reads_as_written_and_clones_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        let ids: Vec<u16> = (0..3 * SCAN_BYTES as u32 / 4).map(|i| (i * 7 % 50_000) as u16).collect();
        let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
        std::fs::write(&path, &bytes).unwrap();
        let tokens = Tokens::open(&path).unwrap();
        assert!(tokens.is_mapped());
        assert_eq!(&tokens[..], &ids[..]);
        assert_eq!(tokens.max_id(), ids.iter().copied().max());
        assert_eq!(tokens.first_at_or_above(50_000), None);
        assert_eq!(tokens.first_at_or_above(49_999), ids.iter().position(|&t| t >= 49_999));
        let clone = tokens.clone();
        assert!(clone.shares_storage_with(&tokens));
        assert_eq!(clone.as_ptr(), tokens.as_ptr());
        assert!(!Tokens::from(ids).shares_storage_with(&tokens));
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.bin");
        std::fs::write(&path, [1u8, 2, 3]).unwrap();
        let err = format!("{:#}", Tokens::open(&path).unwrap_err());
        assert!(err.contains("odd.bin has 3 bytes, not a whole number"), "{err}");
        let err = format!("{:#}", Tokens::open(&dir.path().join("none.bin")).unwrap_err());
        assert!(err.contains("cannot read") && err.contains("none.bin"), "{err}");
        std::fs::write(&path, []).unwrap();
        let empty = Tokens::open(&path).unwrap();
        assert_eq!((empty.len(), empty.max_id(), empty.first_at_or_above(0)), (0, None, None));
    }
}

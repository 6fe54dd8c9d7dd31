//! Derived data kept beside the store (the face index snapshot), sealed with
//! the template key so that nothing biometric reaches the disk in the clear,
//! and replaced atomically so that a crash leaves the old file or the new one.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{StoreError, crypto::Sealer};

/// One sealed file in the data directory.
#[derive(Debug, Clone)]
pub struct SealedFile {
    sealer: Arc<Sealer>,
    path: PathBuf,
}

impl SealedFile {
    /// Where the file lives.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub(super) fn new(sealer: Arc<Sealer>, dir: &Path, name: &str) -> Self {
        Self { sealer, path: dir.join(name) }
    }

    fn aad(&self) -> Vec<u8> {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        format!("cotejo sealed file {name}").into_bytes()
    }

    /// Seals `plain` and replaces the file with it (write, fsync, rename, fsync).
    pub fn write(&self, plain: &[u8]) -> Result<(), StoreError> {
        self.write_via(plain, &self.path.with_extension("tmp"))
    }

    fn write_via(&self, plain: &[u8], tmp: &Path) -> Result<(), StoreError> {
        let sealed = self.sealer.seal(plain, &self.aad())?;
        super::replace_file_via(tmp, &self.path, &sealed, false).map_err(|source| self.io_error(source))
    }

    /// The plaintext, or `None` when there is no file. A file that does not
    /// open with this key (tampered, or another key) is an error.
    pub fn read(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(sealed) => Ok(Some(self.sealer.open_sealed(&sealed, &self.aad())?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::DataDir { path: self.path.display().to_string(), source }),
        }
    }
}

/// First bytes of a file sealed in chunks ([`SealedFile::writer`]).
const STREAM_MAGIC: &[u8; 8] = b"CTJSEAL2";
/// Plaintext bytes per sealed chunk.
const CHUNK: usize = 4 << 20;
/// A chunk on disk: `final flag (1 byte) || sealed length (u32 LE) || sealed
/// record` (which names its key, [`super::crypto`]); chunks written before key
/// ids have `nonce || ciphertext` and the smaller overhead.
const SEAL_OVERHEAD: usize = super::crypto::OVERHEAD;
const LEGACY_SEAL_OVERHEAD: usize = super::crypto::LEGACY_OVERHEAD;

impl SealedFile {
    /// Associated data of chunk `index`: the file's, its position and whether it is the last.
    fn chunk_aad(&self, index: u64, last: bool) -> Vec<u8> {
        let mut aad = self.aad();
        aad.extend_from_slice(b" chunk ");
        aad.extend_from_slice(&index.to_le_bytes());
        aad.push(u8::from(last));
        aad
    }

    /// A writer that seals what it is given in chunks of 4 MiB, for data too
    /// large to hold twice in memory. Nothing replaces the file until
    /// [`SealedWriter::finish`]; a writer dropped before it leaves the old file.
    pub fn writer(&self) -> Result<SealedWriter, StoreError> {
        self.writer_via(self.path.with_extension("tmp"))
    }

    /// As [`SealedFile::writer`], through a temporary file of another name
    /// (a key rotation beside a server that writes the same file).
    fn writer_via(&self, tmp: PathBuf) -> Result<SealedWriter, StoreError> {
        let f = std::fs::File::create(&tmp).map_err(|source| self.io_error(source))?;
        let mut out = std::io::BufWriter::with_capacity(CHUNK + 64, f);
        out.write_all(STREAM_MAGIC).map_err(|source| self.io_error(source))?;
        Ok(SealedWriter {
            file: self.clone(),
            tmp,
            out: Some(out),
            plain: Vec::with_capacity(CHUNK),
            chunks: 0,
            renamed: false,
        })
    }

    /// A reader of a file written by [`SealedFile::writer`], or `None` when
    /// there is no file. Each chunk is checked as it is read: a chunk that does
    /// not open with this key, a chunk out of place, a missing last chunk
    /// (truncation) or bytes after it fail the read with `InvalidData`.
    pub fn reader(&self) -> Result<Option<SealedReader>, StoreError> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.io_error(source)),
        };
        let mut input = std::io::BufReader::with_capacity(1 << 20, f);
        let mut magic = [0u8; 8];
        std::io::Read::read_exact(&mut input, &mut magic).map_err(|source| self.io_error(source))?;
        if &magic != STREAM_MAGIC {
            return Err(StoreError::Crypto);
        }
        SealedReader::new(self.clone(), input).map(Some).map_err(|source| self.io_error(source))
    }

    /// The key the file is sealed with: `None` when there is no file,
    /// `Some(None)` for a file sealed before key ids.
    pub(super) fn key(&self) -> Result<Option<Option<super::crypto::KeyId>>, StoreError> {
        file_key(&self.path)
    }

    /// Seals the file again under the active key (chunk by chunk for a
    /// chunked file); false when it was already or does not exist. A
    /// server writing the file meanwhile may win the rename: either file
    /// is a whole snapshot.
    pub(super) fn reseal(&self) -> Result<bool, StoreError> {
        let active = self.sealer.active();
        match self.key()? {
            None => return Ok(false),
            Some(Some(k)) if k == active => return Ok(false),
            Some(_) => {}
        }
        if let Ok(Some(mut reader)) = self.reader() {
            let mut writer = self.writer_via(self.path.with_extension("rotate.tmp"))?;
            std::io::copy(&mut reader, &mut writer).map_err(|source| self.io_error(source))?;
            writer.finish()?;
            return Ok(true);
        }
        let plain = self.read()?.ok_or_else(|| self.io_error(std::io::ErrorKind::NotFound.into()))?;
        self.write_via(&plain, &self.path.with_extension("rotate.tmp"))?;
        Ok(true)
    }

    /// Removes the file (nothing to do when there is none).
    pub fn remove(&self) -> Result<(), StoreError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io_error(e)),
            _ => Ok(()),
        }
    }

    fn io_error(&self, source: std::io::Error) -> StoreError {
        StoreError::DataDir { path: self.path.display().to_string(), source }
    }
}

/// The key the sealed file at `path` names: `None` when there is no file,
/// `Some(None)` for a file sealed before key ids. Reads the header only.
pub(super) fn file_key(path: &std::path::Path) -> Result<Option<Option<super::crypto::KeyId>>, StoreError> {
    use std::io::Read;
    let io = |source| StoreError::DataDir { path: path.display().to_string(), source };
    let mut head = vec![0u8; STREAM_MAGIC.len() + 5 + super::crypto::HEADER_LEN];
    let n = match std::fs::File::open(path) {
        Ok(mut f) => f.read(&mut head).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(source)),
    };
    let head = head.get(..n).unwrap_or_default();
    let record = match head.strip_prefix(STREAM_MAGIC.as_slice()) {
        Some(chunked) => chunked.get(5..).unwrap_or_default(),
        None => head,
    };
    Ok(Some(Sealer::key_of(record)))
}

/// Seals a file chunk by chunk ([`SealedFile::writer`]).
#[derive(Debug)]
pub struct SealedWriter {
    file: SealedFile,
    tmp: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    plain: Vec<u8>,
    chunks: u64,
    /// Set once the new file has replaced the old one.
    renamed: bool,
}

impl SealedWriter {
    fn emit(&mut self, last: bool) -> std::io::Result<()> {
        let sealed = self
            .file
            .sealer
            .seal(&self.plain, &self.file.chunk_aad(self.chunks, last))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.plain.clear();
        self.chunks += 1;
        let len = u32::try_from(sealed.len()).map_err(std::io::Error::other)?;
        let out = self.out.as_mut().ok_or_else(|| std::io::Error::other("sealed writer already finished"))?;
        out.write_all(&[u8::from(last)])?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&sealed)
    }

    /// Seals the rest as the last chunk and replaces the file with the new one
    /// (fsync, rename, fsync of the directory).
    pub fn finish(mut self) -> Result<(), StoreError> {
        let path = self.file.path.clone();
        let io = |source| StoreError::DataDir { path: path.display().to_string(), source };
        self.emit(true).map_err(io)?;
        let out = self.out.take().ok_or_else(|| io(std::io::Error::other("sealed writer already finished")))?;
        let f = out.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&self.tmp, &path).map_err(io)?;
        self.renamed = true;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

impl Write for SealedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.plain.len();
        let n = buf.len().min(room);
        self.plain.extend_from_slice(buf.get(..n).unwrap_or_default());
        if self.plain.len() == CHUNK {
            self.emit(false)?;
        }
        Ok(n)
    }

    /// Chunks are sealed when full or at [`SealedWriter::finish`]; this only
    /// passes on what is already sealed.
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.as_mut().map_or(Ok(()), std::io::Write::flush)
    }
}

impl Drop for SealedWriter {
    fn drop(&mut self) {
        if !self.renamed {
            drop(self.out.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Opens a file sealed in chunks as it is read ([`SealedFile::reader`]).
///
/// A thread of its own reads and opens the chunks, at most [`READ_AHEAD`]
/// ahead of the consumer, so that the file's reads and the decryption run
/// beside the parsing of what came before (a start-up reads several GB of
/// finger index snapshot this way). A chunk that fails ends the stream with
/// its error; dropping the reader stops the thread at its next chunk.
#[derive(Debug)]
pub struct SealedReader {
    /// Each chunk's plaintext in order, then `None` after the last one, or the error that ends the stream.
    chunks: std::sync::mpsc::Receiver<std::io::Result<Option<Vec<u8>>>>,
    plain: Vec<u8>,
    at: usize,
    /// Set after the last chunk (reads return 0) or an error (reads fail).
    ended: Option<Result<(), std::io::ErrorKind>>,
}

/// Opened chunks a [`SealedReader`]'s thread keeps ready (4 MiB each).
const READ_AHEAD: usize = 2;

impl SealedReader {
    fn new(file: SealedFile, input: std::io::BufReader<std::fs::File>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        let mut source = ChunkSource { file, input, chunks: 0, done: false };
        std::thread::Builder::new().name("sealed-read".into()).spawn(move || {
            loop {
                let next = source.next_chunk();
                let end = !matches!(next, Ok(Some(_)));
                // A failed send means the reader was dropped: stop reading.
                if tx.send(next).is_err() || end {
                    break;
                }
            }
        })?;
        Ok(Self { chunks: rx, plain: Vec::new(), at: 0, ended: None })
    }
}

/// The chunks of a sealed file, read and opened in order ([`SealedReader`]'s thread).
struct ChunkSource {
    file: SealedFile,
    input: std::io::BufReader<std::fs::File>,
    chunks: u64,
    done: bool,
}

impl ChunkSource {
    /// Reads and opens the next chunk; `None` after the last one.
    fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("sealed file: {what}"));
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        self.input.read_exact(&mut head).map_err(|_| bad("truncated (no last chunk)"))?;
        let [flag, l0, l1, l2, l3] = head;
        let last = match flag {
            0 => false,
            1 => true,
            _ => return Err(bad("bad chunk flag")),
        };
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        if !(LEGACY_SEAL_OVERHEAD..=CHUNK + SEAL_OVERHEAD).contains(&len) {
            return Err(bad("bad chunk length"));
        }
        let mut sealed = vec![0u8; len];
        self.input.read_exact(&mut sealed).map_err(|_| bad("truncated chunk"))?;
        let plain = self
            .file
            .sealer
            .open_sealed(&sealed, &self.file.chunk_aad(self.chunks, last))
            .map_err(|_| bad("a chunk does not open with this key (tampered, reordered or another key)"))?;
        self.chunks += 1;
        if last {
            self.done = true;
            let mut rest = [0u8; 1];
            if self.input.read(&mut rest)? != 0 {
                return Err(bad("bytes after the last chunk"));
            }
        }
        Ok(Some(plain))
    }
}

impl std::io::Read for SealedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            match self.ended {
                Some(Ok(())) => return Ok(0),
                Some(Err(kind)) => return Err(std::io::Error::new(kind, "sealed file: the read already failed")),
                None => {}
            }
            let next = self
                .chunks
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("sealed file: the reading thread stopped")));
            match next {
                Ok(Some(plain)) => {
                    self.plain = plain;
                    self.at = 0;
                }
                Ok(None) => self.ended = Some(Ok(())),
                Err(e) => {
                    self.ended = Some(Err(e.kind()));
                    return Err(e);
                }
            }
        }
        let available = self.plain.get(self.at..).unwrap_or_default();
        let n = buf.len().min(available.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), available.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::io::Read;

    use super::*;

    fn file(dir: &Path) -> SealedFile {
        SealedFile::new(Arc::new(Sealer::open(Path::new(""), "", dir).unwrap()), dir, "big.snap")
    }

    fn read_all(f: &SealedFile) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        f.reader().unwrap().unwrap().read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn chunks_read_back_and_any_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path());
        assert!(f.reader().unwrap().is_none());
        // Two full chunks and a part: written in odd-sized pieces.
        let plain: Vec<u8> = (0..2 * CHUNK + 12_345).map(|i| (i * 31 % 251) as u8).collect();
        let mut w = f.writer().unwrap();
        for piece in plain.chunks(1_000_003) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(read_all(&f).unwrap(), plain);
        let sealed = std::fs::read(&f.path).unwrap();
        assert!(!sealed.windows(64).any(|w| w == &plain[1_000..1_064]), "stored in the clear");

        let chunk = 5 + CHUNK + SEAL_OVERHEAD;
        let damaged: Vec<(&str, Vec<u8>)> = vec![
            ("truncated after a full chunk", sealed[..8 + chunk].to_vec()),
            ("truncated in the last chunk", sealed[..sealed.len() - 1].to_vec()),
            ("a flipped byte", {
                let mut s = sealed.clone();
                s[8 + chunk + 100] ^= 1;
                s
            }),
            ("two chunks swapped", {
                let mut s = sealed[..8].to_vec();
                s.extend_from_slice(&sealed[8 + chunk..8 + 2 * chunk]);
                s.extend_from_slice(&sealed[8..8 + chunk]);
                s.extend_from_slice(&sealed[8 + 2 * chunk..]);
                s
            }),
            ("the last flag cleared", {
                let mut s = sealed.clone();
                s[8 + 2 * chunk] = 0;
                s
            }),
            ("bytes appended", [sealed.clone(), vec![0]].concat()),
        ];
        for (what, bytes) in damaged {
            std::fs::write(&f.path, bytes).unwrap();
            let e = read_all(&f).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{what}: {e}");
            // A reader that failed keeps failing (it never looks like a clean end).
            let mut r = f.reader().unwrap().unwrap();
            assert!(r.read_to_end(&mut Vec::new()).is_err(), "{what}");
            assert!(r.read(&mut [0u8; 16]).is_err(), "{what}: read after the failure");
        }
        // A reader dropped after its first bytes, its thread waiting on a full channel: the drop
        // does not hang, and the file reads whole again.
        std::fs::write(&f.path, &sealed).unwrap();
        let mut r = f.reader().unwrap().unwrap();
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        assert_eq!(first, plain[..10]);
        drop(r);
        assert_eq!(read_all(&f).unwrap(), plain);
        // Another key opens nothing.
        std::fs::write(&f.path, &sealed).unwrap();
        let other = tempfile::tempdir().unwrap();
        let foreign = SealedFile {
            sealer: Arc::new(Sealer::open(Path::new(""), "", other.path()).unwrap()),
            path: f.path.clone(),
        };
        assert!(read_all(&foreign).is_err());
    }

    #[test]
    fn an_unfinished_writer_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path());
        let mut w = f.writer().unwrap();
        w.write_all(b"old").unwrap();
        w.finish().unwrap();
        let mut w = f.writer().unwrap();
        w.write_all(&vec![7u8; CHUNK + 10]).unwrap();
        drop(w);
        assert_eq!(read_all(&f).unwrap(), b"old");
        assert!(!f.path.with_extension("tmp").exists());
        // An empty file, sealed, is one empty last chunk.
        f.writer().unwrap().finish().unwrap();
        assert!(read_all(&f).unwrap().is_empty());
        f.remove().unwrap();
        f.remove().unwrap();
        assert!(f.reader().unwrap().is_none());
    }
}

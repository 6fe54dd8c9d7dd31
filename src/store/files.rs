//! Files beside the database: secret key files (mode 600, refused when
//! others can read them) and atomic replacement (write a temporary file,
//! sync, rename, sync the directory), so a crash leaves the old file or the
//! new one, never half of one.

use std::path::Path;

/// Reads a 32-byte key written as 64 hex digits; refuses a file that its
/// group or others can read (a key others can read is no secret).
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is readable by group or others (mode {mode:o}); run chmod 600 on it",
                path.display()
            ));
        }
    }
    let _ = meta;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let key = hex::decode(text.trim()).map_err(|e| format!("{}: not hex ({e})", path.display()))?;
    if key.len() != 32 {
        return Err(format!("{}: {} bytes, expected 32 (64 hex digits)", path.display(), key.len()));
    }
    Ok(key)
}

/// Writes a key as hex, readable by its owner only (for tools and tests);
/// never over an existing file.
pub fn write_secret_file(path: &Path, key: &[u8]) -> std::io::Result<()> {
    write_new(path, hex::encode(key).as_bytes(), true)
}

/// Creates `path` (it must not exist) with `bytes`, synced; readable by its
/// owner only when `private`.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the
/// new one: written to `<path>.tmp` (mode 600 when `private`), synced,
/// renamed over `path`, the directory synced.
pub fn replace_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    replace_file_via(Path::new(&tmp), path, bytes, private)
}

/// As [`replace_file`], through the temporary file `tmp` (beside `path`).
pub(crate) fn replace_file_via(tmp: &Path, path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let _ = std::fs::remove_file(tmp);
    write_new(tmp, bytes, private)?;
    std::fs::rename(tmp, path)?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => std::fs::File::open(".")?.sync_all(),
    }
}

//! The fingerprint side of cotejo: minutiae extraction (LEADER), templates
//! in the ISO/IEC 19794-2:2005 interchange format, MCC matching and the
//! in-memory finger index.

pub mod aspect;
pub mod index;
pub mod iso19794_2;
pub mod mcc;
pub mod minutiae;
pub mod pipeline;
pub mod rerank;
pub mod ridges;
pub mod shortlist;
pub mod template;

pub use pipeline::{FingerError, FingerExtraction, FingerPipeline, FingerSettings};

/// Runs `work` over `items` split into up to `threads` contiguous parts, each
/// on its own thread (one part: the calling thread), and concatenates the
/// results in order. `work` sees a whole part, so it can set up per-thread
/// state once (a matcher's scratch buffers). A panic in `work` is re-raised.
pub fn parallel_chunks<I: Sync, T: Send>(items: &[I], threads: usize, work: impl Fn(&[I]) -> Vec<T> + Sync) -> Vec<T> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return work(items);
    }
    let chunk = items.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.chunks(chunk).map(|part| scope.spawn(move || work(part))).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// Reads exactly `N` bytes (the snapshots' byte forms).
pub(crate) fn read_array<const N: usize>(input: &mut impl std::io::Read) -> std::io::Result<[u8; N]> {
    let mut a = [0u8; N];
    input.read_exact(&mut a)?;
    Ok(a)
}

/// Reads a little-endian u64.
pub(crate) fn read_u64(input: &mut impl std::io::Read) -> std::io::Result<u64> {
    read_array(input).map(u64::from_le_bytes)
}

//! The faiss indexes behind face search: the exact flat reference, IVF and
//! HNSW, searched through faiss' C API (its searches are read-only, so one
//! index serves concurrent readers) and serialized to memory for snapshots.
//! The faiss crate offers neither a shared-reference search for these
//! kinds nor in-memory serialization, hence the few FFI calls here.
#![allow(unsafe_code)]

use std::ptr;

use faiss::{
    Idx, Index, MetricType,
    index::{FromInnerPtr, IndexImpl},
    index_factory,
    selector::IdSelector,
};
use faiss_sys as sys;

use super::IndexError;

/// One faiss index whose labels are template ids.
pub(super) struct FaissIndex {
    inner: IndexImpl,
}

impl FaissIndex {
    /// A new index from a faiss factory string, inner-product metric.
    pub(super) fn new(dim: usize, description: &str) -> Result<Self, IndexError> {
        let d = u32::try_from(dim).map_err(|_| IndexError::Dimension { expected: u32::MAX as usize, got: dim })?;
        Ok(Self { inner: index_factory(d, description, MetricType::InnerProduct)? })
    }

    pub(super) fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<(), IndexError> {
        let idx: Vec<Idx> = ids.iter().map(|&i| Idx::new(i as u64)).collect();
        Ok(self.inner.add_with_ids(vectors, &idx)?)
    }

    /// Removes ids; returns how many were present.
    pub(super) fn remove(&mut self, ids: &[i64]) -> Result<usize, IndexError> {
        let idx: Vec<Idx> = ids.iter().map(|&i| Idx::new(i as u64)).collect();
        let sel = IdSelector::batch(&idx)?;
        Ok(self.inner.remove_ids(&sel)?)
    }

    /// The `k` best (template id, inner product) per query, best first.
    pub(super) fn search(&self, queries: &[f32], dim: usize, k: usize) -> Result<Vec<Vec<(i64, f32)>>, IndexError> {
        let nq = queries.len() / dim.max(1);
        if nq == 0 || k == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        let mut distances = vec![0f32; nq * k];
        let mut labels = vec![-1i64; nq * k];
        // SAFETY: the buffers hold nq*k values, the queries nq*dim; faiss
        // searches do not modify the index.
        let rc = unsafe {
            sys::faiss_Index_search(
                self.inner.inner_ptr(),
                nq as sys::idx_t,
                queries.as_ptr(),
                k as sys::idx_t,
                distances.as_mut_ptr(),
                labels.as_mut_ptr(),
            )
        };
        check(rc)?;
        Ok(labels
            .chunks_exact(k)
            .zip(distances.chunks_exact(k))
            .map(|(l, d)| l.iter().zip(d).filter(|(l, _)| **l >= 0).map(|(&l, &d)| (l, d)).collect())
            .collect())
    }

    /// faiss' own serialization of the index.
    pub(super) fn to_bytes(&self) -> Result<Vec<u8>, IndexError> {
        let mut buf: *mut libc::c_char = ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: open_memstream owns `buf` until fclose, which flushes and
        // sets buf/size; we copy it out and free it.
        unsafe {
            let f = libc::open_memstream(&mut buf, &mut size);
            if f.is_null() {
                return Err(IndexError::Snapshot("open_memstream failed".into()));
            }
            let rc = sys::faiss_write_index(self.inner.inner_ptr(), f.cast());
            libc::fclose(f);
            let out =
                if buf.is_null() { Vec::new() } else { std::slice::from_raw_parts(buf.cast::<u8>(), size).to_vec() };
            libc::free(buf.cast());
            check(rc)?;
            Ok(out)
        }
    }

    /// An index from [`FaissIndex::to_bytes`].
    pub(super) fn from_bytes(bytes: &[u8]) -> Result<Self, IndexError> {
        if bytes.is_empty() {
            return Err(IndexError::Snapshot("empty faiss section".into()));
        }
        // SAFETY: fmemopen reads `bytes` (read-only mode) until fclose; the
        // index faiss returns is owned by the IndexImpl.
        unsafe {
            let f = libc::fmemopen(bytes.as_ptr() as *mut libc::c_void, bytes.len(), c"rb".as_ptr());
            if f.is_null() {
                return Err(IndexError::Snapshot("fmemopen failed".into()));
            }
            let mut out: *mut sys::FaissIndex = ptr::null_mut();
            let rc = sys::faiss_read_index(f.cast(), 0, &mut out);
            libc::fclose(f);
            check(rc)?;
            if out.is_null() {
                return Err(IndexError::Snapshot("faiss read no index".into()));
            }
            Ok(Self { inner: IndexImpl::from_inner_ptr(out) })
        }
    }
}

/// faiss' last error message for a failed call.
fn check(rc: libc::c_int) -> Result<(), IndexError> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: faiss returns a thread-local C string or null.
    let msg = unsafe {
        let p = sys::faiss_get_last_error();
        if p.is_null() {
            format!("faiss error {rc}")
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(IndexError::Native(msg))
}

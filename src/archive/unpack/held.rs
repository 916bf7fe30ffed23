//! The memory that small files hold between the parser and the writers, accounted as it is
//! actually held and kept within a budget.
//!
//! A small file's bytes are, when possible, a slice of the decompressed chunk they lie in, which
//! keeps that whole chunk alive until a writer has written the file. Each chunk is counted once,
//! however many queued files slice it; a file whose chunk is not held yet and would not fit is
//! copied instead (its own length counted); and when even that does not fit, the parser waits for
//! the writers to free memory. A hostile archive that puts one tiny file in each large chunk
//! therefore costs copies, not chunks.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::archive::entries::{ChunkRef, Data};

/// What queued small files may hold at most.
pub const HELD_BUDGET: usize = 32 * 1024 * 1024;

#[derive(Default)]
struct State {
    bytes: usize,
    peak: usize,
    /// Chunks held, with their length and how many batches hold them.
    chunks: HashMap<u64, (usize, u32)>,
}

/// What one batch holds: the chunks it slices (each counted once per batch) and its copies.
#[derive(Default, Debug)]
pub struct Claim {
    chunks: Vec<u64>,
    copied: usize,
}

pub struct Held {
    state: Mutex<State>,
    freed: Condvar,
    budget: usize,
}

/// How [`Held::keep`] took a file's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    Sliced,
    Copied,
}

impl Held {
    pub fn new(budget: usize) -> Self {
        Held {
            state: Mutex::default(),
            freed: Condvar::new(),
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The most bytes held at once.
    pub fn peak(&self) -> usize {
        self.lock().peak
    }

    /// Takes `data` for the batch that `claim` describes, as a slice if its chunk is held
    /// already or fits in the budget, else as a copy if that fits. `None` when neither fits:
    /// the caller sends its batch (if any) and calls [`Held::wait`].
    pub fn keep(&self, data: &Data, claim: &mut Claim) -> Option<(Bytes, Kept)> {
        let mut st = self.lock();
        if let Some(ChunkRef { id, len }) = data.chunk {
            if claim.chunks.contains(&id) {
                return Some((data.bytes.clone(), Kept::Sliced));
            }
            let held = st.chunks.contains_key(&id);
            if held || st.bytes + len <= self.budget {
                if !held {
                    st.bytes += len;
                    st.peak = st.peak.max(st.bytes);
                }
                st.chunks.entry(id).or_insert((len, 0)).1 += 1;
                claim.chunks.push(id);
                return Some((data.bytes.clone(), Kept::Sliced));
            }
        }
        let len = data.bytes.len();
        // Nothing else held: a file goes through whatever the budget (a small file is 1 MiB at
        // most), or nothing ever would.
        if st.bytes + len <= self.budget || st.bytes == 0 {
            st.bytes += len;
            st.peak = st.peak.max(st.bytes);
            claim.copied += len;
            return Some((Bytes::copy_from_slice(&data.bytes), Kept::Copied));
        }
        None
    }

    /// Waits (a moment at most) for a writer to free memory.
    pub fn wait(&self) {
        let st = self.lock();
        let _ = self
            .freed
            .wait_timeout(st, Duration::from_millis(50))
            .unwrap_or_else(|e| e.into_inner());
    }

    /// A batch was written (or dropped): what it held is free.
    pub fn release(&self, claim: Claim) {
        let mut st = self.lock();
        st.bytes -= claim.copied;
        for id in claim.chunks {
            if let Some((len, batches)) = st.chunks.get_mut(&id) {
                *batches -= 1;
                if *batches == 0 {
                    let len = *len;
                    st.chunks.remove(&id);
                    st.bytes -= len;
                }
            }
        }
        drop(st);
        self.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(id: u64, chunk: usize, len: usize) -> Data {
        Data {
            bytes: Bytes::from(vec![7u8; len]),
            chunk: Some(ChunkRef { id, len: chunk }),
        }
    }

    #[test]
    fn a_chunk_is_counted_once_however_many_files_slice_it() {
        let held = Held::new(10_000);
        let (mut a, mut b) = (Claim::default(), Claim::default());
        for _ in 0..5 {
            assert_eq!(
                held.keep(&slice(1, 4000, 10), &mut a).unwrap().1,
                Kept::Sliced
            );
        }
        assert_eq!(
            held.keep(&slice(1, 4000, 10), &mut b).unwrap().1,
            Kept::Sliced
        );
        assert_eq!(held.bytes(), 4000);
        held.release(a);
        assert_eq!(held.bytes(), 4000, "b still holds the chunk");
        held.release(b);
        assert_eq!(held.bytes(), 0);
    }

    #[test]
    fn tiny_files_in_big_chunks_are_copied_once_the_budget_is_spent() {
        let held = Held::new(10_000);
        let mut claim = Claim::default();
        assert_eq!(
            held.keep(&slice(1, 8000, 10), &mut claim).unwrap().1,
            Kept::Sliced
        );
        // The next chunk would not fit: the file is copied, its own 10 bytes counted.
        let (bytes, kept) = held.keep(&slice(2, 8000, 10), &mut claim).unwrap();
        assert_eq!((bytes.len(), kept), (10, Kept::Copied));
        assert_eq!(held.bytes(), 8010);
        // Neither a chunk nor a copy fits: the caller waits.
        assert!(held.keep(&slice(3, 8000, 5000), &mut claim).is_none());
        held.release(claim);
        assert_eq!(held.bytes(), 0);
    }
}

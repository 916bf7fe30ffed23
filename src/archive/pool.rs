//! A few threads that each apply their own function to jobs from one queue; each job's result
//! comes back on a receiver of its own, so results can be taken in the order the jobs were given
//! whatever order they finish in. Used to compress and decompress archive frames on every core.
//!
//! Why not rayon or tokio's blocking pool: the frame coders need three things together. Each thread
//! keeps its own state (a zstd context with its buffers, made once by `make`, not per frame); the
//! queue is bounded, so a producer faster than the coders waits instead of buffering the archive;
//! and results come back in submission order while input still streams in. rayon's ordered parallel
//! iterators want their input collected first (`par_bridge` streams but loses the order), and it is
//! not otherwise a dependency; tokio's blocking pool is sized for blocking I/O (up to 512 threads),
//! queues without bound and keeps no per-thread state. What is here is a few dozen lines on std's
//! channels.

use std::io;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job<I, O> = (I, SyncSender<O>);

pub struct Pool<I, O> {
    /// `None` once dropped: the workers finish the jobs queued and stop.
    jobs: Option<SyncSender<Job<I, O>>>,
    workers: Vec<JoinHandle<()>>,
}

impl<I: Send + 'static, O: Send + 'static> Pool<I, O> {
    /// Starts `threads` workers (at least one), each running a function made by `make`. At most
    /// `threads` jobs wait in the queue beyond those being worked on.
    pub fn new<F>(
        threads: usize,
        name: &str,
        mut make: impl FnMut() -> io::Result<F>,
    ) -> io::Result<Self>
    where
        F: FnMut(I) -> O + Send + 'static,
    {
        let threads = threads.max(1);
        let (jobs, queue) = sync_channel::<Job<I, O>>(threads);
        let queue = Arc::new(Mutex::new(queue));
        let mut pool = Self {
            jobs: Some(jobs),
            workers: Vec::with_capacity(threads),
        };
        for _ in 0..threads {
            let mut work = make()?;
            let queue = queue.clone();
            let worker = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    loop {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((input, reply)) = next else {
                            return; // the pool is dropped and the queue is empty
                        };
                        // Nobody waiting for the result is not an error of the worker's.
                        let _ = reply.send(work(input));
                    }
                })?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Queues a job (waiting while the queue is full) and returns where its result will be.
    pub fn submit(&self, input: I) -> io::Result<Receiver<O>> {
        let (reply, result) = sync_channel(1);
        self.jobs
            .as_ref()
            .expect("the pool is not dropped")
            .send((input, reply))
            .map_err(|_| io::Error::other("a worker thread stopped"))?;
        Ok(result)
    }
}

impl<I, O> Drop for Pool<I, O> {
    fn drop(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_per_job_whatever_order_they_finish_in() {
        let mut made = 0;
        let pool = Pool::new(3, "test", || {
            made += 1;
            Ok(|n: u64| {
                // Earlier jobs take longer.
                std::thread::sleep(std::time::Duration::from_millis(20 - n * 4));
                n * n
            })
        })
        .unwrap();
        assert_eq!(made, 3);
        let results: Vec<_> = (0..5).map(|n| pool.submit(n).unwrap()).collect();
        let squares: Vec<u64> = results.into_iter().map(|r| r.recv().unwrap()).collect();
        assert_eq!(squares, [0, 1, 4, 9, 16]);
    }

    #[test]
    fn dropping_finishes_the_queued_jobs() {
        let done = Arc::new(Mutex::new(Vec::new()));
        let pool = Pool::new(1, "test", || {
            let done = done.clone();
            Ok(move |n: u32| done.lock().unwrap().push(n))
        })
        .unwrap();
        for n in 0..2 {
            drop(pool.submit(n).unwrap());
        }
        drop(pool);
        assert_eq!(*done.lock().unwrap(), [0, 1]);
    }
}

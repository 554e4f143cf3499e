//! A small bounded pool of worker threads, for runtimes whose only blocking work is a few requests at a
//! time (runtime-blocking: ureq HTTP requests and host name resolution for the WebSocket). Workers are
//! started on demand (at most [`MAX_WORKERS`]), reused, and end when the pool is dropped; a job reports
//! its result to the runtime's loop itself (e.g. a channel plus a `mio::Waker`).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

/// Most worker threads of one node (the core has a handful of requests in flight at most).
pub const MAX_WORKERS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    jobs: Sender<Job>,
    queue: Arc<Mutex<Receiver<Job>>>,
    /// Jobs submitted and not finished yet.
    unfinished: Arc<AtomicUsize>,
    workers: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    pub fn new() -> Self {
        let (jobs, queue) = mpsc::channel();
        Self {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            unfinished: Arc::new(AtomicUsize::new(0)),
            workers: 0,
        }
    }

    /// Run `job` on a worker, starting one if every worker is busy and the bound allows.
    pub fn run(&mut self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let unfinished = self.unfinished.fetch_add(1, Ordering::SeqCst) + 1;
        if unfinished > self.workers && self.workers < MAX_WORKERS {
            let (queue, count) = (self.queue.clone(), self.unfinished.clone());
            let spawned = thread::Builder::new()
                .name("pam-lite-worker".into())
                .spawn(move || worker(&queue, &count));
            match spawned {
                Ok(_) => self.workers += 1,
                Err(e) if self.workers == 0 => {
                    self.unfinished.fetch_sub(1, Ordering::SeqCst);
                    return Err(e);
                }
                Err(_) => {} // the busy workers will get to it
            }
        }
        self.jobs
            .send(Box::new(job))
            .map_err(|_| io::Error::other("the worker pool has stopped"))
    }
}

fn worker(queue: &Mutex<Receiver<Job>>, unfinished: &AtomicUsize) {
    loop {
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        job();
        unfinished.fetch_sub(1, Ordering::SeqCst);
    }
}

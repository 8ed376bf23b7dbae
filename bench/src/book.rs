//! Attribution of deliveries: every struct a peer receives is traced back to its writer and
//! clock by walking the whole v1 update, duplicates are suppressed, and the latency from the
//! edit being sent to its arrival is recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;
use yrs::updates::decoder::Decode;
use yrs::Update;

/// When each writer sent each clock.
#[derive(Debug)]
pub struct Book {
    start: Instant,
    writers: HashMap<u64, usize>,
    /// Per writer, per clock: nanoseconds after `start` when it was sent, plus one (0 = unsent).
    sent: Vec<Vec<AtomicU64>>,
    /// Latencies of every delivery, in microseconds.
    latencies: Mutex<Histogram<u64>>,
    /// Deliveries counted (first arrival of a clock at a peer).
    pub delivered: AtomicU64,
    /// Arrivals of clocks the peer already had.
    pub duplicates: AtomicU64,
    /// Woken whenever a receiver counts a new delivery.
    pub progress: Arc<tokio::sync::Notify>,
    /// Attributions of recently seen payloads: in a fan-out every peer receives the same
    /// bytes, and walking them once is enough.
    memo: Mutex<HashMap<Box<[u8]>, Attribution>>,
}

/// The structs an update carries: `(client, clocks)` ranges.
type Attribution = Arc<[(u64, std::ops::Range<u32>)]>;

/// Payloads remembered at once; the memo starts over when it is full.
const MEMO_MAX: usize = 8192;

impl Book {
    /// A book for writers with the given client ids, each sending at most `clocks_max` clocks.
    pub fn new(writer_ids: &[u32], clocks_max: usize) -> Arc<Book> {
        Arc::new(Book {
            start: Instant::now(),
            writers: writer_ids
                .iter()
                .enumerate()
                .map(|(i, &c)| (u64::from(c), i))
                .collect(),
            sent: writer_ids
                .iter()
                .map(|_| (0..clocks_max).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            latencies: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
                    Histogram::new(3).unwrap_or_else(|_| unreachable_histogram())
                }),
            ),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            progress: Arc::new(tokio::sync::Notify::new()),
            memo: Mutex::new(HashMap::new()),
        })
    }

    /// Records that `writer` (an index) sent `clock` now.
    pub fn sent(&self, writer: usize, clock: u32) {
        let nanos = self.start.elapsed().as_nanos() as u64 + 1;
        if let Some(slot) = self.sent.get(writer).and_then(|w| w.get(clock as usize)) {
            slot.store(nanos, Ordering::Release);
        }
    }

    /// A fresh receiver for a peer; `own` is the peer's writer index if it writes (servers
    /// that echo a writer's updates back to it must not count as deliveries).
    pub fn receiver(self: &Arc<Self>, own: Option<usize>) -> Receiver {
        Receiver {
            book: self.clone(),
            own,
            watermarks: (0..self.sent.len())
                .map(|_| Arc::new(AtomicU64::new(0)))
                .collect(),
            seen: vec![Vec::new(); self.sent.len()],
            local: Histogram::new_with_bounds(1, 600_000_000, 3)
                .unwrap_or_else(|_| unreachable_histogram()),
            pending_flush: 0,
        }
    }

    /// Every struct of a v1 update as `(client, clocks)` ranges, walking the whole update;
    /// `None` if it does not decode.
    fn attribute(&self, update: &[u8]) -> Option<Attribution> {
        if let Some(a) = self.memo.lock().ok()?.get(update) {
            return Some(a.clone());
        }
        let decoded = Update::decode_v1(update).ok()?;
        let ranges: Attribution = decoded
            .insertions(true)
            .iter()
            .flat_map(|(client, ranges)| {
                let client = client.get();
                ranges.iter().map(move |r| (client, r.clone()))
            })
            .collect();
        let mut memo = self.memo.lock().ok()?;
        if memo.len() >= MEMO_MAX {
            memo.clear();
        }
        memo.insert(update.into(), ranges.clone());
        Some(ranges)
    }

    /// The merged latency histogram (microseconds).
    pub fn latencies(&self) -> Histogram<u64> {
        self.latencies
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

fn unreachable_histogram() -> Histogram<u64> {
    // Histogram::new(3) only fails for sigfig > 5.
    Histogram::new(2).unwrap_or_else(|_| std::process::abort())
}

/// One peer's view: which clocks it has seen, and its latencies until merged into the book.
#[derive(Debug)]
pub struct Receiver {
    book: Arc<Book>,
    own: Option<usize>,
    /// Per writer: every clock below this has arrived here.
    pub watermarks: Vec<Arc<AtomicU64>>,
    seen: Vec<Vec<u64>>,
    local: Histogram<u64>,
    pending_flush: u32,
}

impl Receiver {
    /// Attributes every struct of a v1 update. Returns the number of new deliveries.
    pub fn receive(&mut self, update: &[u8]) -> u64 {
        let now = self.book.start.elapsed().as_nanos() as u64 + 1;
        let Some(ranges) = self.book.attribute(update) else {
            return 0;
        };
        let mut fresh = 0u64;
        let mut dup = 0u64;
        for (client, range) in ranges.iter() {
            let Some(&w) = self.book.writers.get(client) else {
                continue;
            };
            if Some(w) == self.own {
                continue;
            }
            for clock in range.clone() {
                let (word, bit) = (clock as usize / 64, clock % 64);
                let seen = &mut self.seen[w];
                if seen.len() <= word {
                    seen.resize(word + 1, 0);
                }
                if seen[word] & (1 << bit) != 0 {
                    dup += 1;
                    continue;
                }
                seen[word] |= 1 << bit;
                fresh += 1;
                let sent = self.book.sent[w]
                    .get(clock as usize)
                    .map_or(0, |s| s.load(Ordering::Acquire));
                if sent != 0 && now > sent {
                    let _ = self.local.record((now - sent) / 1_000);
                }
            }
            // Advance the contiguous watermark of this writer.
            let seen = &self.seen[w];
            let mut mark = self.watermarks[w].load(Ordering::Relaxed);
            while seen
                .get((mark / 64) as usize)
                .is_some_and(|word| word & (1 << (mark % 64)) != 0)
            {
                mark += 1;
            }
            self.watermarks[w].store(mark, Ordering::Release);
        }
        self.book.delivered.fetch_add(fresh, Ordering::Relaxed);
        self.book.duplicates.fetch_add(dup, Ordering::Relaxed);
        self.pending_flush += 1;
        if self.pending_flush >= 256 {
            self.flush();
        }
        fresh
    }

    /// Merges this peer's latencies into the book.
    pub fn flush(&mut self) {
        self.pending_flush = 0;
        if self.local.is_empty() {
            return;
        }
        if let Ok(mut h) = self.book.latencies.lock() {
            let _ = h.add(&self.local);
        }
        self.local.reset();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.flush();
    }
}

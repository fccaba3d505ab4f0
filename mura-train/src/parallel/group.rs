//! [`ThreadGroup`]: the all-reduce among ranks that are threads of one process. A rank that
//! fails calls [`ThreadGroup::abort`], and every rank waiting in (or later entering) a
//! collective gets an error naming it instead of waiting forever.

use std::sync::{Condvar, Mutex, MutexGuard};

use super::AllReduce;
use crate::TrainError;

/// Where a collective stands: ranks depositing their buffers, then reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Depositing,
    Reading,
}

#[derive(Debug)]
struct Round {
    slots: Vec<Vec<f32>>,
    phase: Phase,
    /// Ranks that deposited (while depositing) or read (while reading).
    count: usize,
    /// Why the group stopped, once a rank aborted it.
    aborted: Option<String>,
}

/// An all-reduce among `world` threads of this process, summing in rank order (the same bits
/// on every rank and every run).
#[derive(Debug)]
pub struct ThreadGroup {
    world: usize,
    round: Mutex<Round>,
    changed: Condvar,
}

impl ThreadGroup {
    pub fn new(world: usize) -> Result<Self, TrainError> {
        if world == 0 {
            return Err(TrainError::BadParameter {
                what: "ranks",
                expected: "at least 1",
                value: 0.0,
            });
        }
        Ok(Self {
            world,
            round: Mutex::new(Round {
                slots: vec![Vec::new(); world],
                phase: Phase::Depositing,
                count: 0,
                aborted: None,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        match self.round.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        }
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Round>) -> MutexGuard<'a, Round> {
        match self.changed.wait(guard) {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        }
    }

    /// Stops the group: every rank in or entering a collective gets an error naming `reason`.
    /// The first reason given is kept.
    pub fn abort(&self, reason: &str) {
        let mut r = self.lock();
        if r.aborted.is_none() {
            r.aborted = Some(reason.to_string());
        }
        drop(r);
        self.changed.notify_all();
    }

    /// Deposits `data` as rank `rank`'s, waits for every rank, reads the deposits with `read`,
    /// and counts itself out, so that no rank deposits its next buffer before all have read.
    fn exchange(
        &self,
        rank: usize,
        data: &mut [f32],
        read: impl FnOnce(&[Vec<f32>], &mut [f32]),
    ) -> Result<(), TrainError> {
        if rank >= self.world {
            return Err(TrainError::BadParameter {
                what: "rank",
                expected: "below the number of ranks",
                value: rank as f64,
            });
        }
        let stopped = |why: &str| TrainError::Parallel {
            reason: format!("rank {rank} stopped: {why}"),
        };
        let mut r = self.lock();
        while r.phase == Phase::Reading && r.aborted.is_none() {
            r = self.wait(r);
        }
        if let Some(why) = &r.aborted {
            return Err(stopped(why));
        }
        r.slots[rank] = data.to_vec();
        r.count += 1;
        if r.count == self.world {
            r.phase = Phase::Reading;
            r.count = 0;
            self.changed.notify_all();
        } else {
            while r.phase == Phase::Depositing && r.aborted.is_none() {
                r = self.wait(r);
            }
        }
        if let Some(why) = &r.aborted {
            return Err(stopped(why));
        }
        if r.slots.iter().any(|s| s.len() != data.len()) {
            let why = "the ranks' buffers differ in length (do the replicas differ?)";
            r.aborted = Some(why.into());
            drop(r);
            self.changed.notify_all();
            return Err(stopped(why));
        }
        read(&r.slots, data);
        r.count += 1;
        if r.count == self.world {
            r.phase = Phase::Depositing;
            r.count = 0;
            self.changed.notify_all();
        }
        Ok(())
    }
}

impl AllReduce for ThreadGroup {
    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, rank: usize, data: &mut [f32]) -> Result<(), TrainError> {
        self.exchange(rank, data, |slots, out| {
            out.fill(0.0);
            for s in slots {
                for (o, v) in out.iter_mut().zip(s) {
                    *o += v;
                }
            }
        })
    }

    fn broadcast(&self, rank: usize, root: usize, data: &mut [f32]) -> Result<(), TrainError> {
        let root = root.min(self.world - 1);
        self.exchange(rank, data, |slots, out| out.copy_from_slice(&slots[root]))
    }

    fn abort(&self, reason: &str) {
        ThreadGroup::abort(self, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_sum_in_rank_order_round_after_round() {
        let g = ThreadGroup::new(3).unwrap_or_else(|e| panic!("{e}"));
        let out: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|rank| {
                    let g = &g;
                    s.spawn(move || {
                        let mut last = Vec::new();
                        for round in 0..50 {
                            let mut d = vec![rank as f32 + round as f32, 1.0];
                            g.all_reduce_sum(rank, &mut d)
                                .unwrap_or_else(|e| panic!("{e}"));
                            assert_eq!(d, vec![3.0 + 3.0 * round as f32, 3.0]);
                            let mut b = vec![rank as f32];
                            g.broadcast(rank, 2, &mut b)
                                .unwrap_or_else(|e| panic!("{e}"));
                            last = b;
                        }
                        last
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        assert_eq!(out, vec![vec![2.0]; 3]);
    }

    #[test]
    fn an_aborting_rank_releases_the_waiting_ones_with_its_reason() {
        let g = ThreadGroup::new(3).unwrap_or_else(|e| panic!("{e}"));
        let errors: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|rank| {
                    let g = &g;
                    s.spawn(move || match g.all_reduce_sum(rank, &mut [1.0]) {
                        Ok(()) => String::new(),
                        Err(e) => e.to_string(),
                    })
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(20));
            g.abort("rank 2 failed: out of memory");
            hs.into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for e in &errors {
            assert!(e.contains("rank 2 failed: out of memory"), "{e}");
        }
        // A later collective fails at once.
        assert!(g.all_reduce_sum(0, &mut [1.0]).is_err());
    }

    #[test]
    fn buffers_of_different_lengths_are_an_error_on_every_rank() {
        let g = ThreadGroup::new(2).unwrap_or_else(|e| panic!("{e}"));
        let results: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|rank| {
                    let g = &g;
                    s.spawn(move || g.all_reduce_sum(rank, &mut vec![0.0; rank + 1]).is_err())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(false)).collect()
        });
        assert_eq!(results, vec![true, true]);
        assert!(ThreadGroup::new(0).is_err());
        assert!(g.all_reduce_sum(5, &mut [0.0]).is_err());
    }
}

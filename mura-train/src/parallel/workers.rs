//! Ranks 1.. of a data-parallel `fit`, each a thread holding its own replica (model, variables,
//! optimiser) on its own device, fed its shard of every batch by rank 0, which is the caller's
//! session: rank 0 alone validates and writes checkpoints, and before every training pass the
//! workers take its weights (BatchNorm statistics included), optimiser state, learning rate,
//! schedule and fine-tuning stage, so a resumed or re-staged run continues on equal replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use mura_models::Model;
use mura_models::checkpoint;

use super::{AllReduce, Rank, RankStep, ThreadGroup, parallel_step, shard};
use crate::TrainError;
use crate::config::RunConfig;
use crate::epoch::{Batch, step_seed};
use crate::optim::{Optim, Scheduled};
use crate::session::Session;

/// What a worker is asked to do.
enum Job {
    /// Become a copy of rank 0.
    Mirror(Box<Mirror>),
    /// Train on this shard of a global batch of `global` images.
    Step {
        shard: Batch,
        global: usize,
        seed: u64,
        at: (u64, u64),
    },
}

/// Rank 0's state, as the workers copy it.
struct Mirror {
    stage: u32,
    lr: f64,
    schedule: Option<Scheduled>,
    weights: HashMap<String, Tensor>,
    optim: HashMap<String, Tensor>,
}

type Reply = Result<Vec<f32>, TrainError>;

/// The dropout seed of rank `rank` at a step whose one-process seed is `seed` (rank 0 keeps it).
fn rank_seed(seed: u64, rank: usize) -> u64 {
    seed ^ (rank as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// The device of rank `rank` when rank 0 runs on `spec`: the CPU for every rank, or the GPUs
/// numbered on from rank 0's (`cuda:1` → ranks on `cuda:1`, `cuda:2`, …).
pub fn rank_device(spec: &str, rank: usize) -> Result<Device, TrainError> {
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let first = spec
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    crate::run::device(&format!("cuda:{}", first + rank))
}

/// Ranks 1..`world` of a data-parallel run, as threads.
pub struct Workers {
    group: Arc<dyn AllReduce>,
    /// Rank 0's place in the job.
    rank0: Rank,
    jobs: Vec<Sender<Job>>,
    replies: Vec<Receiver<Reply>>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("world", &self.world())
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// Starts ranks 1..`world` of `config` beside rank 0 on `dev`, each building its replica on
    /// its device; none when `world` is 1.
    pub fn start(
        config: &RunConfig,
        world: usize,
        dev: &Device,
    ) -> Result<Option<Self>, TrainError> {
        if world <= 1 {
            return Ok(None);
        }
        let mut devices = vec![dev.clone()];
        for rank in 1..world {
            devices.push(rank_device(&config.device, rank)?);
        }
        let group = group_for(&devices)?;
        let sync_batch_norm = config
            .train
            .data_parallel
            .is_some_and(|d| d.sync_batch_norm);
        let place = |rank| Rank {
            group: Arc::clone(&group),
            rank,
            sync_batch_norm,
        };
        let (mut jobs, mut replies, mut handles) = (vec![], vec![], vec![]);
        for (rank, dev) in devices.into_iter().enumerate().skip(1) {
            let (job_tx, job_rx) = channel();
            let (reply_tx, reply_rx) = channel();
            let (config, me) = (config.clone(), place(rank));
            let handle = std::thread::Builder::new()
                .name(format!("mura-rank-{rank}"))
                .spawn(move || serve(&config, &me, dev, &job_rx, &reply_tx))
                .map_err(|e| TrainError::Parallel {
                    reason: format!("cannot start rank {rank}: {e}"),
                })?;
            jobs.push(job_tx);
            replies.push(reply_rx);
            handles.push(handle);
        }
        Ok(Some(Self {
            rank0: place(0),
            group,
            jobs,
            replies,
            handles,
        }))
    }

    /// Ranks, rank 0 included.
    pub fn world(&self) -> usize {
        self.jobs.len() + 1
    }

    /// Makes every worker a copy of rank 0's `session`.
    pub(crate) fn mirror(&self, s: &Session) -> Result<(), TrainError> {
        for tx in &self.jobs {
            let m = Mirror {
                stage: s.state.stage,
                lr: s.optim.lr(),
                schedule: s.optim.schedule(),
                weights: checkpoint::varmap_tensors(&s.varmap),
                optim: s.optim.state_tensors()?,
            };
            self.send(tx, Job::Mirror(Box::new(m)))?;
        }
        self.collect().map(drop)
    }

    /// One data-parallel step of the global `batch`: rank 0 (`model`, `optim`) trains on its
    /// shard here while the workers train on theirs. The global mean loss and the whole batch's
    /// probabilities in its order.
    pub fn step(
        &self,
        model: &Model,
        optim: &mut Optim,
        batch: &Batch,
        (seed, epoch, step): (u64, u64, u64),
    ) -> Result<RankStep, TrainError> {
        let (world, n) = (self.world(), batch.indices.len());
        let one_process_seed = step_seed(seed, epoch, step);
        let at = (epoch + 1, step + 1);
        for (i, tx) in self.jobs.iter().enumerate() {
            let job = Job::Step {
                shard: shard(batch, i + 1, world)?,
                global: n,
                seed: rank_seed(one_process_seed, i + 1),
                at,
            };
            self.send(tx, job)?;
        }
        model.set_seed(one_process_seed);
        let mine = shard(batch, 0, world)?;
        let own = parallel_step(model, optim, &mine, n, &self.rank0, at);
        let failed = match (own, self.collect()) {
            (Ok(own), Ok(theirs)) => {
                let mut probabilities = own.probabilities;
                theirs.into_iter().for_each(|p| probabilities.extend(p));
                return Ok(RankStep {
                    loss: own.loss,
                    probabilities,
                });
            }
            (Err(e), Ok(_)) => return Err(e),
            (own, Err(theirs)) => (own, theirs),
        };
        // Rank 0's own error, unless it only says that another rank stopped the group.
        match failed {
            (Err(e), _) if !matches!(e, TrainError::Parallel { .. }) => Err(e),
            (_, e) => Err(e),
        }
    }

    fn send(&self, tx: &Sender<Job>, job: Job) -> Result<(), TrainError> {
        tx.send(job).map_err(|_| {
            self.group.abort("a rank has stopped");
            TrainError::Parallel {
                reason: "a rank has stopped (its error was reported before)".into(),
            }
        })
    }

    /// Every worker's reply to the last job, in rank order; the first error that is not only
    /// "another rank stopped", else the first error.
    fn collect(&self) -> Result<Vec<Vec<f32>>, TrainError> {
        let mut out = Vec::with_capacity(self.replies.len());
        let mut errors = Vec::new();
        for (i, rx) in self.replies.iter().enumerate() {
            match rx.recv() {
                Ok(Ok(p)) => out.push(p),
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(TrainError::Parallel {
                    reason: format!("rank {} ended without a reply", i + 1),
                }),
            }
        }
        if errors.is_empty() {
            return Ok(out);
        }
        let first_cause = errors
            .iter()
            .position(|e| !matches!(e, TrainError::Parallel { .. }))
            .unwrap_or(0);
        Err(errors.swap_remove(first_cause))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // A rank 0 that stopped mid-step (an error or a panic) leaves the others in a collective.
        self.group.abort("rank 0 has stopped");
        self.jobs.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The collectives of ranks on `devices`: NCCL when every rank is on a GPU and the build has
/// the `nccl` feature, else the ranks meet in host memory.
fn group_for(devices: &[Device]) -> Result<Arc<dyn AllReduce>, TrainError> {
    #[cfg(feature = "nccl")]
    if devices.iter().all(Device::is_cuda) {
        return Ok(Arc::new(super::nccl::NcclGroup::new(devices)?));
    }
    Ok(Arc::new(ThreadGroup::new(devices.len())?))
}

/// Aborts the group if the worker's thread unwinds, so rank 0 is not left waiting.
struct AbortOnPanic<'a>(&'a dyn AllReduce, usize);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abort(&format!("rank {} panicked", self.1));
        }
    }
}

/// A worker's life: build the replica, then answer jobs until rank 0 hangs up or a job fails.
fn serve(
    config: &RunConfig,
    me: &Rank,
    dev: Device,
    jobs: &Receiver<Job>,
    replies: &Sender<Reply>,
) {
    let (rank, group) = (me.rank, me.group.as_ref());
    let _guard = AbortOnPanic(group, rank);
    let mut s = match Session::new(config, &dev) {
        Ok(s) => s,
        Err(e) => {
            group.abort(&format!("rank {rank}: {e}"));
            // Answer the first job with the cause, then stop.
            if jobs.recv().is_ok() {
                let _ = replies.send(Err(e));
            }
            return;
        }
    };
    for job in jobs {
        let reply = match job {
            Job::Mirror(m) => mirror(&mut s, config, &dev, &m).map(|()| Vec::new()),
            Job::Step {
                shard,
                global,
                seed,
                at,
            } => on_device(&shard, &dev).and_then(|b| {
                s.model.set_seed(seed);
                let out = parallel_step(&s.model, &mut s.optim, &b, global, me, at)?;
                Ok(out.probabilities)
            }),
        };
        let failed = reply.is_err();
        if let Err(e) = &reply {
            group.abort(&format!("rank {rank}: {e}"));
        }
        if replies.send(reply).is_err() || failed {
            return;
        }
    }
}

/// A worker's replica made a copy of rank 0's.
fn mirror(s: &mut Session, config: &RunConfig, dev: &Device, m: &Mirror) -> Result<(), TrainError> {
    if s.state.stage != m.stage {
        s.set_stage(config, m.stage)?;
    }
    let own = |t: &Tensor| -> Result<Tensor, TrainError> { Ok(t.to_device(dev)?.copy()?) };
    let vars: Vec<(String, candle_core::Var)> = {
        let data = s.varmap.data();
        let guard = match data.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    };
    for (name, var) in vars {
        let t = m.weights.get(&name).ok_or_else(|| TrainError::Parallel {
            reason: format!("rank 0 has no tensor `{name}`"),
        })?;
        var.set(&own(t)?.to_dtype(var.dtype())?)?;
    }
    let state = m
        .optim
        .iter()
        .map(|(k, t)| Ok((k.clone(), own(t)?)))
        .collect::<Result<HashMap<_, _>, TrainError>>()?;
    s.optim.load_state(&state)?;
    s.optim.set_lr(m.lr);
    s.optim.set_schedule(m.schedule);
    Ok(())
}

/// `b` moved to `dev` (a no-op on the device it is on).
fn on_device(b: &Batch, dev: &Device) -> Result<Batch, TrainError> {
    Ok(Batch {
        x: b.x.to_device(dev)?,
        y: b.y.to_device(dev)?,
        w: b.w.to_device(dev)?,
        indices: b.indices.clone(),
        features: b.features,
    })
}

#[cfg(test)]
mod tests {
    use mura_models::{Arch, CnnConfig, ModelConfig};

    use super::*;

    fn small(filters: usize) -> RunConfig {
        let mut c = RunConfig::defaults(Arch::CustomCnn);
        c.model = ModelConfig {
            input_size: Some(16),
            cnn: Some(CnnConfig {
                blocks: 2,
                filters,
                input_size: 16,
                dense: vec![],
                ..CnnConfig::custom_cnn()
            }),
            ..ModelConfig::new(Arch::CustomCnn)
        };
        c
    }

    fn batch(n: usize) -> Batch {
        let dev = Device::Cpu;
        let x: Vec<f32> = (0..n * 3 * 16 * 16)
            .map(|i| (i as f32 * 0.01).sin())
            .collect();
        Batch {
            x: Tensor::from_vec(x, (n, 3, 16, 16), &dev).unwrap_or_else(|e| panic!("{e}")),
            y: Tensor::zeros((n, 1), candle_core::DType::F32, &dev)
                .unwrap_or_else(|e| panic!("{e}")),
            w: Tensor::ones((n, 1), candle_core::DType::F32, &dev)
                .unwrap_or_else(|e| panic!("{e}")),
            indices: (0..n).collect(),
            features: false,
        }
    }

    #[test]
    fn workers_step_with_rank_zero_and_return_the_batch_in_order() {
        let c = small(4);
        let w = Workers::start(&c, 3, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("3 ranks start workers"));
        assert_eq!(w.world(), 3);
        let mut s = Session::new(&c, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        w.mirror(&s).unwrap_or_else(|e| panic!("{e}"));
        let out = w
            .step(&s.model, &mut s.optim, &batch(5), (1, 0, 0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.probabilities.len(), 5);
        assert!(out.loss.is_finite());
        assert!(
            Workers::start(&c, 1, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
    }

    #[test]
    fn a_rank_that_fails_ends_the_run_with_its_error_instead_of_a_hang() {
        // The workers build 4-filter replicas; rank 0's has 8: mirroring fails on rank 1.
        let w = Workers::start(&small(4), 2, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("2 ranks start a worker"));
        let mut s = Session::new(&small(8), &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let err = w
            .mirror(&s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("shape"), "{err}");
        // Rank 1 has stopped: the next step is refused at once.
        let err = w.step(&s.model, &mut s.optim, &batch(4), (1, 0, 0)).err();
        let err = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("data-parallel training"), "{err}");
    }

    #[test]
    fn ranks_take_the_devices_after_rank_zeros() {
        assert!(matches!(rank_device("cpu", 3), Ok(Device::Cpu)));
        if !cfg!(feature = "cuda") {
            let err = rank_device("cuda:1", 2).err().map(|e| e.to_string());
            assert!(err.unwrap_or_default().contains("cuda:3"));
        }
    }
}

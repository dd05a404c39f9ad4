//! Data-parallel training across processes: the group of ranks a run trains with.
//!
//! One process is a group of one, and costs nothing. Built with the `mpi` feature and started by an MPI
//! launcher (`mpirun`, `srun`), every process joins the launcher's world: each rank trains on its own
//! GPU and its share of every step's sequences, and the ranks sum their gradients through host memory
//! once per optimiser step (`train::allreduce`), so any wgpu backend takes part.
//!
//! Failure is loud, never a hang. Where every rank reaches the same point (the end of set-up, a
//! logging point, a checkpoint), [`ProcessGroup::settle`] lets all of them learn that one failed; the
//! failing rank prints its error and the others end quietly. Anywhere else a rank that fails ends the
//! whole job ([`ProcessGroup::finish`]) rather than leave the others waiting in a collective forever.

use std::cell::Cell;
use std::rc::Rc;

use anyhow::{bail, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The error of a rank whose group failed elsewhere: another rank has printed the reason, so this one
/// ends with a failure status and says nothing.
#[derive(Debug)]
pub struct FailedElsewhere;

impl std::fmt::Display for FailedElsewhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "another rank failed and reported why")
    }
}

impl std::error::Error for FailedElsewhere {}

/// The ranks of a run. Cloning shares the group; its handles stay on the thread that made them.
#[derive(Clone)]
pub struct ProcessGroup {
    inner: Rc<Inner>,
}

struct Inner {
    kind: Kind,
    /// Set once the ranks have agreed that one of them failed, so the failure ends them in step.
    agreed_failure: Cell<bool>,
}

enum Kind {
    Single,
    #[cfg(feature = "mpi")]
    Mpi(mpi_group::MpiGroup),
}

/// Environment variables by which launchers tell a process how many the job has: OpenMPI's mpirun,
/// PMI (MPICH's hydra, srun --mpi=pmi2), MVAPICH, and Slurm's srun.
const LAUNCHER_SIZES: [&str; 4] =
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"];

/// Variables that only an MPI launcher sets (srun --mpi=pmix tells the size only through MPI itself).
#[cfg(feature = "mpi")]
const LAUNCHER_RANKS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"];

/// The number of processes a launcher says the job has, if one launched this process.
fn launched_size() -> Option<usize> {
    LAUNCHER_SIZES.iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

impl ProcessGroup {
    /// A group of one: this process trains alone.
    pub fn single() -> Self {
        Self::of(Kind::Single)
    }

    fn of(kind: Kind) -> Self {
        Self { inner: Rc::new(Inner { kind, agreed_failure: Cell::new(false) }) }
    }

    /// The group an MPI launcher started this process in: every process of the job when built with
    /// the `mpi` feature, a group of one when not launched by one. Call it once per process.
    pub fn launched() -> Result<Self> {
        let size = launched_size().unwrap_or(1);
        #[cfg(feature = "mpi")]
        if size > 1 || LAUNCHER_RANKS.iter().any(|v| std::env::var_os(v).is_some()) {
            let group = mpi_group::MpiGroup::initialize()?;
            // srun without an MPI plugin starts tasks that each find a world of their own.
            if group.size < size {
                bail!(
                    "the launcher started {size} processes but MPI joined only {}: launch with mpirun, or \
                     with srun --mpi=pmix (or pmi2, as the cluster's MPI was built)",
                    group.size
                );
            }
            return Ok(Self::of(Kind::Mpi(group)));
        }
        if size > 1 {
            bail!(
                "started as one of {size} MPI processes, but this ncalm was built without MPI: every process \
                 would train alone into the same files. Rebuild with `cargo build --release --features mpi`."
            );
        }
        Ok(Self::single())
    }

    /// This process's rank, 0-based.
    pub fn rank(&self) -> usize {
        match &self.inner.kind {
            Kind::Single => 0,
            #[cfg(feature = "mpi")]
            Kind::Mpi(g) => g.rank,
        }
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        match &self.inner.kind {
            Kind::Single => 1,
            #[cfg(feature = "mpi")]
            Kind::Mpi(g) => g.size,
        }
    }

    /// This process's rank among those on its machine: which of the machine's adapters it opens.
    pub fn local_rank(&self) -> usize {
        match &self.inner.kind {
            Kind::Single => 0,
            #[cfg(feature = "mpi")]
            Kind::Mpi(g) => g.local_rank,
        }
    }

    /// Rank 0: the one that logs, evaluates and writes files.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    pub fn is_distributed(&self) -> bool {
        self.size() > 1
    }

    /// "rank R of N: " where there are several, for messages a rank prints about itself.
    pub fn prefix(&self) -> String {
        if self.is_distributed() {
            format!("rank {} of {}: ", self.rank(), self.size())
        } else {
            String::new()
        }
    }

    /// Sums `send` over the ranks into `recv` (the same length) on every rank.
    pub fn sum_f32(&self, send: &[f32], recv: &mut [f32]) {
        assert_eq!(send.len(), recv.len(), "an all-reduce sends and receives as many values");
        match &self.inner.kind {
            Kind::Single => recv.copy_from_slice(send),
            #[cfg(feature = "mpi")]
            Kind::Mpi(g) => g.sum_f32(send, recv),
        }
    }

    /// Sums `values` over the ranks, in place, on every rank.
    pub fn sum_f64(&self, values: &mut [f64]) {
        match &self.inner.kind {
            Kind::Single => {
                let _ = values;
            }
            #[cfg(feature = "mpi")]
            Kind::Mpi(g) => g.sum_f64(values),
        }
    }

    /// Whether `flag` holds on any rank (e.g. an interrupt that reached only some of them).
    pub fn any(&self, flag: bool) -> bool {
        self.max(u64::from(flag)) == 1
    }

    /// The smallest of `value` over the ranks.
    pub fn min(&self, value: u64) -> u64 {
        match &self.inner.kind {
            Kind::Single => value,
            #[cfg(feature = "mpi")]
            Kind::Mpi(g) => g.reduce(value, mpi::collective::SystemOperation::min()),
        }
    }

    /// The largest of `value` over the ranks.
    pub fn max(&self, value: u64) -> u64 {
        match &self.inner.kind {
            Kind::Single => value,
            #[cfg(feature = "mpi")]
            Kind::Mpi(g) => g.reduce(value, mpi::collective::SystemOperation::max()),
        }
    }

    /// A point every rank reaches: if `result` failed on any rank, every rank fails. The lowest
    /// failing rank returns its own error (to print), the others [`FailedElsewhere`].
    pub fn settle<T>(&self, result: Result<T>) -> Result<T> {
        if !self.is_distributed() {
            return result;
        }
        let mine = if result.is_err() { self.rank() as u64 } else { u64::MAX };
        let first_failed = self.min(mine);
        if first_failed == u64::MAX {
            return result;
        }
        self.inner.agreed_failure.set(true);
        match result {
            Err(e) if first_failed == self.rank() as u64 => Err(e.context(format!("rank {first_failed}"))),
            _ => Err(FailedElsewhere.into()),
        }
    }

    /// `work` done by rank 0 alone (reading or writing files), its result handed to every rank.
    /// Every rank must call it at the same point; a failure there fails every rank.
    pub fn on_root<T: Serialize + DeserializeOwned>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.is_distributed() {
            return work();
        }
        let outcome = if self.is_root() { Some(work()) } else { None };
        let sent = match &outcome {
            Some(Ok(value)) => serde_json::to_vec(&Ok::<&T, ()>(value))?,
            _ => serde_json::to_vec(&Err::<(), ()>(()))?,
        };
        let received = self.broadcast_bytes(sent);
        match outcome {
            Some(Err(e)) => {
                self.inner.agreed_failure.set(true);
                Err(e)
            }
            Some(Ok(value)) => Ok(value),
            None => match serde_json::from_slice::<std::result::Result<T, ()>>(&received)? {
                Ok(value) => Ok(value),
                Err(()) => {
                    self.inner.agreed_failure.set(true);
                    Err(FailedElsewhere.into())
                }
            },
        }
    }

    /// Rank 0's `bytes`, on every rank.
    fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        match &self.inner.kind {
            Kind::Single => bytes,
            #[cfg(feature = "mpi")]
            Kind::Mpi(g) => g.broadcast_bytes(bytes),
        }
    }

    /// The error a command ends with. A failure the ranks agreed on ends them all in step; any other
    /// failure of one rank among several may leave the rest waiting in a collective, so it is printed
    /// here and the whole job aborted.
    pub fn finish<T>(&self, result: Result<T>) -> Result<T> {
        match result {
            Err(e) if self.is_distributed() && !self.inner.agreed_failure.get() => {
                if e.is::<FailedElsewhere>() {
                    return Err(e);
                }
                eprintln!("error: {}{e:#}", self.prefix());
                self.abort()
            }
            other => other,
        }
    }

    /// Ends every rank of the job at once.
    fn abort(&self) -> ! {
        match &self.inner.kind {
            Kind::Single => std::process::exit(1),
            #[cfg(feature = "mpi")]
            Kind::Mpi(g) => g.abort(1),
        }
    }
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup(rank {} of {})", self.rank(), self.size())
    }
}

#[cfg(feature = "mpi")]
mod mpi_group {
    use anyhow::{anyhow, Result};
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    /// The launcher's world, and the universe whose end finalises MPI.
    pub(super) struct MpiGroup {
        world: SimpleCommunicator,
        _universe: Universe,
        pub(super) rank: usize,
        pub(super) size: usize,
        pub(super) local_rank: usize,
    }

    impl MpiGroup {
        pub(super) fn initialize() -> Result<Self> {
            let universe = mpi::initialize().ok_or_else(|| anyhow!("MPI was initialised twice"))?;
            let world = universe.world();
            // The ranks that share this machine (its memory), in world order.
            let local_rank = world.split_shared(world.rank()).rank() as usize;
            Ok(Self {
                rank: world.rank() as usize,
                size: world.size() as usize,
                local_rank,
                world,
                _universe: universe,
            })
        }

        pub(super) fn sum_f32(&self, send: &[f32], recv: &mut [f32]) {
            self.world.all_reduce_into(send, recv, SystemOperation::sum());
        }

        pub(super) fn sum_f64(&self, values: &mut [f64]) {
            let send = values.to_vec();
            self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        }

        pub(super) fn reduce(&self, value: u64, op: SystemOperation) -> u64 {
            let mut out = 0u64;
            self.world.all_reduce_into(&value, &mut out, op);
            out
        }

        pub(super) fn broadcast_bytes(&self, mut bytes: Vec<u8>) -> Vec<u8> {
            let root = self.world.process_at_rank(0);
            let mut len = bytes.len() as u64;
            root.broadcast_into(&mut len);
            bytes.resize(len as usize, 0);
            root.broadcast_into(&mut bytes[..]);
            bytes
        }

        pub(super) fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_of_one_passes_everything_through() {
        let g = ProcessGroup::single();
        assert_eq!((g.rank(), g.size(), g.local_rank(), g.is_root()), (0, 1, 0, true));
        let mut out = [0.0f32; 3];
        g.sum_f32(&[1.0, 2.0, 3.0], &mut out);
        assert_eq!(out, [1.0, 2.0, 3.0]);
        assert!(g.any(true) && !g.any(false));
        assert_eq!((g.min(7), g.max(7)), (7, 7));
        assert_eq!(g.on_root(|| Ok(5)).unwrap(), 5);
        let err = g.settle::<()>(Err(anyhow::anyhow!("bad input"))).unwrap_err();
        assert_eq!(err.to_string(), "bad input");
        assert!(g.finish::<()>(Err(anyhow::anyhow!("kept"))).is_err());
        assert_eq!(g.prefix(), "");
    }
}

//! `ncalm profile`: real stage-1 training steps with every kernel timed.

use std::time::Instant;

use anyhow::Result;

use super::data::{NcaStream, SequenceSource};
use super::run::Run;
use crate::config::Preset;
use crate::distributed::ProcessGroup;
use crate::gpu::{Gpu, KernelTiming, Profiler};
use crate::model::config::nca_vocab;
use crate::model::gpu::GpuModel;
use crate::model::{HostParams, ModelConfig};

/// What `ncalm profile` measured.
pub struct ProfileResult {
    pub timings: Vec<KernelTiming>,
    /// Timestamp queries (true) or wall time per dispatch (false).
    pub timestamps: bool,
    pub profiled_steps: u32,
    /// Wall time per step without profiling (synchronised once per step).
    pub step_ms: f64,
    /// The host's time to record a step (submission excluded); the GPU runs the previous work meanwhile,
    /// so a step is host-bound only where this nears `step_ms`.
    pub host_ms: f64,
    pub tokens_per_step: u64,
    pub flops_per_token: f64,
    pub model: ModelConfig,
}

/// Runs real stage-1 training steps on NCA data: `warmup` unprofiled steps (at least 2: the first
/// compiles the kernels, the wall clock times the rest), then `steps` steps with every kernel timed.
pub fn profile(
    gpu: &Gpu,
    preset: &Preset,
    warmup: u32,
    steps: u32,
    log: &mut dyn FnMut(&str),
) -> Result<ProfileResult> {
    let mut preset = preset.clone();
    let t = preset.train.clone();
    t.validate()?;
    let seq_len = preset.model.context;
    let data = SequenceSource::Nca(Box::new(NcaStream::new(
        gpu,
        &preset.data,
        seq_len,
        t.seed,
        t.batch as usize,
        log,
    )?));
    let layout = data.layout();
    if preset.model.vocab_size == 0 {
        preset.model.vocab_size = nca_vocab(layout.states).max(layout.vocab);
    }
    preset.model.validate()?;
    let host = HostParams::init(&preset.model, t.seed);
    let mut model = GpuModel::with_recompute(gpu, &preset.model, &host, t.batch, seq_len, t.recompute)?;
    model.set_precision(t.precision, t.loss_scale)?;
    let mut run = Run::new(gpu, model, data, &t, Vec::new(), seq_len, &ProcessGroup::single())?;
    // The first step compiles the kernels; the wall clock times the others (at least one).
    let warmup = warmup.max(2);
    log(&format!("{warmup} warm-up steps (compiling kernels, then timed by the wall clock)"));
    run.step(gpu, 0)?;
    gpu.wait()?;
    let start = Instant::now();
    run.recording = std::time::Duration::ZERO;
    for step in 1..u64::from(warmup) {
        run.step(gpu, step)?;
    }
    gpu.wait()?;
    let step_ms = start.elapsed().as_secs_f64() * 1e3 / f64::from(warmup - 1);
    let host_ms = run.recording.as_secs_f64() * 1e3 / f64::from(warmup - 1);
    let profiler = Profiler::new(gpu);
    run.model.cache.set_profiler(Some(profiler.clone()));
    for step in 0..u64::from(steps) {
        run.step(gpu, u64::from(warmup) + step)?;
    }
    gpu.wait()?;
    run.model.cache.set_profiler(None);
    Ok(ProfileResult {
        timings: profiler.take(),
        timestamps: profiler.timestamps,
        profiled_steps: steps,
        step_ms,
        host_ms,
        tokens_per_step: u64::from(t.batch) * u64::from(t.grad_accum) * u64::from(seq_len),
        flops_per_token: preset.model.flops_per_token(seq_len),
        model: preset.model.clone(),
    })
}

//! Everything before a run's first step: resuming (or refusing to overwrite) a run and checking that
//! its settings agree, the model's vocabulary, the starting parameters (fresh, resumed, or stage 2 from
//! a stage-1 checkpoint), the data source and the model on the GPU.

use anyhow::{bail, ensure, Context, Result};

use super::checkpoint::{self, Checkpoint};
use super::data::{FileStream, HostStream, NcaStream, SequenceSource};
use super::memory::{DeviceLimits, MemoryPlan};
use super::metrics::{known_peak_flops, start_metrics};
use super::run::{local_accumulation, Run};
use super::trainer::{Stage, StageData, Start, TrainOptions};
use crate::config::{Preset, TrainConfig};
use crate::gpu::Gpu;
use crate::model::config::nca_vocab;
use crate::model::gpu::GpuModel;
use crate::model::stage2_init::stage2_params;
use crate::model::HostParams;

/// A run ready for its first step.
pub(super) struct Prepared {
    pub run: Run,
    /// The stage's training settings (`[train]` or `[text]`).
    pub train: TrainConfig,
    /// The run's settings as its checkpoints store them, for a resume to compare against.
    pub settings: serde_json::Value,
    /// Steps and tokens done before this invocation (0 unless resumed).
    pub start_step: u64,
    pub start_tokens: u64,
    /// The step this invocation stops at.
    pub stop: u64,
    pub tokens_per_step: u64,
    /// Training FLOPs per token of the model as trained (its vocabulary resolved).
    pub flops_per_token: f64,
    pub peak_flops: Option<f64>,
}

/// Sets up the run `opts` asks for; `log` receives the lines that describe it.
pub(super) fn prepare(gpu: &Gpu, opts: &TrainOptions, log: &mut dyn FnMut(&str)) -> Result<Prepared> {
    let mut preset = opts.preset.clone();
    let run_dir = &opts.run_dir;
    let resumed = resumed_checkpoint(opts)?;
    let t = match opts.stage {
        Stage::Pre => preset.train.clone(),
        Stage::Text => preset.text.clone(),
    };
    let seq_len = preset.model.context;
    let val_sequences = ((t.eval_sequences.max(t.batch)).div_ceil(t.batch) * t.batch) as usize;
    // Every source but the simulated NCA stream opens cheaply. That one searches its rules first, so it
    // opens only after the model has been sized against the device.
    let early = open_cheap_source(&opts.data, seq_len, t.seed, val_sequences)?;
    resolve_vocabulary(&mut preset, early.as_ref(), &opts.start)?;
    let stop = stop_step(opts, &t)?;
    let settings = run_settings(&preset, opts)?;
    let section = match opts.stage {
        Stage::Pre => "train",
        Stage::Text => "text",
    };
    let group = &opts.group;
    let local_accum = local_accumulation(t.grad_accum, group.size(), section)?;
    // Sized against the device before any parameter is initialised or allocated.
    let plan = MemoryPlan::new(&preset.model, &t, seq_len, DeviceLimits::of(gpu));
    plan.check(&preset.model, &t, section)?;

    let (host, start_step, start_tokens) = match &resumed {
        Some(ck) => {
            let (stored, current) = (
                memory_knobs_aside(normalise_settings(&ck.state.settings)?),
                memory_knobs_aside(settings.clone()),
            );
            if let Some(diff) = first_difference(&stored, &current, "") {
                bail!("--resume: the settings disagree with the run being resumed ({diff})");
            }
            (HostParams::from_checkpoint(&ck.config, ck.params.clone())?, ck.state.step, ck.state.tokens)
        }
        None => (starting_params(&preset, t.seed, &opts.start)?, 0, 0),
    };
    let frozen = match &opts.start {
        Start::Stage2 { init, .. } => crate::model::stage2_init::frozen(&host.infos, init),
        Start::Fresh => Vec::new(),
    };
    ensure!(start_step < stop, "the run is already at step {start_step}; ask for more --steps");
    if group.is_root() {
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    }
    let mut model = GpuModel::with_recompute(gpu, &preset.model, &host, t.batch, seq_len, t.recompute)?;
    model.set_precision(t.precision, t.loss_scale)?;
    let data = match early {
        Some(d) => d,
        None => SequenceSource::Nca(Box::new(NcaStream::new(
            gpu,
            &preset.data,
            seq_len,
            t.seed,
            val_sequences,
            log,
        )?)),
    };
    if let Some(ck) = &resumed {
        model.load(&ck.params, ck.moments.as_ref())?;
        if let (Some(scale), Some(saved)) = (model.loss_scale(), &ck.state.loss_scale) {
            scale.restore(gpu, saved)?;
        }
    }
    let run = Run::new(gpu, model, data, &t, frozen, seq_len, group)?;
    if group.is_root() {
        start_metrics(run_dir, resumed.is_some().then_some(start_step))?;
    }

    let tokens_per_step = u64::from(t.batch) * u64::from(t.grad_accum) * u64::from(seq_len);
    let flops_per_token = preset.model.flops_per_token(seq_len);
    let peak_flops = opts.peak_flops.or_else(|| known_peak_flops(&gpu.adapter_info.name));
    log(&format!(
        "model: {}, vocab {}; data: {}",
        preset.model.describe(),
        preset.model.vocab_size,
        run.data.describe()
    ));
    log(&format!(
        "training steps {start_step}..{stop} of a {}-step schedule, {tokens_per_step} tokens per step, on {}",
        t.total_steps,
        gpu.describe()
    ));
    log(plan.report().trim_end());
    if let Some(sync) = &run.sync {
        log(&format!(
            "data parallel over {} ranks: each runs {local_accum} of a step's {} micro-batches; {:.1} MiB of \
             gradients summed per step in {} MiB buckets through host memory",
            group.size(),
            t.grad_accum,
            sync.bytes_per_step as f64 / (1 << 20) as f64,
            super::allreduce::BUCKET_BYTES >> 20
        ));
    }
    if t.precision == crate::ops::matmul::Precision::F16 {
        log(&format!(
            "precision f16: f16 products, f32 weights and optimiser, loss scale from {}",
            t.loss_scale
        ));
    }
    Ok(Prepared {
        run,
        train: t,
        settings,
        start_step,
        start_tokens,
        stop,
        tokens_per_step,
        flops_per_token,
        peak_flops,
    })
}

/// The checkpoint a resumed run continues from; a new run must not overwrite one.
fn resumed_checkpoint(opts: &TrainOptions) -> Result<Option<Checkpoint>> {
    let run_dir = &opts.run_dir;
    if opts.resume {
        let ck = checkpoint::load(run_dir).with_context(|| format!("cannot resume {}", run_dir.display()))?;
        return Ok(Some(ck));
    }
    if run_dir.join(checkpoint::LATEST_FILE).exists() {
        bail!("{} already holds a run; continue it with --resume or choose another --out", run_dir.display());
    }
    Ok(None)
}

/// The step this invocation stops at: `--steps`, or the end of the schedule.
fn stop_step(opts: &TrainOptions, t: &TrainConfig) -> Result<u64> {
    let section = match opts.stage {
        Stage::Pre => "train",
        Stage::Text => "text",
    };
    let stop = opts.stop_step.unwrap_or(t.total_steps);
    ensure!(
        stop >= 1 && stop <= t.total_steps,
        "--steps must be in 1..={} ({section}.total_steps, the schedule's length), got {stop}",
        t.total_steps
    );
    Ok(stop)
}

/// The run's settings (the preset as resolved, the stage, the data and the start), as stored in its
/// checkpoints and compared on resume.
fn run_settings(preset: &Preset, opts: &TrainOptions) -> Result<serde_json::Value> {
    let mut settings = serde_json::to_value(preset)?;
    settings["stage"] = serde_json::to_value(opts.stage)?;
    settings["data_source"] = serde_json::Value::String(opts.data.describe());
    settings["start"] = serde_json::to_value(&opts.start)?;
    normalise_settings(&settings)
}

/// The data source, unless it is the simulated NCA stream (opened once the model is on the device).
fn open_cheap_source(
    data: &StageData,
    seq_len: u32,
    seed: u64,
    val_sequences: usize,
) -> Result<Option<SequenceSource>> {
    Ok(match data {
        StageData::Nca => None,
        StageData::NcaFiles(dir) => {
            Some(SequenceSource::Files(FileStream::open(dir, seq_len, seed, val_sequences)?))
        }
        StageData::Dyck(d) => Some(SequenceSource::Host(HostStream::dyck(*d, seq_len, seed, val_sequences))),
        StageData::Text { label, train, val, vocab } => Some(SequenceSource::Host(HostStream::text(
            label,
            train.clone(),
            val,
            *vocab,
            seq_len,
            seed,
            val_sequences,
        )?)),
    })
}

/// Fills in the model's vocabulary when the preset leaves it to the data (`vocab_size = 0`), drops the
/// head's bias for stage 2, and checks the model against the data. `early` is the data source when it
/// is open already; otherwise the NCA stream's vocabulary follows from `[data]`.
fn resolve_vocabulary(preset: &mut Preset, early: Option<&SequenceSource>, start: &Start) -> Result<()> {
    let seq_len = preset.model.context;
    let (data_vocab, data_states) = match early {
        Some(d) => (d.layout().vocab, d.layout().states),
        None => {
            let spec = &preset.data.spec;
            spec.validate()?;
            (crate::nca::TokenLayout::new(spec, seq_len)?.vocab_size(), spec.states)
        }
    };
    if preset.model.vocab_size == 0 {
        // Padded to a multiple of 64, as the NCA stage's n^4 + 2 is (and nanoGPT pads GPT-2's 50257).
        preset.model.vocab_size = if data_states > 0 {
            nca_vocab(data_states).max(data_vocab)
        } else {
            data_vocab.next_multiple_of(64)
        };
    }
    if matches!(start, Start::Stage2 { .. }) {
        preset.model.head_bias = false;
    }
    ensure!(
        preset.model.vocab_size >= data_vocab,
        "model.vocab_size {} is smaller than the data's vocabulary {data_vocab}",
        preset.model.vocab_size,
    );
    preset.model.validate()
}

/// The parameters a new run starts from: fresh, or for stage 2 a new embedding and head with the
/// blocks of a stage-1 checkpoint (or fresh ones, the scratch arm).
fn starting_params(preset: &Preset, seed: u64, start: &Start) -> Result<HostParams> {
    let (from, init) = match start {
        Start::Fresh => return Ok(HostParams::init(&preset.model, seed)),
        Start::Stage2 { from, init } => (from, init),
    };
    let stage1: Option<Checkpoint> = match from {
        Some(path) => Some(
            checkpoint::load(path)
                .with_context(|| format!("loading the stage-1 checkpoint {}", path.display()))?,
        ),
        None => None,
    };
    if let Some(ck) = &stage1 {
        ensure!(
            ck.config.arch == preset.model.arch,
            "the stage-1 checkpoint's architecture is {} but the preset's is {}: use a preset of \
             the checkpoint's architecture (e.g. {})",
            ck.config.arch.name(),
            preset.model.arch.name(),
            if ck.config.arch == crate::model::config::Arch::Nca { "nca-small" } else { "small" }
        );
    }
    let blocks =
        stage1.as_ref().map(|ck| (crate::model::params::param_infos(&ck.config).0, ck.params.as_slice()));
    stage2_params(&preset.model, seed, init, blocks.as_ref().map(|(i, v)| (i.as_slice(), *v)))
}

/// Where two settings first differ, as `section.key: the run has A, this command B`.
pub(crate) fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let null = serde_json::Value::Null;
                first_difference(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &format!("{path}{}{k}", if path.is_empty() { "" } else { "." }),
                )
            })
        }
        _ if a != b => Some(format!("{path}: the run has {a}, this command {b}")),
        _ => None,
    }
}

/// A run's settings with every number as its typed value, so stored and new settings compare exactly.
fn normalise_settings(stored: &serde_json::Value) -> Result<serde_json::Value> {
    let extra = stored
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !Preset::SECTIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()));
    let mut typed = serde_json::to_value(Preset::from_settings(stored)?)?;
    typed.as_object_mut().expect("a preset serialises to an object").extend(extra);
    Ok(typed)
}

/// Settings with the memory knobs that leave results unchanged taken out, so a run may resume with
/// them changed (say, recomputing on a smaller GPU).
fn memory_knobs_aside(mut settings: serde_json::Value) -> serde_json::Value {
    for section in ["train", "text"] {
        if let Some(s) = settings.get_mut(section).and_then(|s| s.as_object_mut()) {
            s.remove("recompute");
        }
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_differences_are_named() {
        let a = serde_json::json!({"train": {"lr": 0.001, "batch": 4}, "model": {"layers": 2}});
        let b = serde_json::json!({"train": {"lr": 0.0005, "batch": 4}, "model": {"layers": 2}});
        assert_eq!(first_difference(&a, &a, ""), None);
        let d = first_difference(&a, &b, "").unwrap();
        assert!(d.starts_with("train.lr") && d.contains("0.001") && d.contains("0.0005"), "{d}");
    }
}

//! A host application that owns its wgpu device lends it to ncalm and trains a small model on it, step
//! by step: it decides when to read the loss back, when to evaluate and when to save.
//!
//! Run: `cargo run --release --example train_host`

use anyhow::{ensure, Context, Result};
use ncalm::config::Preset;
use ncalm::data::Dyck;
use ncalm::train::checkpoint;
use ncalm::train::trainer::{Stage, StageData, TrainOptions};
use ncalm::train::Trainer;
use ncalm::{wgpu, Gpu};

/// Steps to train, and how often the host reads the loss back.
const STEPS: u64 = 12;
const READ_EVERY: u64 = 4;

fn main() -> Result<()> {
    // The host's own setup. Training runs within WebGPU's default limits, but larger models need buffers
    // beyond 128 MiB and some faster kernel variants more than 8 storage buffers or 16 KiB of workgroup
    // memory: ask for what the adapter offers, as `Gpu::new` does. The optional features ncalm uses (f16, subgroups, timestamps)
    // are asked for where offered; without them it falls back to slower paths.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .context("the host found no adapter")?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host device"),
        required_limits: adapter.limits(),
        required_features: adapter.features() & ncalm::gpu::OPTIONAL_FEATURES,
        ..Default::default()
    }))?;
    println!("host device on {}", adapter.get_info().name);

    // ncalm borrows it (the handles are reference counted; the host keeps its own).
    let gpu = Gpu::from_device(device, queue);

    // The `tiny` preset on the paper's Dyck sequences, in a temporary run directory. Each step's loss
    // stays on the GPU until read, for at most `log_every` steps: the host reads every READ_EVERY.
    let mut preset = Preset::load("tiny", &[])?;
    preset.train.log_every = READ_EVERY;
    let run_dir = tempfile::tempdir()?;
    let opts = TrainOptions::new(preset, Stage::Pre, StageData::Dyck(Dyck::PAPER), run_dir.path());
    let mut trainer = Trainer::new(&gpu, &opts, &mut |line| println!("  ncalm: {line}"))?;

    let mut losses = Vec::new();
    while trainer.steps_done() < STEPS {
        // Recorded and submitted; the host could record its own work on the device in between.
        trainer.step()?;
        if trainer.steps_done() % READ_EVERY == 0 {
            // Only here does the host wait for the GPU.
            let history = trainer.history()?;
            let last = history.last().context("steps were submitted")?;
            println!("step {:>2}: loss {:.4} (read {} steps back)", last.step, last.loss, history.len());
            losses.extend(history.iter().map(|h| h.loss));
        }
    }
    ensure!(losses.len() as u64 == STEPS, "every step's loss was read");
    ensure!(losses.iter().all(|l| l.is_finite()), "the loss is not finite: {losses:?}");
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    println!("loss went from {first:.4} to {last:.4}: {}", if last < first { "down" } else { "not down" });

    let eval = trainer.evaluate()?;
    println!("validation loss {:.4} after {} tokens", eval.val_loss, trainer.tokens_seen());
    let saved = trainer.save()?;
    // The checkpoint is what `ncalm train --resume` and the other commands read.
    let back = checkpoint::load(&saved)?;
    ensure!(back.state.step == STEPS, "the checkpoint holds step {}", back.state.step);
    println!("saved the checkpoint of step {} to {}", back.state.step, saved.display());
    Ok(())
}

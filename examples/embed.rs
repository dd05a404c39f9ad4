//! A host application that owns its wgpu device hands it to ncalm and runs NCA simulations on it.
//!
//! The host keeps full control of instance, adapter, limits and features; ncalm only borrows the
//! `Device` and `Queue` (cheap clones) and records its work on them.
//!
//! Run: `cargo run --release --example embed`

use anyhow::{Context, Result};
use ncalm::nca::gpu::GpuSimulator;
use ncalm::nca::{reference, NcaSpec, Recording, Rule, SimRequest, TokenLayout};
use ncalm::rng::derive_key;
use ncalm::{wgpu, Gpu};

fn main() -> Result<()> {
    // The host's own setup, with the default (portable) limits a typical application asks for.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .context("the host found no adapter")?;
    let (device, queue) = pollster::block_on(
        adapter.request_device(&wgpu::DeviceDescriptor { label: Some("host device"), ..Default::default() }),
    )?;
    println!("host device on {}", adapter.get_info().name);

    // ncalm borrows it.
    let gpu = Gpu::from_device(device.clone(), queue.clone());
    let spec = NcaSpec::default();
    let layout = TokenLayout::new(&spec, 1024)?;
    let simulator = GpuSimulator::new(&gpu, &spec)?;

    // Eight random rules, two simulations each: 16 sequences of 1025 tokens, produced on the GPU.
    let rules: Vec<Rule> = (0..8).map(|r| Rule::sample(&spec, derive_key(7, &[r]))).collect();
    let tables: Vec<_> = rules.iter().map(|r| r.table(&spec)).collect();
    let sims: Vec<SimRequest> =
        (0..16).map(|i| SimRequest { rule: i / 2, key: derive_key(7, &[100, u64::from(i)]) }).collect();
    let rec = Recording::sequence(&layout);

    // The tokens can stay on the host's device (e.g. to feed its own pipeline) ...
    let on_device = simulator.token_buffer(sims.len(), &rec)?;
    let rule_buffer = simulator.upload_rules(&tables)?;
    let mut encoder = device.create_command_encoder(&Default::default());
    simulator.encode(&mut encoder, &rule_buffer, tables.len(), &sims, &rec, &on_device)?;
    queue.submit([encoder.finish()]);
    println!(
        "recorded {} tokens into a {}-byte buffer on the host's device",
        sims.len() * 1025,
        on_device.size()
    );

    // ... or come back to the host.
    let tokens = simulator.run(&tables, &sims, &rec)?;
    let first = reference::rollout(&spec, &tables[0], sims[0].key, layout.frames());
    let same = tokens[..1025] == layout.sequence(&first)[..];
    println!("read back {} tokens; first sequence equals the CPU reference: {same}", tokens.len());
    println!("first frame's tokens: {:?}", &tokens[..layout.frame_len() as usize]);
    anyhow::ensure!(tokens.len() == 16 * 1025, "expected 16 sequences");
    Ok(())
}

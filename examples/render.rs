//! A host application draws live NCA frames with its own render pipeline, straight from the token
//! buffer ncalm's GPU simulator writes.
//!
//! The host owns device, render pipeline and target texture; ncalm only records the simulation into the
//! host's command encoder. Compute and graphics share the token buffer, so the tokens never visit the
//! host: one submission simulates, draws and copies the picture out. Each row of the picture is one
//! simulation, each column one recorded frame. The host then checks a pixel of every cell against the
//! CPU reference before it writes the PNG.
//!
//! Run: `cargo run --release --example render [OUT.png]` (default `nca_frames.png`)

use std::fs::File;
use std::io::BufWriter;

use anyhow::{ensure, Context, Result};
use bytemuck::{Pod, Zeroable};
use glam::{UVec4, Vec4};
use ncalm::nca::gpu::GpuSimulator;
use ncalm::nca::render::STATE_COLOURS;
use ncalm::nca::{reference, NcaSpec, Recording, Rule, SimRequest, TokenLayout};
use ncalm::rng::derive_key;
use ncalm::{wgpu, Gpu};

/// Simulations (rows) and recorded frames per simulation (columns).
const SIMS: u32 = 4;
const FRAMES: u32 = 8;
/// Pixels per cell side, and the gap around and between frames (as `ncalm`'s own trajectory PNGs).
const SCALE: u32 = 4;
const GAP: u32 = 2;
const BACKGROUND: [u8; 3] = [255, 255, 255];

/// The render pipeline's uniform block; the WGSL `View` below mirrors it field by field (all fields
/// are 16-byte vectors, so the Rust and WGSL layouts agree without padding).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct View {
    /// Grid side, states, frames per simulation, simulations.
    shape: UVec4,
    /// Tokens per frame (patches and two delimiters), tokens per simulation, pixels per cell, gap.
    strides: UVec4,
    background: Vec4,
    /// One colour per state (at most 15 states, padded to 16).
    palette: [Vec4; 16],
}

/// A full-screen triangle, and a fragment shader that finds the frame, cell and patch token under
/// each pixel and colours it by the cell's state: the inverse of `TokenLayout::patch_token`, as
/// `TokenLayout::decode_frame` does it on the CPU.
const SHADER: &str = r"
struct View {
    shape: vec4<u32>,
    strides: vec4<u32>,
    background: vec4<f32>,
    palette: array<vec4<f32>, 16>,
}

@group(0) @binding(0) var<uniform> view: View;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;

@vertex
fn vs(@builtin(vertex_index) i: u32) -> @builtin(position) vec4<f32> {
    // (-1,-1), (3,-1), (-1,3): one triangle covering the whole target, no vertex buffer.
    let corner = vec2<f32>(f32((i << 1u) & 2u), f32(i & 2u));
    return vec4<f32>(corner * 2.0 - 1.0, 0.0, 1.0);
}

@fragment
fn fs(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32> {
    let side = view.shape.x;
    let states = view.shape.y;
    let scale = view.strides.z;
    let gap = view.strides.w;
    let tile = side * scale + gap;
    // Pixel centres sit at +0.5, with (0, 0) the top-left pixel, the texture's first row.
    let p = vec2<u32>(pos.xy);
    if (p.x < gap || p.y < gap) {
        return view.background;
    }
    let q = p - vec2<u32>(gap);
    let frame = q.x / tile;
    let sim = q.y / tile;
    let off = q % vec2<u32>(tile);
    if (off.x >= side * scale || off.y >= side * scale || frame >= view.shape.z || sim >= view.shape.w) {
        return view.background;
    }
    let cell = off / scale;
    // A frame is <grid>, then the 2x2 patches row-major, then </grid>: skip the opening delimiter.
    let patch_id = (cell.y / 2u) * (side / 2u) + cell.x / 2u;
    let token = tokens[sim * view.strides.y + frame * view.strides.x + 1u + patch_id];
    // Patch id a + n b + n^2 c + n^3 d: top-left, top-right, bottom-left, bottom-right.
    let digit = (cell.y % 2u) * 2u + cell.x % 2u;
    var rest = token;
    for (var k = 0u; k < digit; k++) {
        rest /= states;
    }
    return view.palette[rest % states];
}
";

fn main() -> Result<()> {
    let out_path = std::env::args().nth(1).unwrap_or_else(|| "nca_frames.png".to_string());

    // The host's own device, with the default (portable) limits, as in `examples/embed.rs`.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .context("the host found no adapter")?;
    let (device, queue) = pollster::block_on(
        adapter.request_device(&wgpu::DeviceDescriptor { label: Some("host device"), ..Default::default() }),
    )?;
    println!("host device on {}", adapter.get_info().name);

    // ncalm borrows the device; one rule per simulation, FRAMES whole frames each, with delimiters
    // (only the layout's frame length matters here, not its training sequence length).
    let gpu = Gpu::from_device(device.clone(), queue.clone());
    let spec = NcaSpec::default();
    let layout = TokenLayout::new(&spec, 1024)?;
    let simulator = GpuSimulator::new(&gpu, &spec)?;
    let tables: Vec<_> =
        (0..SIMS).map(|r| Rule::sample(&spec, derive_key(3, &[r.into()])).table(&spec)).collect();
    let sims: Vec<SimRequest> =
        (0..SIMS).map(|i| SimRequest { rule: i, key: derive_key(3, &[100, u64::from(i)]) }).collect();
    let rec = Recording { frames: FRAMES, delimiters: true, tokens_per_sim: FRAMES * layout.frame_len() };
    let tokens = simulator.token_buffer(sims.len(), &rec)?;
    let rules = simulator.upload_rules(&tables)?;

    // The host's render pipeline; `layout: None` lets wgpu derive the bind group layout from the WGSL.
    let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("nca frames"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    // Unorm, not sRGB: the bytes in the texture are exactly the palette's, which the check below needs.
    let format = wgpu::TextureFormat::Rgba8Unorm;
    let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("nca frames"),
        layout: None,
        vertex: wgpu::VertexState {
            module: &shader,
            entry_point: Some("vs"),
            compilation_options: Default::default(),
            buffers: &[],
        },
        primitive: wgpu::PrimitiveState::default(),
        depth_stencil: None,
        multisample: wgpu::MultisampleState::default(),
        fragment: Some(wgpu::FragmentState {
            module: &shader,
            entry_point: Some("fs"),
            compilation_options: Default::default(),
            targets: &[Some(format.into())],
        }),
        multiview_mask: None,
        cache: None,
    });

    let colour = |c: [u8; 3]| Vec4::new(c[0] as f32, c[1] as f32, c[2] as f32, 255.0) / 255.0;
    let mut palette = [Vec4::ONE; 16];
    for (p, c) in palette.iter_mut().zip(STATE_COLOURS) {
        *p = colour(c);
    }
    let view = View {
        shape: UVec4::new(spec.grid, spec.states, FRAMES, SIMS),
        strides: UVec4::new(layout.frame_len(), rec.tokens_per_sim, SCALE, GAP),
        background: colour(BACKGROUND),
        palette,
    };
    let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("nca view"),
        size: std::mem::size_of::<View>() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&uniforms, 0, bytemuck::bytes_of(&view));
    // The very buffer the simulator writes, bound read-only to the fragment shader.
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("nca frames"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: uniforms.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: tokens.as_entire_binding() },
        ],
    });

    // The offscreen target, and a buffer to copy it into (rows padded to wgpu's 256-byte alignment).
    let (width, height) = (GAP + FRAMES * (spec.grid * SCALE + GAP), GAP + SIMS * (spec.grid * SCALE + GAP));
    let size = wgpu::Extent3d { width, height, depth_or_array_layers: 1 };
    let target = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("nca frames"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let row_bytes = (4 * width).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
    let pixels = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("nca frames read-back"),
        size: u64::from(row_bytes * height),
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });

    // One encoder, one submission: simulate, draw from the tokens, copy the picture out. wgpu orders
    // the compute pass's writes before the render pass's reads of the same buffer.
    let mut encoder = device.create_command_encoder(&Default::default());
    simulator.encode(&mut encoder, &rules, tables.len(), &sims, &rec, &tokens)?;
    {
        let target_view = target.create_view(&Default::default());
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("nca frames"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: &target_view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::WHITE),
                    store: wgpu::StoreOp::Store,
                },
            })],
            ..Default::default()
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.draw(0..3, 0..1);
    }
    encoder.copy_texture_to_buffer(
        target.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &pixels,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row_bytes),
                rows_per_image: None,
            },
        },
        size,
    );
    queue.submit([encoder.finish()]);

    // Only the finished picture comes back to the host.
    let (tx, rx) = std::sync::mpsc::channel();
    pixels.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    device.poll(wgpu::PollType::wait_indefinitely())?;
    rx.recv()??;
    let rgba: Vec<u8> = {
        let mapped = pixels.get_mapped_range(..)?;
        mapped.chunks(row_bytes as usize).flat_map(|row| &row[..4 * width as usize]).copied().collect()
    };
    pixels.unmap();
    let pixel = |x: u32, y: u32| {
        let i = 4 * (y * width + x) as usize;
        [rgba[i], rgba[i + 1], rgba[i + 2]]
    };

    // The check: the centre pixel of every cell of every frame against the CPU reference's state there.
    // GPU and CPU may split a near-tie in the Gumbel-max differently, after which that simulation
    // follows another trajectory (tests/nca_parity.rs allows for it), so a simulation may differ as a
    // whole; a wrong render would miss in every one.
    ensure!(pixel(0, 0) == BACKGROUND, "the gap is not the background colour");
    let mut exact = 0;
    for (s, req) in sims.iter().enumerate() {
        let frames = reference::rollout(&spec, &tables[req.rule as usize], req.key, FRAMES);
        let mut misses = 0;
        for (f, frame) in frames.iter().enumerate() {
            for (cell, &state) in frame.iter().enumerate() {
                let (cy, cx) = (cell as u32 / spec.grid, cell as u32 % spec.grid);
                let x = GAP + f as u32 * (spec.grid * SCALE + GAP) + cx * SCALE + SCALE / 2;
                let y = GAP + s as u32 * (spec.grid * SCALE + GAP) + cy * SCALE + SCALE / 2;
                misses += usize::from(pixel(x, y) != STATE_COLOURS[state as usize]);
            }
        }
        if misses == 0 {
            exact += 1;
        } else {
            println!("simulation {s}: {misses} cells differ from the CPU reference");
        }
    }
    println!("{exact} of {SIMS} simulations rendered exactly as the CPU reference");
    ensure!(2 * exact > sims.len(), "the rendered frames do not match the CPU reference");

    let file = File::create(&out_path).with_context(|| format!("creating {out_path}"))?;
    let mut png = png::Encoder::new(BufWriter::new(file), width, height);
    png.set_color(png::ColorType::Rgba);
    png.set_depth(png::BitDepth::Eight);
    png.write_header()?.write_image_data(&rgba)?;
    println!("wrote {SIMS} simulations x {FRAMES} frames, {width}x{height} pixels, to {out_path}");
    Ok(())
}

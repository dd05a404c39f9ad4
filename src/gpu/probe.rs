//! Runs the WGSL random number generator on the device so tests can compare it with `src/rng.rs`.

use anyhow::Result;

use super::{compile_compute, storage_buffer, Gpu, Readback};

pub const RNG_WGSL: &str = include_str!("../../shaders/rng.wgsl");
pub const RNG_PROBE_WGSL: &str = include_str!("../../shaders/rng_probe.wgsl");

/// What the device computes for one (key, counter): the four Philox words, then `unit_f32` of word 0,
/// `open_unit_f32` of word 1 and `gumbel` of word 2.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RngProbe {
    pub words: [u32; 4],
    pub unit: f32,
    pub open_unit: f32,
    pub gumbel: f32,
}

pub fn probe_rng(gpu: &Gpu, cases: &[(u64, [u32; 4])]) -> Result<Vec<RngProbe>> {
    let source = format!("{RNG_WGSL}\n{RNG_PROBE_WGSL}");
    let kernel = compile_compute(gpu, "rng_probe", &source, "probe")?;
    let input: Vec<u32> = cases
        .iter()
        .flat_map(|(k, c)| [*k as u32, (*k >> 32) as u32, 0, 0, c[0], c[1], c[2], c[3]])
        .collect();
    let input = storage_buffer(gpu, "rng cases", bytemuck::cast_slice(&input), wgpu::BufferUsages::empty());
    let output =
        storage_buffer(gpu, "rng results", &vec![0u8; cases.len() * 32], wgpu::BufferUsages::COPY_SRC);
    let bind = kernel.bind(gpu, &[input.as_entire_binding(), output.as_entire_binding()]);
    let readback = Readback::new(gpu, output.size());
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups((cases.len() as u32).div_ceil(64), 1, 1);
    }
    readback.copy_from(&mut encoder, &output, output.size())?;
    gpu.queue.submit([encoder.finish()]);
    let words: Vec<u32> = readback.read(gpu, cases.len() * 8)?;
    Ok(words
        .chunks(8)
        .map(|w| RngProbe {
            words: [w[0], w[1], w[2], w[3]],
            unit: f32::from_bits(w[4]),
            open_unit: f32::from_bits(w[5]),
            gumbel: f32::from_bits(w[6]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_shader_validates() {
        super::super::validate_wgsl("rng_probe", &format!("{RNG_WGSL}\n{RNG_PROBE_WGSL}")).unwrap();
    }
}

//! Summing a step's gradients over the ranks, through host memory so that every wgpu backend can take
//! part. The gradients travel in buckets of a few MiB: while the ranks all-reduce one bucket on the
//! host, the GPU already copies the next into the other of two mapped staging buffers, and each summed
//! bucket is written back in place before the optimiser step is submitted.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::distributed::ProcessGroup;
use crate::gpu::{Gpu, GpuTensor};

/// Bytes per bucket: large enough that a transfer costs more than its latency, small enough that the
/// copy of the next bucket hides behind the all-reduce of this one.
pub const BUCKET_BYTES: u64 = 4 << 20;

/// One contiguous range of a gradient chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    chunk: usize,
    /// Byte offset into the chunk.
    offset: u64,
    /// f32 elements.
    len: usize,
}

/// Splits chunks of `chunk_lens` elements into buckets of at most `bucket_len` elements, in order.
fn buckets(chunk_lens: &[usize], bucket_len: usize) -> Vec<Bucket> {
    let mut out = Vec::new();
    for (chunk, &len) in chunk_lens.iter().enumerate() {
        let mut start = 0;
        while start < len {
            let n = bucket_len.min(len - start);
            out.push(Bucket { chunk, offset: start as u64 * 4, len: n });
            start += n;
        }
    }
    out
}

/// The staging buffers and host memory of the gradient all-reduce, and what it has cost so far.
pub(super) struct GradientSync {
    buckets: Vec<Bucket>,
    staging: [wgpu::Buffer; 2],
    summed: Vec<f32>,
    /// Wall time spent summing (the GPU's compute for the step finished before the clock starts).
    pub(super) time: Duration,
    /// Gradient bytes each rank contributes per step.
    pub(super) bytes_per_step: u64,
}

impl GradientSync {
    /// Buckets of `bucket_bytes` (a multiple of 4) over the gradient chunks `grads` (whole buffers,
    /// alignment gaps included).
    pub(super) fn new(gpu: &Gpu, grads: &[GpuTensor], bucket_bytes: u64) -> Self {
        let lens: Vec<usize> = grads.iter().map(|c| c.len).collect();
        let buckets = buckets(&lens, (bucket_bytes / 4) as usize);
        let largest = buckets.iter().map(|b| b.len).max().unwrap_or(1) as u64 * 4;
        let staging = std::array::from_fn(|i| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("gradient all-reduce staging {i}")),
                size: largest,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        Self {
            summed: vec![0.0; (largest / 4) as usize],
            bytes_per_step: lens.iter().map(|&l| l as u64 * 4).sum(),
            buckets,
            staging,
            time: Duration::ZERO,
        }
    }

    /// Replaces the gradients in `grads` by their sum over the ranks of `group`, once the submitted
    /// work that computes them has finished. The writes back land before the next submission.
    pub(super) fn all_reduce(&mut self, gpu: &Gpu, grads: &[GpuTensor], group: &ProcessGroup) -> Result<()> {
        gpu.wait()?;
        let started = Instant::now();
        let copy = |k: usize| {
            let b = self.buckets[k];
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(
                &grads[b.chunk].buffer,
                grads[b.chunk].offset + b.offset,
                &self.staging[k % 2],
                0,
                b.len as u64 * 4,
            );
            gpu.queue.submit([encoder.finish()])
        };
        let mut pending = (!self.buckets.is_empty()).then(|| copy(0));
        for k in 0..self.buckets.len() {
            let next = (k + 1 < self.buckets.len()).then(|| copy(k + 1));
            let b = self.buckets[k];
            let staging = &self.staging[k % 2];
            let bytes = b.len as u64 * 4;
            let (tx, rx) = std::sync::mpsc::channel();
            staging.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
                let _ = tx.send(r);
            });
            gpu.device
                .poll(wgpu::PollType::Wait { submission_index: pending.take(), timeout: None })
                .map_err(|e| anyhow!("waiting for a gradient bucket failed: {e}"))?;
            rx.recv()
                .map_err(|_| anyhow!("the GPU never answered a gradient bucket's read-back"))?
                .map_err(|e| anyhow!("mapping a gradient bucket failed (device lost?): {e}"))?;
            {
                let view =
                    staging.get_mapped_range(0..bytes).map_err(|e| anyhow!("gradient bucket view: {e:?}"))?;
                group.sum_f32(bytemuck::cast_slice(&view), &mut self.summed[..b.len]);
            }
            staging.unmap();
            gpu.queue.write_buffer(
                &grads[b.chunk].buffer,
                grads[b.chunk].offset + b.offset,
                bytemuck::cast_slice(&self.summed[..b.len]),
            );
            pending = next;
        }
        self.time += started.elapsed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_chunk_in_order_without_overlap() {
        let b = buckets(&[10, 0, 4], 4);
        let lens: Vec<(usize, u64, usize)> = b.iter().map(|b| (b.chunk, b.offset, b.len)).collect();
        assert_eq!(lens, vec![(0, 0, 4), (0, 16, 4), (0, 32, 2), (2, 0, 4)]);
        assert!(buckets(&[], 4).is_empty());
    }

    /// A group of one sums nothing: the gradients make the round trip through the staging buffers
    /// unchanged, bucket boundaries, two chunks and a view at an offset included.
    #[test]
    fn the_round_trip_through_host_memory_keeps_every_gradient() {
        let gpu = Gpu::new(&Default::default()).expect("a GPU (lavapipe on machines without one)");
        let first: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let second: Vec<f32> = (0..37).map(|i| -(i as f32)).collect();
        let a = gpu.upload(&first, "a").unwrap();
        let whole = gpu.upload(&[&[9.0f32; 64][..], &second].concat(), "b").unwrap();
        let b = whole.slice(64, second.len());
        let mut sync = GradientSync::new(&gpu, &[a.clone(), b.clone()], 4 * 96);
        assert_eq!(sync.buckets.len(), 11 + 1);
        assert_eq!(sync.bytes_per_step, (1000 + 37) * 4);
        for _ in 0..2 {
            sync.all_reduce(&gpu, &[a.clone(), b.clone()], &ProcessGroup::single()).unwrap();
        }
        assert_eq!(gpu.read::<f32>(&a).unwrap(), first);
        assert_eq!(gpu.read::<f32>(&whole).unwrap(), [&[9.0f32; 64][..], &second].concat());
    }
}

//! Buffer creation and read-back.

use anyhow::{anyhow, bail, Result};
use wgpu::util::DeviceExt;

use super::Gpu;

/// A storage buffer initialised with `data` (at least 4 bytes, as bindings require).
pub fn storage_buffer(gpu: &Gpu, label: &str, data: &[u8], extra_usage: wgpu::BufferUsages) -> wgpu::Buffer {
    let padded;
    let contents = if data.len() < 4 {
        padded = [data, &[0u8; 4][..4 - data.len()]].concat();
        &padded[..]
    } else {
        data
    };
    gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | extra_usage,
    })
}

pub fn uniform_buffer(gpu: &Gpu, label: &str, data: &[u8]) -> wgpu::Buffer {
    gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: data,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    })
}

/// A mappable staging buffer for copying results back to the host.
pub struct Readback {
    buffer: wgpu::Buffer,
    size: u64,
}

impl Readback {
    pub fn new(gpu: &Gpu, size: u64) -> Self {
        let size = size.max(4).next_multiple_of(4);
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Self { buffer, size }
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Records a copy of `size` bytes of `src` (from offset 0) into the staging buffer.
    pub fn copy_from(&self, encoder: &mut wgpu::CommandEncoder, src: &wgpu::Buffer, size: u64) -> Result<()> {
        if size > self.size {
            bail!("read-back of {size} bytes exceeds its {}-byte staging buffer", self.size);
        }
        encoder.copy_buffer_to_buffer(src, 0, &self.buffer, 0, size.next_multiple_of(4));
        Ok(())
    }

    /// Waits for the copy and returns the first `len` elements.
    pub fn read<T: bytemuck::Pod>(&self, gpu: &Gpu, len: usize) -> Result<Vec<T>> {
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        if bytes > self.size {
            bail!("read-back of {bytes} bytes exceeds its {}-byte staging buffer", self.size);
        }
        let range = 0..bytes.max(4).next_multiple_of(4);
        let (tx, rx) = std::sync::mpsc::channel();
        self.buffer.map_async(wgpu::MapMode::Read, range.clone(), move |r| {
            let _ = tx.send(r);
        });
        gpu.wait()?;
        rx.recv()
            .map_err(|_| anyhow!("the GPU never answered the read-back"))?
            .map_err(|e| anyhow!("mapping the read-back buffer failed (device lost?): {e}"))?;
        let out = {
            let view = self.buffer.get_mapped_range(range).map_err(|e| anyhow!("read-back view: {e:?}"))?;
            bytemuck::cast_slice::<u8, T>(&view[..bytes as usize]).to_vec()
        };
        self.buffer.unmap();
        Ok(out)
    }
}

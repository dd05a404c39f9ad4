//! Tensors on the GPU: typed views (f32 or u32 elements) into buffers, allocated per role from arenas
//! at offsets the device can bind.

use anyhow::{bail, Result};

use super::{Gpu, Readback};

/// A contiguous run of 4-byte elements inside a buffer. Cheap to clone (the buffer is shared).
#[derive(Clone, Debug)]
pub struct GpuTensor {
    pub buffer: wgpu::Buffer,
    /// Byte offset into the buffer (a multiple of the storage offset alignment).
    pub offset: u64,
    /// Elements (f32 or u32, 4 bytes each).
    pub len: usize,
    pub label: String,
}

impl GpuTensor {
    pub fn bytes(&self) -> u64 {
        self.len as u64 * 4
    }

    /// The storage binding of this view (empty views bind 4 bytes so shaders may still declare them).
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.bytes().max(4)),
        })
    }

    /// Whether the two views share any element.
    pub fn overlaps(&self, other: &GpuTensor) -> bool {
        self.buffer == other.buffer
            && self.offset < other.offset + other.bytes()
            && other.offset < self.offset + self.bytes()
    }

    /// A sub-view of `len` elements starting `start` elements in; `start * 4` must keep the binding
    /// alignment when the view is bound.
    pub fn slice(&self, start: usize, len: usize) -> GpuTensor {
        assert!(start + len <= self.len, "slice {start}+{len} of {} ({})", self.len, self.label);
        GpuTensor {
            buffer: self.buffer.clone(),
            offset: self.offset + start as u64 * 4,
            len,
            label: self.label.clone(),
        }
    }
}

impl Gpu {
    /// A zero-filled tensor in its own buffer.
    pub fn tensor(&self, len: usize, label: &str) -> Result<GpuTensor> {
        let bytes = (len as u64 * 4).max(4);
        self.check_binding(label, bytes)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuTensor { buffer, offset: 0, len, label: label.to_string() })
    }

    /// A tensor holding `data` (f32 or u32).
    pub fn upload<T: bytemuck::Pod>(&self, data: &[T], label: &str) -> Result<GpuTensor> {
        assert_eq!(std::mem::size_of::<T>(), 4, "tensors hold 4-byte elements");
        let t = self.tensor(data.len(), label)?;
        self.write(&t, data);
        Ok(t)
    }

    /// Overwrites a tensor's contents (queued; ordered before later submissions).
    pub fn write<T: bytemuck::Pod>(&self, t: &GpuTensor, data: &[T]) {
        assert_eq!(data.len(), t.len, "writing {} elements into {} ({})", data.len(), t.len, t.label);
        if !data.is_empty() {
            self.queue.write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(data));
        }
    }

    /// Reads a tensor back (waits for all submitted work).
    pub fn read<T: bytemuck::Pod>(&self, t: &GpuTensor) -> Result<Vec<T>> {
        let readback = Readback::new(self, t.bytes());
        let mut encoder = self.device.create_command_encoder(&Default::default());
        if t.len > 0 {
            encoder.copy_buffer_to_buffer(&t.buffer, t.offset, readback.buffer(), 0, t.bytes());
        }
        self.queue.submit([encoder.finish()]);
        readback.read(self, t.len)
    }

    /// Fails with a message naming the tensor when it exceeds the device's storage binding limit.
    pub fn check_binding(&self, label: &str, bytes: u64) -> Result<()> {
        let limit = self.limits().max_storage_buffer_binding_size;
        if bytes > limit {
            bail!(
                "{label} needs {bytes} bytes ({} MiB) but this device binds at most {limit} bytes ({} MiB) per buffer: \
                 reduce the model or batch size",
                bytes >> 20,
                limit >> 20
            );
        }
        Ok(())
    }
}

/// Allocates many tensors in one buffer (one buffer per role: parameters, gradients, moments,
/// activations), each at an offset aligned for binding.
pub struct Arena {
    label: String,
    align: u64,
    cursor: u64,
    planned: Vec<(String, usize, u64)>,
}

impl Arena {
    pub fn new(gpu: &Gpu, label: &str) -> Self {
        let align = u64::from(gpu.limits().min_storage_buffer_offset_alignment).max(4);
        Self { label: label.to_string(), align, cursor: 0, planned: Vec::new() }
    }

    /// Reserves a tensor; returns its index in the finished arena.
    pub fn reserve(&mut self, name: &str, len: usize) -> usize {
        self.cursor = self.cursor.next_multiple_of(self.align);
        self.planned.push((name.to_string(), len, self.cursor));
        self.cursor += (len as u64 * 4).max(4);
        self.planned.len() - 1
    }

    pub fn bytes(&self) -> u64 {
        self.cursor
    }

    /// Creates the buffer (zero-filled) and the views, in reservation order.
    pub fn finish(self, gpu: &Gpu) -> Result<(wgpu::Buffer, Vec<GpuTensor>)> {
        let size = self.cursor.max(4).next_multiple_of(4);
        let max = gpu.limits().max_buffer_size;
        if size > max {
            bail!("the {} buffer needs {size} bytes; this device allows {max} per buffer", self.label);
        }
        for (name, len, _) in &self.planned {
            gpu.check_binding(name, *len as u64 * 4)?;
        }
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&self.label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let views = self
            .planned
            .into_iter()
            .map(|(label, len, offset)| GpuTensor { buffer: buffer.clone(), offset, len, label })
            .collect();
        Ok((buffer, views))
    }
}

/// One buffer for a role (parameters, gradients, a moment) holding the named tensors of the given
/// lengths: a view per tensor, and one view of the whole buffer (alignment gaps included, zero) for
/// global reductions and zeroing.
pub fn role_arena<'a>(
    gpu: &Gpu,
    label: &str,
    tensors: impl IntoIterator<Item = (&'a str, usize)>,
) -> Result<(Vec<GpuTensor>, GpuTensor)> {
    let mut arena = Arena::new(gpu, label);
    for (name, len) in tensors {
        arena.reserve(&format!("{label} {name}"), len);
    }
    let bytes = arena.bytes();
    let (buffer, views) = arena.finish(gpu)?;
    Ok((views, GpuTensor { buffer, offset: 0, len: (bytes / 4) as usize, label: format!("all {label}") }))
}

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

    /// One view of `parts`, which must follow each other in one buffer with no gap (a run of an
    /// [`Arena`]).
    pub fn joined(parts: &[GpuTensor]) -> GpuTensor {
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        let mut end = first.offset;
        for t in parts {
            assert!(
                t.buffer == first.buffer && t.offset == end,
                "{} does not follow {} in one run",
                t.label,
                first.label
            );
            end += t.bytes();
        }
        let label =
            if parts.len() == 1 { first.label.clone() } else { format!("{} to {}", first.label, last.label) };
        GpuTensor {
            buffer: first.buffer.clone(),
            offset: first.offset,
            len: ((end - first.offset) / 4) as usize,
            label,
        }
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

/// Allocates many tensors in as few buffers as the device allows (one set per role: parameters,
/// gradients, moments, activations). Each buffer, a *chunk*, holds at most [`Gpu::chunk_bytes`]; a tensor
/// never straddles two chunks, and sits at an offset aligned for binding.
pub struct Arena {
    label: String,
    align: u64,
    limit: u64,
    /// Bytes used in each chunk so far.
    chunks: Vec<u64>,
    planned: Vec<Planned>,
}

struct Planned {
    name: String,
    len: usize,
    chunk: usize,
    offset: u64,
}

/// The buffers of a finished [`Arena`]: one view per reserved tensor, and one view per chunk covering
/// the whole buffer (alignment gaps included, zero).
pub struct Allocation {
    pub views: Vec<GpuTensor>,
    pub chunks: Vec<GpuTensor>,
}

impl Arena {
    pub fn new(gpu: &Gpu, label: &str) -> Self {
        let align = u64::from(gpu.limits().min_storage_buffer_offset_alignment).max(4);
        Self::with_limits(label, align, gpu.chunk_bytes())
    }

    /// An arena planned without a device: `align` is the binding offset alignment, `limit` the most
    /// bytes one chunk may hold.
    pub fn with_limits(label: &str, align: u64, limit: u64) -> Self {
        Self { label: label.to_string(), align, limit, chunks: Vec::new(), planned: Vec::new() }
    }

    /// Reserves a tensor; returns its index in the finished arena. A tensor larger than a chunk gets a
    /// chunk of its own here, and [`finish`](Self::finish) refuses it by name.
    pub fn reserve(&mut self, name: &str, len: usize) -> usize {
        let bytes = (len as u64 * 4).max(4);
        let offset = self.chunks.last().map(|used| used.next_multiple_of(self.align));
        let (chunk, offset) = match offset {
            Some(offset) if offset + bytes <= self.limit => (self.chunks.len() - 1, offset),
            _ => {
                self.chunks.push(0);
                (self.chunks.len() - 1, 0)
            }
        };
        self.chunks[chunk] = offset + bytes;
        self.planned.push(Planned { name: name.to_string(), len, chunk, offset });
        self.planned.len() - 1
    }

    /// Reserves tensors packed end to end in one chunk, the first at a binding offset: a run that kernels
    /// bind as one tensor ([`Role::run`]), as a layer's query, key and value projections make one
    /// `[3d, d]` matrix. A member after the first may start off the binding alignment, so only the run
    /// is bound. Returns the members' indices.
    pub fn reserve_run(&mut self, tensors: &[(&str, usize)]) -> std::ops::Range<usize> {
        let total: usize = tensors.iter().map(|&(_, len)| len).sum();
        let first = self.planned.len();
        if tensors.is_empty() {
            return first..first;
        }
        self.reserve(tensors[0].0, total);
        let (chunk, mut offset) = (self.planned[first].chunk, self.planned[first].offset);
        self.planned.truncate(first);
        for &(name, len) in tensors {
            self.planned.push(Planned { name: name.to_string(), len, chunk, offset });
            offset += len as u64 * 4;
        }
        first..self.planned.len()
    }

    /// Reserves a role's tensors in order, each of `runs` (ranges of `tensors`, ascending and disjoint)
    /// packed as [`reserve_run`](Self::reserve_run) packs them.
    pub fn reserve_role(&mut self, tensors: &[(String, usize)], runs: &[std::ops::Range<usize>]) {
        let mut runs = runs.iter().peekable();
        let mut i = 0;
        while i < tensors.len() {
            match runs.next_if(|r| r.start == i) {
                Some(run) => {
                    let members: Vec<(&str, usize)> =
                        tensors[run.clone()].iter().map(|(name, len)| (name.as_str(), *len)).collect();
                    self.reserve_run(&members);
                    i = run.end;
                }
                None => {
                    self.reserve(&tensors[i].0, tensors[i].1);
                    i += 1;
                }
            }
        }
    }

    /// Bytes of every chunk together.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().sum()
    }

    /// The number of buffers the arena will allocate.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The first tensor (or run) that cannot be bound, if any: its name and bytes. Only such a
    /// reservation overfills a chunk, one of its own.
    pub fn oversized(&self) -> Option<(&str, u64)> {
        let chunk = self.chunks.iter().position(|&used| used > self.limit)?;
        let first = self.planned.iter().find(|p| p.chunk == chunk)?;
        Some((first.name.as_str(), self.chunks[chunk]))
    }

    /// Creates the chunks (zero-filled) and the views, in reservation order.
    pub fn finish(self, gpu: &Gpu) -> Result<Allocation> {
        if let Some((name, bytes)) = self.oversized() {
            bail!(
                "{name} needs {bytes} bytes ({} MiB) but this device binds at most {} bytes ({} MiB) per buffer: \
                 reduce the model or batch size",
                bytes >> 20,
                self.limit,
                self.limit >> 20
            );
        }
        let chunks: Vec<GpuTensor> = self
            .chunks
            .iter()
            .enumerate()
            .map(|(i, &used)| {
                let label =
                    if self.chunks.len() == 1 { self.label.clone() } else { format!("{} {i}", self.label) };
                let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&label),
                    size: used.max(4).next_multiple_of(4),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                GpuTensor { buffer, offset: 0, len: (used / 4) as usize, label: format!("all {label}") }
            })
            .collect();
        let views = self
            .planned
            .into_iter()
            .map(|p| GpuTensor {
                buffer: chunks[p.chunk].buffer.clone(),
                offset: p.offset,
                len: p.len,
                label: p.name,
            })
            .collect();
        Ok(Allocation { views, chunks })
    }
}

/// The tensors of one role (parameters, gradients, a moment): a view per tensor, and the chunks that
/// hold them, for operations over the whole role (the gradient norm, zeroing, the optimiser).
pub struct Role {
    pub tensors: Vec<GpuTensor>,
    pub chunks: Vec<GpuTensor>,
}

impl Role {
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, GpuTensor> {
        self.tensors.iter()
    }

    /// Which chunk holds tensor `i`.
    pub fn chunk_of(&self, i: usize) -> usize {
        let buffer = &self.tensors[i].buffer;
        self.chunks.iter().position(|c| &c.buffer == buffer).expect("every tensor lies in a chunk")
    }
}

impl std::ops::Index<usize> for Role {
    type Output = GpuTensor;

    fn index(&self, i: usize) -> &GpuTensor {
        &self.tensors[i]
    }
}

impl Role {
    /// One view of the tensors `members`, reserved as a run ([`Arena::reserve_run`]): what kernels
    /// bind, since a member's own view may not start at a binding offset.
    pub fn run(&self, members: std::ops::Range<usize>) -> GpuTensor {
        GpuTensor::joined(&self.tensors[members])
    }
}

impl<'a> IntoIterator for &'a Role {
    type Item = &'a GpuTensor;
    type IntoIter = std::slice::Iter<'a, GpuTensor>;

    fn into_iter(self) -> Self::IntoIter {
        self.tensors.iter()
    }
}

/// The named tensors of a role, of the given lengths, in chunks the device can bind.
pub fn role_arena<'a>(
    gpu: &Gpu,
    label: &str,
    tensors: impl IntoIterator<Item = (&'a str, usize)>,
) -> Result<Role> {
    role_arena_with_runs(gpu, label, tensors, &[])
}

/// [`role_arena`] with each of `runs` (ranges of `tensors`, ascending and disjoint) packed as one
/// tensor ([`Arena::reserve_run`], [`Role::run`]).
pub fn role_arena_with_runs<'a>(
    gpu: &Gpu,
    label: &str,
    tensors: impl IntoIterator<Item = (&'a str, usize)>,
    runs: &[std::ops::Range<usize>],
) -> Result<Role> {
    let mut arena = Arena::new(gpu, label);
    let named: Vec<(String, usize)> =
        tensors.into_iter().map(|(name, len)| (format!("{label} {name}"), len)).collect();
    arena.reserve_role(&named, runs);
    let Allocation { views, chunks } = arena.finish(gpu)?;
    Ok(Role { tensors: views, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_fill_chunks_in_order_and_never_straddle_two() {
        let mut arena = Arena::with_limits("role", 256, 1024);
        for (name, len) in [("a", 100), ("b", 100), ("c", 200), ("d", 256), ("e", 1)] {
            arena.reserve(name, len);
        }
        // a at 0 (400 bytes), b at 512 (400), c (800) opens chunk 1, d (1024) fills chunk 2, e chunk 3.
        let placed: Vec<(usize, u64)> = arena.planned.iter().map(|p| (p.chunk, p.offset)).collect();
        assert_eq!(placed, [(0, 0), (0, 512), (1, 0), (2, 0), (3, 0)]);
        assert_eq!(arena.chunk_count(), 4);
        assert_eq!(arena.bytes(), 912 + 800 + 1024 + 4);
        for p in &arena.planned {
            assert!(p.offset + p.len as u64 * 4 <= 1024 && p.offset % 256 == 0, "{} straddles", p.name);
        }
        assert_eq!(arena.oversized(), None);
    }

    #[test]
    fn a_run_is_packed_end_to_end_in_one_chunk() {
        let mut arena = Arena::with_limits("role", 256, 1024);
        let tensors: Vec<(String, usize)> =
            [("a", 10), ("q", 9), ("k", 9), ("v", 9), ("o", 1), ("big", 200), ("up", 30)]
                .iter()
                .map(|&(n, l)| (n.to_string(), l))
                .collect();
        arena.reserve_role(&tensors, &[1..4, 5..7]);
        let placed: Vec<(usize, u64)> = arena.planned.iter().map(|p| (p.chunk, p.offset)).collect();
        // q, k, v follow each other with no alignment gap; big and up (920 bytes) open chunk 1 together.
        assert_eq!(placed, [(0, 0), (0, 256), (0, 292), (0, 328), (0, 512), (1, 0), (1, 800)]);
        assert_eq!(arena.planned.len(), tensors.len());
    }

    #[test]
    fn a_tensor_larger_than_a_chunk_is_named() {
        let mut arena = Arena::with_limits("role", 256, 1024);
        arena.reserve("small", 10);
        arena.reserve("huge", 257);
        assert_eq!(arena.oversized(), Some(("huge", 1028)));
    }
}

//! Compiling WGSL compute kernels: validation by naga first (clear errors with line numbers), then a
//! pipeline whose creation errors are captured instead of aborting the process.

use anyhow::{anyhow, bail, Result};

use super::Gpu;

/// A compute pipeline and its bind group layout (the shader's group 0).
#[derive(Clone, Debug)]
pub struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub name: String,
    /// Bindings of group 0 the entry point uses: its automatic layout holds only these.
    pub bindings: Vec<u32>,
}

impl Kernel {
    /// Binds `resources` to bindings 0, 1, 2, ... of group 0, leaving out those the entry point does not
    /// use (so entry points of one shader can share a launcher's binding list).
    pub fn bind(&self, gpu: &Gpu, resources: &[wgpu::BindingResource<'_>]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .enumerate()
            .filter(|(i, _)| self.bindings.contains(&(*i as u32)))
            .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.clone() })
            .collect();
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&self.name),
            layout: &self.layout,
            entries: &entries,
        })
    }
}

/// Parses and validates WGSL with naga, with every capability a device may offer: a shader that fails
/// here is wrong on every device.
pub fn validate_wgsl(name: &str, source: &str) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| anyhow!("shader {name} does not parse:\n{}", e.emit_to_string(source)))?;
    let info =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .map_err(|e| anyhow!("shader {name} is invalid:\n{}", e.emit_to_string(source)))?;
    Ok((module, info))
}

/// Group-0 bindings that entry point `entry` reads or writes.
fn used_bindings(module: &naga::Module, info: &naga::valid::ModuleInfo, entry: &str) -> Result<Vec<u32>> {
    let index = module
        .entry_points
        .iter()
        .position(|e| e.name == entry)
        .ok_or_else(|| anyhow!("shader has no entry point {entry:?}"))?;
    let function = info.get_entry_point(index);
    let mut bindings: Vec<u32> = module
        .global_variables
        .iter()
        .filter(|(handle, var)| {
            !function[*handle].is_empty() && var.binding.as_ref().is_some_and(|b| b.group == 0)
        })
        .map(|(_, var)| var.binding.as_ref().expect("filtered").binding)
        .collect();
    bindings.sort_unstable();
    Ok(bindings)
}

/// Compiles one entry point of `source`.
pub fn compile_compute(gpu: &Gpu, name: &str, source: &str, entry: &str) -> Result<Kernel> {
    let (module, info) = validate_wgsl(name, source)?;
    let bindings = used_bindings(&module, &info, entry).map_err(|e| anyhow!("shader {name}: {e}"))?;
    let index = module.entry_points.iter().position(|e| e.name == entry).expect("used_bindings found it");
    let needs = KernelNeeds::of_entry(&module, &info, index).map_err(|e| anyhow!("shader {name}: {e}"))?;
    if let Some(short) = needs.shortfall(&gpu.limits()) {
        bail!("kernel {name}::{entry} cannot run on this device: it {short}");
    }
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: None,
        module: &module,
        entry_point: Some(entry),
        // Every kernel writes its workgroup memory before reading it, so the zeroing WGSL would otherwise
        // add is waste. On GL it is worse than waste: naga zeroes an array with a constructor listing every
        // element, and llvmpipe took minutes to compile a training step's kernels and ran them 2x slower.
        compilation_options: wgpu::PipelineCompilationOptions {
            zero_initialize_workgroup_memory: false,
            ..Default::default()
        },
        cache: None,
    });
    if let Some(err) = pollster::block_on(scope.pop()) {
        bail!("the device rejected kernel {name}::{entry}: {err}");
    }
    let layout = pipeline.get_bind_group_layout(0);
    Ok(Kernel { pipeline, layout, name: format!("{name}::{entry}"), bindings })
}

/// The layout of a parameter struct: its size in bytes, and its fields' names and offsets in order,
/// padding (names starting with `_`) left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructLayout {
    pub size: usize,
    pub fields: Vec<(String, usize)>,
}

/// The [`StructLayout`] of a `#[repr(C)]` Rust struct, from the fields listed (padding left out):
/// `host_layout!(Params { m, n, k })`.
#[cfg(test)]
macro_rules! host_layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        $crate::gpu::StructLayout {
            size: std::mem::size_of::<$ty>(),
            fields: vec![$((stringify!($field).to_string(), std::mem::offset_of!($ty, $field))),*],
        }
    };
}
#[cfg(test)]
pub(crate) use host_layout;

/// The [`StructLayout`] naga gives the uniform at group 0, binding 0 (an op's `Params`).
pub fn uniform_layout(module: &naga::Module) -> Result<StructLayout> {
    let var = module
        .global_variables
        .iter()
        .map(|(_, var)| var)
        .find(|var| {
            var.space == naga::AddressSpace::Uniform
                && var.binding.as_ref().is_some_and(|b| b.group == 0 && b.binding == 0)
        })
        .ok_or_else(|| anyhow!("no uniform at group 0, binding 0"))?;
    let naga::TypeInner::Struct { members, span } = &module.types[var.ty].inner else {
        bail!("the uniform at group 0, binding 0 is not a struct");
    };
    let fields = members
        .iter()
        .filter_map(|m| m.name.clone().map(|name| (name, m.offset as usize)))
        .filter(|(name, _)| !name.starts_with('_'))
        .collect();
    Ok(StructLayout { size: *span as usize, fields })
}

/// How the host's layout of `what` differs from the shader's, one line per difference.
pub fn layout_differences(what: &str, host: &StructLayout, shader: &StructLayout) -> Vec<String> {
    let mut differences = Vec::new();
    if host.size != shader.size {
        differences.push(format!("{what}: {} bytes in Rust, {} in the shader", host.size, shader.size));
    }
    for i in 0..host.fields.len().max(shader.fields.len()) {
        match (host.fields.get(i), shader.fields.get(i)) {
            (Some(h), Some(s)) if h == s => {}
            (Some((name, offset)), Some((shader_name, shader_offset))) => differences.push(format!(
                "{what}: field {i} is {name} at byte {offset} in Rust, {shader_name} at byte {shader_offset} in \
                 the shader"
            )),
            (Some((name, _)), None) => differences.push(format!("{what}: the shader has no field {name}")),
            (None, Some((name, _))) => differences.push(format!("{what}: Rust has no field {name}")),
            (None, None) => unreachable!("i is below one of the lengths"),
        }
    }
    differences
}

/// What a shader asks of a device beyond its features: the most storage buffers one of its entry
/// points binds, and the most workgroup memory one declares. WebGPU guarantees 8 and 16 KiB; a device
/// may offer more (`ncalm info` prints its limits), and a kernel variant that needs more than it offers
/// is left out of that device's choices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelNeeds {
    pub storage_buffers: u32,
    pub workgroup_bytes: u32,
}

impl KernelNeeds {
    /// The needs of every entry point of `source`, the largest of each.
    pub fn of(name: &str, source: &str) -> Result<Self> {
        let (module, info) = validate_wgsl(name, source)?;
        (0..module.entry_points.len()).try_fold(Self::default(), |needs, index| {
            Ok(needs.max(Self::of_entry(&module, &info, index).map_err(|e| anyhow!("shader {name}: {e}"))?))
        })
    }

    /// The needs of entry point `index` of a validated module.
    fn of_entry(module: &naga::Module, info: &naga::valid::ModuleInfo, index: usize) -> Result<Self> {
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx())?;
        let function = info.get_entry_point(index);
        let mut needs = Self::default();
        for (_, var) in module.global_variables.iter().filter(|(handle, _)| !function[*handle].is_empty()) {
            match var.space {
                naga::AddressSpace::Storage { .. } => needs.storage_buffers += 1,
                naga::AddressSpace::WorkGroup => needs.workgroup_bytes += layouter[var.ty].size,
                _ => {}
            }
        }
        Ok(needs)
    }

    /// The larger of each need.
    pub fn max(self, other: Self) -> Self {
        Self {
            storage_buffers: self.storage_buffers.max(other.storage_buffers),
            workgroup_bytes: self.workgroup_bytes.max(other.workgroup_bytes),
        }
    }

    /// What `limits` fall short of, in words; `None` when they suffice.
    pub fn shortfall(&self, limits: &wgpu::Limits) -> Option<String> {
        let mut short = Vec::new();
        if self.storage_buffers > limits.max_storage_buffers_per_shader_stage {
            short.push(format!(
                "binds {} storage buffers in one shader, the device allows {}",
                self.storage_buffers, limits.max_storage_buffers_per_shader_stage
            ));
        }
        if self.workgroup_bytes > limits.max_compute_workgroup_storage_size {
            short.push(format!(
                "uses {} bytes of workgroup memory, the device allows {}",
                self.workgroup_bytes, limits.max_compute_workgroup_storage_size
            ));
        }
        (!short.is_empty()).then(|| short.join(" and "))
    }
}

/// A cooperative-matrix configuration a shader multiplies in (`coopMultiplyAdd`): A is m x k and B
/// k x n, of scalar `ab`; the accumulator C is m x n of scalar `cr`. A device runs the shader only where
/// its adapter lists the configuration ([`crate::Gpu::offers_cooperative`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CooperativeShape {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub ab: wgpu::CooperativeScalarType,
    pub cr: wgpu::CooperativeScalarType,
}

impl CooperativeShape {
    /// Whether `p`, a configuration an adapter lists, is this one.
    pub fn is(&self, p: &wgpu::CooperativeMatrixProperties) -> bool {
        (p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type) == (self.m, self.n, self.k, self.ab, self.cr)
    }

    /// The configurations of every `coopMultiplyAdd` in `source`, each once, in order of appearance.
    pub fn of(name: &str, source: &str) -> Result<Vec<Self>> {
        let (module, info) = validate_wgsl(name, source)?;
        let functions = module.functions.iter().map(|(h, f)| (f, &info[h]));
        let entries =
            module.entry_points.iter().enumerate().map(|(i, e)| (&e.function, info.get_entry_point(i)));
        let mut shapes = Vec::new();
        for (function, function_info) in functions.chain(entries) {
            for (_, expression) in function.expressions.iter() {
                let naga::Expression::CooperativeMultiplyAdd { a, c, .. } = *expression else { continue };
                let matrix = |e: naga::Handle<naga::Expression>| match *function_info[e]
                    .ty
                    .inner_with(&module.types)
                {
                    naga::TypeInner::CooperativeMatrix { columns, rows, scalar, .. } => {
                        Ok((rows as u32, columns as u32, cooperative_scalar(scalar)?))
                    }
                    ref other => bail!("shader {name}: a cooperative operand of type {other:?}"),
                };
                let ((m, k, ab), (_, n, cr)) = (matrix(a)?, matrix(c)?);
                let shape = Self { m, n, k, ab, cr };
                if !shapes.contains(&shape) {
                    shapes.push(shape);
                }
            }
        }
        Ok(shapes)
    }
}

/// wgpu's name of a cooperative matrix's scalar type.
fn cooperative_scalar(scalar: naga::Scalar) -> Result<wgpu::CooperativeScalarType> {
    Ok(match (scalar.kind, scalar.width) {
        (naga::ScalarKind::Float, 4) => wgpu::CooperativeScalarType::F32,
        (naga::ScalarKind::Float, 2) => wgpu::CooperativeScalarType::F16,
        (naga::ScalarKind::Sint, 4) => wgpu::CooperativeScalarType::I32,
        (naga::ScalarKind::Uint, 4) => wgpu::CooperativeScalarType::U32,
        _ => bail!("no cooperative matrices of {scalar:?}"),
    })
}

impl std::fmt::Display for CooperativeShape {
    /// `MxNxK A->C`, as [`crate::Gpu::cooperative_matrix_shapes`] lists an adapter's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ab, cr) = (super::scalar_name(self.ab), super::scalar_name(self.cr));
        write!(f, "{}x{}x{} {ab}->{cr}", self.m, self.n, self.k)
    }
}

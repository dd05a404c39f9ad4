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
        compilation_options: Default::default(),
        cache: None,
    });
    if let Some(err) = pollster::block_on(scope.pop()) {
        bail!("the device rejected kernel {name}::{entry}: {err}");
    }
    let layout = pipeline.get_bind_group_layout(0);
    Ok(Kernel { pipeline, layout, name: format!("{name}::{entry}"), bindings })
}

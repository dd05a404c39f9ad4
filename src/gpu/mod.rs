//! The GPU context: adapter choice, device creation (or a host application's own device), shader
//! compilation and buffer helpers shared by every kernel.

mod buffers;
mod kernels;
mod probe;
pub mod profiler;
mod recorder;
mod tensor;
pub mod tune;

pub use buffers::{storage_buffer, uniform_buffer, Readback};
#[cfg(test)]
pub(crate) use kernels::host_layout;
pub use kernels::{
    compile_compute, layout_differences, uniform_layout, validate_wgsl, CooperativeShape, Kernel,
    KernelNeeds, StructLayout,
};
pub use probe::{probe_rng, RngProbe, RNG_WGSL};
pub use profiler::{KernelSummary, KernelTiming, Profiler};
pub use recorder::{grid_1d, wgsl_consts, KernelCache, Recorder, ReducingShader, Shader, WgslConst};
pub use tensor::{role_arena, role_arena_with_runs, Allocation, Arena, GpuTensor, Role};

use anyhow::{anyhow, bail, Result};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// How to choose and open a device. Environment variables (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
/// `NCALM_DISABLE_FEATURES`) apply unless the fields set them explicitly.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends to consider, e.g. `Backends::VULKAN`; default: `WGPU_BACKEND` or all.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name; default: `WGPU_ADAPTER_NAME`.
    pub adapter_name: Option<String>,
    /// Optional features not to request even where offered ("f16", "subgroups", "timestamps", "coop"),
    /// to exercise fallbacks; default: the comma list in `NCALM_DISABLE_FEATURES`.
    pub disable_features: Option<Vec<String>>,
    /// Which of the equally good adapters to open: one process per GPU of a machine passes its rank
    /// among the machine's processes (taken modulo their number). Default: the first.
    pub local_rank: Option<usize>,
    /// The limits to request, each lowered to the adapter's where it offers less. Default: every limit
    /// the adapter offers, or WebGPU's defaults (`wgpu::Limits::default()`: 8 storage buffers per shader,
    /// 16 KiB of workgroup memory, 128 MiB bindings) when `NCALM_LIMITS=webgpu`, which shows what a
    /// host that lends a device opened with default limits gets.
    pub limits: Option<wgpu::Limits>,
}

/// A device and queue with what ncalm needs to know about them. Cloning is cheap (wgpu handles are
/// reference counted), so simulators and trainers keep their own copy.
#[derive(Clone, Debug)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// The adapter the device was opened on (its name, backend, type and driver).
    pub adapter_info: wgpu::AdapterInfo,
    /// Whether a host application lent the device ([`Gpu::from_device`]) rather than ncalm opening it.
    pub lent: bool,
    /// Errors the device reported outside any error scope (out of memory, device lost, validation),
    /// surfaced as `Err` by the next [`Gpu::wait`] instead of aborting the process.
    errors: Arc<Mutex<Vec<String>>>,
    /// Bytes of device-local memory, where the backend reports them (Vulkan).
    memory: Option<u64>,
    /// The cooperative-matrix (tensor-core) shapes the adapter offers; empty where it offers none, and
    /// for a borrowed device unless the host passes them ([`Gpu::with_cooperative_matrices`]).
    cooperative_matrices: Vec<wgpu::CooperativeMatrixProperties>,
    /// A smaller chunk size than the device allows, to exercise chunking (see [`Gpu::with_chunk_limit`]).
    chunk_limit: Option<u64>,
}

impl Gpu {
    /// Opens the best adapter: discrete, then integrated, then virtual, then CPU; Vulkan, Metal and
    /// DX12 before GL. Requests every limit the adapter offers (or those of `options.limits`) and the
    /// optional features it has.
    pub fn new(options: &GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    pub async fn new_async(options: &GpuOptions) -> Result<Self> {
        let backends = options.backends.or_else(wgpu::Backends::from_env).unwrap_or(wgpu::Backends::all());
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = instance.enumerate_adapters(backends).await;
        let wanted_name = options
            .adapter_name
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|s| !s.is_empty());
        let adapter =
            choose_adapter(adapters, wanted_name.as_deref(), backends, options.local_rank.unwrap_or(0))?;
        let info = adapter.get_info();
        let disabled = options.disable_features.clone().unwrap_or_else(|| {
            std::env::var("NCALM_DISABLE_FEATURES")
                .map(|v| v.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        });
        let features = adapter.features() & wanted_features(&disabled)?;
        let limits = match options.limits.clone() {
            Some(limits) => limits,
            None => limits_from_env()?.unwrap_or_else(|| adapter.limits()),
        }
        .or_worse_values_from(&adapter.limits());
        let open = |features: wgpu::Features| {
            adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("ncalm"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: experimental_opt_in(features),
                ..Default::default()
            })
        };
        let experimental = features & wgpu::Features::all_experimental_mask();
        let (device, queue) = match open(features).await {
            Ok(opened) => Ok(opened),
            // An experimental feature is the likeliest cause: the rest runs without it.
            Err(e) if !experimental.is_empty() => {
                eprintln!("note: opening the device with {experimental} failed ({e}); opening it without");
                open(features - experimental).await
            }
            Err(e) => Err(e),
        }
        .map_err(|e| {
            anyhow!("could not open a device on adapter {:?} ({:?}): {e}", info.name, info.backend)
        })?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("the device was lost ({reason:?}): {message}"));
            }
        });
        let memory = device_memory(&adapter);
        let cooperative_matrices =
            if adapter.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                adapter.cooperative_matrix_properties()
            } else {
                Vec::new()
            };
        Ok(Self {
            device,
            queue,
            adapter_info: info,
            lent: false,
            errors,
            memory,
            cooperative_matrices,
            chunk_limit: None,
        })
    }

    /// Borrows a host application's device and queue. ncalm then works within whatever limits and
    /// features the host requested; kernels that need more say so when they are created.
    ///
    /// Simulation and training run within WebGPU's default limits, leaving out the kernel variants
    /// that need more storage buffers or workgroup memory (see [`Gpu::fallbacks`]); a larger model needs
    /// tensors beyond the default 128 MiB binding. A host that trains asks for its adapter's limits
    /// (`required_limits: adapter.limits()`), as [`Gpu::new`] does, and for the optional features
    /// ncalm uses where offered (`required_features: adapter.features() & OPTIONAL_FEATURES`, see
    /// [`OPTIONAL_FEATURES`]).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        // The host keeps its own error handling for its device.
        Self {
            adapter_info: device.adapter_info(),
            lent: true,
            device,
            queue,
            errors: Arc::default(),
            memory: None,
            cooperative_matrices: Vec::new(),
            chunk_limit: None,
        }
    }

    /// The same borrowed device with the cooperative-matrix shapes its adapter lists
    /// (`adapter.cooperative_matrix_properties()`): a `wgpu::Device` does not tell them, so
    /// [`Gpu::from_device`] knows none, and the cooperative-matrix kernel runs on a host's device only
    /// where the host passes them here (and opened the device with
    /// `Features::EXPERIMENTAL_COOPERATIVE_MATRIX`).
    pub fn with_cooperative_matrices(mut self, shapes: Vec<wgpu::CooperativeMatrixProperties>) -> Self {
        self.cooperative_matrices = shapes;
        self
    }

    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    pub fn features(&self) -> wgpu::Features {
        self.device.features()
    }

    /// The cooperative-matrix shapes the adapter offers, as `MxNxK A->C` (e.g. `16x16x16 f16->f32`),
    /// where it has wgpu's experimental cooperative-matrix feature; tensor cores on NVIDIA GPUs.
    pub fn cooperative_matrix_shapes(&self) -> Vec<String> {
        self.cooperative_matrices.iter().map(cooperative_shape).collect()
    }

    /// Whether the device can multiply in cooperative matrices of `shape`: it has the feature and the
    /// adapter lists the shape.
    pub fn offers_cooperative(&self, shape: &CooperativeShape) -> bool {
        self.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            && self.cooperative_matrices.iter().any(|p| shape.is(p))
    }

    /// Bytes of device-local memory, where the backend reports them (Vulkan does; wgpu has no portable
    /// query, so other backends and borrowed devices say `None`).
    pub fn memory(&self) -> Option<u64> {
        self.memory
    }

    /// The most bytes one buffer of an [`Arena`] holds: what the device can bind as one storage buffer
    /// and allocate as one buffer, or less where [`with_chunk_limit`](Self::with_chunk_limit) says so.
    pub fn chunk_bytes(&self) -> u64 {
        let l = self.limits();
        let device = l.max_storage_buffer_binding_size.min(l.max_buffer_size) / 4 * 4;
        self.chunk_limit.map_or(device, |c| c.min(device))
    }

    /// The same device, splitting arenas into chunks of at most `bytes`: results do not depend on the
    /// chunk size, which tests show by forcing small ones.
    pub fn with_chunk_limit(mut self, bytes: u64) -> Self {
        self.chunk_limit = Some(bytes.max(4) / 4 * 4);
        self
    }

    /// A short description: adapter name and backend, and whether the host lent the device.
    pub fn describe(&self) -> String {
        let i = &self.adapter_info;
        let lent = if self.lent { ", the host's device" } else { "" };
        format!("{} ({:?}, {:?}{lent})", i.name, i.backend, i.device_type)
    }

    /// Whether the device is a CPU implementation (lavapipe, llvmpipe, WARP): slow, correctness only.
    pub fn is_cpu(&self) -> bool {
        self.adapter_info.device_type == wgpu::DeviceType::Cpu
    }

    /// Waits for all submitted work; fails with the first error the device reported since the last wait.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("waiting for the GPU failed: {e}"))?;
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = errors.first().cloned() {
            let more = errors.len() - 1;
            errors.clear();
            bail!(
                "the GPU reported an error{}: {first}",
                if more > 0 { format!(" (and {more} more)") } else { String::new() }
            );
        }
        Ok(())
    }

    /// What ncalm does instead of what this device lacks: the [`fallbacks`] of its missing features,
    /// and the kernel variants it cannot run, with why (a limit too low).
    pub fn fallbacks(&self) -> Vec<String> {
        let mut out: Vec<String> = fallbacks(self.features()).into_iter().map(String::from).collect();
        out.extend(crate::ops::variants_left_out(self).into_iter().map(|v| format!("{v}; the others run")));
        out
    }

    /// The report printed by `ncalm info`.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let i = &self.adapter_info;
        let lent = if self.lent { " (the host's device)" } else { "" };
        let _ = writeln!(s, "adapter        {}{lent}", i.name);
        let _ = writeln!(s, "backend        {:?}", i.backend);
        let _ = writeln!(s, "device type    {:?}", i.device_type);
        let _ = writeln!(s, "driver         {} {}", i.driver, i.driver_info);
        let _ = writeln!(s, "vendor/device  {:#06x}/{:#06x}", i.vendor, i.device);
        let _ = writeln!(s, "subgroup size  {}..{}", i.subgroup_min_size, i.subgroup_max_size);
        let l = self.limits();
        let f = self.features();
        let mib = |b: u64| format!("{} MiB", b >> 20);
        let memory = self.memory.map_or("not reported by this backend".to_string(), mib);
        let _ = writeln!(s, "device memory              {memory}");
        let _ = writeln!(s, "max buffer                 {}", mib(l.max_buffer_size));
        let _ = writeln!(s, "max storage binding        {}", mib(l.max_storage_buffer_binding_size));
        let _ = writeln!(s, "storage offset alignment   {} B", l.min_storage_buffer_offset_alignment);
        let _ = writeln!(s, "workgroup storage          {} KiB", l.max_compute_workgroup_storage_size / 1024);
        let _ = writeln!(s, "invocations per workgroup  {}", l.max_compute_invocations_per_workgroup);
        let _ = writeln!(s, "workgroups per dimension   {}", l.max_compute_workgroups_per_dimension);
        let _ = writeln!(s, "storage buffers per stage  {}", l.max_storage_buffers_per_shader_stage);
        let yes = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(s, "f16                        {}", yes(f.contains(wgpu::Features::SHADER_F16)));
        let _ = writeln!(s, "subgroups                  {}", yes(f.contains(wgpu::Features::SUBGROUP)));
        let _ =
            writeln!(s, "timestamp queries          {}", yes(f.contains(wgpu::Features::TIMESTAMP_QUERY)));
        let shapes = self.cooperative_matrix_shapes();
        let listed = if shapes.is_empty() { "none".to_string() } else { shapes.join(", ") };
        let _ = writeln!(s, "cooperative matrices       {listed}");
        let _ = writeln!(s, "cooperative matmul         {}", crate::ops::matmul::cooperative_report(self));
        let _ = writeln!(s, "cooperative attention      {}", crate::ops::attention::cooperative_report(self));
        let fallbacks = self.fallbacks();
        let listed = if fallbacks.is_empty() { "none".to_string() } else { fallbacks.join("; ") };
        let _ = writeln!(s, "fallbacks                  {listed}");
        if self.is_cpu() {
            let _ =
                writeln!(s, "note: a CPU implementation: correct but slow; use it for tests, not for timing");
        }
        s
    }

    /// The report as JSON, for tools.
    pub fn report_json(&self) -> serde_json::Value {
        let l = self.limits();
        let f = self.features();
        let i = &self.adapter_info;
        let info = serde_json::json!({
            "name": i.name, "backend": format!("{:?}", i.backend),
            "device_type": format!("{:?}", i.device_type), "driver": i.driver,
            "driver_info": i.driver_info, "vendor": i.vendor, "device": i.device,
            "subgroup_min_size": i.subgroup_min_size, "subgroup_max_size": i.subgroup_max_size,
            "lent_by_host": self.lent,
        });
        serde_json::json!({
            "adapter": info,
            "device_memory": self.memory,
            "limits": {
                "max_buffer_size": l.max_buffer_size,
                "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
                "min_storage_buffer_offset_alignment": l.min_storage_buffer_offset_alignment,
                "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
                "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
                "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
            },
            "features": {
                "f16": f.contains(wgpu::Features::SHADER_F16),
                "subgroups": f.contains(wgpu::Features::SUBGROUP),
                "timestamp_queries": f.contains(wgpu::Features::TIMESTAMP_QUERY),
                "cooperative_matrices": self.cooperative_matrix_shapes(),
            },
            "cooperative_matmul": crate::ops::matmul::cooperative_shortfall(self)
                .map_or(serde_json::Value::Bool(true), serde_json::Value::String),
            "cooperative_attention": crate::ops::attention::cooperative_shortfall(self)
                .map_or(serde_json::Value::Bool(true), serde_json::Value::String),
            "fallbacks": self.fallbacks(),
        })
    }
}

/// One cooperative-matrix shape as `MxNxK A->C`, the accumulator type last.
fn cooperative_shape(p: &wgpu::CooperativeMatrixProperties) -> String {
    let name = scalar_name;
    let saturating = if p.saturating_accumulation { " (saturating)" } else { "" };
    format!("{}x{}x{} {}->{}{saturating}", p.m_size, p.n_size, p.k_size, name(p.ab_type), name(p.cr_type))
}

/// The WGSL name of a cooperative matrix's scalar type.
fn scalar_name(t: wgpu::CooperativeScalarType) -> &'static str {
    match t {
        wgpu::CooperativeScalarType::F32 => "f32",
        wgpu::CooperativeScalarType::F16 => "f16",
        wgpu::CooperativeScalarType::I32 => "i32",
        wgpu::CooperativeScalarType::U32 => "u32",
    }
}

/// What ncalm does instead where the device lacks an optional feature (`ncalm info` lists them).
pub fn fallbacks(features: wgpu::Features) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !features.contains(wgpu::Features::SUBGROUP) {
        out.push("reductions through workgroup memory, not subgroups");
    }
    if !features.contains(wgpu::Features::SHADER_F16) {
        out.push("f32 matmuls only (precision f16 is refused)");
    }
    if !features.contains(wgpu::Features::TIMESTAMP_QUERY) {
        out.push("the profiler times each dispatch by the wall clock");
    }
    out
}

/// The largest device-local memory heap of a Vulkan adapter; `None` on other backends.
fn device_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    #[cfg(any(target_os = "linux", target_os = "windows", target_os = "android"))]
    {
        // SAFETY: the Vulkan handles are only read, and the adapter outlives this call.
        let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
        let instance = hal.shared_instance().raw_instance();
        let properties = unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
        const DEVICE_LOCAL: u32 = 0x1;
        properties
            .memory_heaps_as_slice()
            .iter()
            .filter(|heap| heap.flags.as_raw() & DEVICE_LOCAL != 0)
            .map(|heap| heap.size)
            .max()
    }
    #[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "android")))]
    {
        let _ = adapter;
        None
    }
}

/// The optional features ncalm uses where a device has them (f16 matmuls, subgroup reductions, GPU
/// timestamps); without them it falls back (see [`fallbacks`]). [`Gpu::new`] requests those its adapter
/// offers; a host lending its device asks for `adapter.features() & OPTIONAL_FEATURES` to get the same.
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

/// The experimental features ncalm uses where offered: cooperative matrices, for the tensor-core matmul
/// (`ops::matmul::Variant::Coop16`). Not among [`OPTIONAL_FEATURES`], since a device with them must be
/// opened with wgpu's unsafe opt-in (see `Gpu::new`); a host lending its device decides that.
pub const EXPERIMENTAL_FEATURES: wgpu::Features = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;

/// wgpu's opt-in to the experimental features among `features`, which it requires before opening a
/// device with any (disabled where there are none).
fn experimental_opt_in(features: wgpu::Features) -> wgpu::ExperimentalFeatures {
    if !features.intersects(wgpu::Features::all_experimental_mask()) {
        return wgpu::ExperimentalFeatures::disabled();
    }
    // SAFETY: the opt-in is unsafe because an experimental feature may still have bugs in wgpu that
    // cause undefined behaviour when it is used. The only one requested is cooperative matrices
    // (EXPERIMENTAL_FEATURES), and only one kernel uses them: `shaders/matmul_coop.wgsl`, on the 16x16x16
    // f16->f32 shape, and only where the adapter lists that shape (`VariantTable::shortfall`). For the
    // other kernels the feature changes only what the device enables (Vulkan's cooperative-matrix
    // extension and memory-model features), not their code: naga 30 declares the Vulkan memory model
    // and the cooperative-matrix capability only in modules that use cooperative types. The kernel runs in
    // training only after tuning on the device finds its output agrees with the f32 kernels'
    // (`ops::matmul::pick_half`). `NCALM_DISABLE_FEATURES=coop` opens the device without it.
    unsafe { wgpu::ExperimentalFeatures::enabled() }
}

/// The limits `NCALM_LIMITS` names: `webgpu` for WebGPU's defaults, `adapter` (or unset) for all the
/// adapter offers.
fn limits_from_env() -> Result<Option<wgpu::Limits>> {
    match std::env::var("NCALM_LIMITS").unwrap_or_default().trim().to_lowercase().as_str() {
        "" | "adapter" => Ok(None),
        "webgpu" => Ok(Some(wgpu::Limits::default())),
        other => bail!("NCALM_LIMITS={other:?}: expected webgpu or adapter"),
    }
}

/// The optional features ncalm asks for, less those disabled by name.
fn wanted_features(disabled: &[String]) -> Result<wgpu::Features> {
    let mut features = OPTIONAL_FEATURES | EXPERIMENTAL_FEATURES;
    for name in disabled {
        match name.as_str() {
            "f16" => features.remove(wgpu::Features::SHADER_F16),
            "subgroups" => features.remove(wgpu::Features::SUBGROUP),
            "timestamps" => features.remove(
                wgpu::Features::TIMESTAMP_QUERY
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            ),
            "coop" => features.remove(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            other => {
                bail!("unknown feature {other:?} to disable: expected f16, subgroups, timestamps or coop")
            }
        }
    }
    Ok(features)
}

fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    };
    (device, backend)
}

fn choose_adapter(
    adapters: Vec<wgpu::Adapter>,
    name: Option<&str>,
    backends: wgpu::Backends,
    local_rank: usize,
) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        bail!(
            "no GPU adapter found (backends {backends:?}). Install a GPU driver with Vulkan, Metal or DX12 \
             support; on Linux without a GPU, Mesa's lavapipe gives a CPU Vulkan device \
             (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1). WGPU_BACKEND restricts the \
             backends searched."
        );
    }
    let names: Vec<String> =
        adapters.iter().map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend)).collect();
    let mut candidates: Vec<wgpu::Adapter> = match name {
        Some(want) => {
            let want = want.to_lowercase();
            adapters.into_iter().filter(|a| a.get_info().name.to_lowercase().contains(&want)).collect()
        }
        None => adapters,
    };
    if candidates.is_empty() {
        bail!("no adapter name contains {:?}; available: {}", name.unwrap_or(""), names.join(", "));
    }
    // The best kind of adapter; among several of it (a machine's GPUs), the local rank's.
    candidates.sort_by_key(|a| adapter_rank(&a.get_info()));
    let best = adapter_rank(&candidates[0].get_info());
    let equals = candidates.iter().take_while(|a| adapter_rank(&a.get_info()) == best).count();
    Ok(candidates.swap_remove(local_rank % equals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_feature_names_its_fallback() {
        assert!(fallbacks(
            wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY
        )
        .is_empty());
        let all = fallbacks(wgpu::Features::empty());
        assert_eq!(all.len(), 3);
        assert!(
            fallbacks(wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY)[0].contains("subgroups")
        );
    }

    #[test]
    fn unknown_disabled_feature_is_an_error() {
        assert!(wanted_features(&["f16".into()]).unwrap().contains(wgpu::Features::SUBGROUP));
        assert!(!wanted_features(&["f16".into()]).unwrap().contains(wgpu::Features::SHADER_F16));
        let err = wanted_features(&["tensor-cores".into()]).unwrap_err().to_string();
        assert!(err.contains("tensor-cores"));
        // Cooperative matrices are asked for where offered, and can be left out by name.
        assert!(wanted_features(&[]).unwrap().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX));
        let without = wanted_features(&["coop".into()]).unwrap();
        assert!(!without.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX));
        assert!(without.contains(wgpu::Features::SHADER_F16));
    }

    #[test]
    fn cooperative_shapes_read_as_m_n_k_and_types() {
        let p = wgpu::CooperativeMatrixProperties {
            m_size: 16,
            n_size: 16,
            k_size: 16,
            ab_type: wgpu::CooperativeScalarType::F16,
            cr_type: wgpu::CooperativeScalarType::F32,
            saturating_accumulation: false,
        };
        assert_eq!(cooperative_shape(&p), "16x16x16 f16->f32");
        // A shader's need reads the same way, and an adapter's listing satisfies it exactly.
        let need = CooperativeShape {
            m: 16,
            n: 16,
            k: 16,
            ab: wgpu::CooperativeScalarType::F16,
            cr: wgpu::CooperativeScalarType::F32,
        };
        assert_eq!(need.to_string(), "16x16x16 f16->f32");
        assert!(need.is(&p));
        assert!(
            !need.is(&wgpu::CooperativeMatrixProperties { cr_type: wgpu::CooperativeScalarType::F16, ..p })
        );
        assert!(!need.is(&wgpu::CooperativeMatrixProperties { m_size: 8, n_size: 8, k_size: 8, ..p }));
    }

    #[test]
    fn no_adapters_says_how_to_get_one() {
        let err = choose_adapter(vec![], None, wgpu::Backends::VULKAN, 0).unwrap_err().to_string();
        assert!(err.contains("lavapipe") && err.contains("mesa-vulkan-drivers"));
    }
}

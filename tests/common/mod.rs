//! Shared helpers of the GPU integration tests. They need a device: on machines without a GPU, Mesa's
//! lavapipe provides one (`.ci/run` installs it).
#![allow(dead_code)]

use std::process::{Command, Output};

use ncalm::{Gpu, GpuOptions};

pub fn gpu() -> Gpu {
    Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("GPU tests need a device: {e:#}"))
}

/// A device for each build of the ops that reduce across a workgroup (`ReducingShader`): the default
/// device, which takes the subgroup build where it has subgroups, and then the same adapter with
/// subgroups disabled, for the workgroup-tree build. Both builds are tested on any adapter with subgroups.
pub fn reduction_gpus() -> Vec<(&'static str, Gpu)> {
    let gpu = gpu();
    if !gpu.features().contains(ncalm::wgpu::Features::SUBGROUP) {
        println!("this adapter has no subgroups: testing the workgroup-tree build only");
        return vec![("workgroup tree", gpu)];
    }
    let options = GpuOptions { disable_features: Some(vec!["subgroups".into()]), ..GpuOptions::default() };
    let tree = Gpu::new(&options).expect("the same adapter without subgroups");
    assert!(!tree.features().contains(ncalm::wgpu::Features::SUBGROUP));
    vec![("subgroups", gpu), ("workgroup tree", tree)]
}

/// Says that `what` is not tested on this device, and `why` (a feature it lacks, a limit too low):
/// `ncalm info` lists the same kernels under fallbacks.
pub fn skipped(what: &str, why: &str) {
    eprintln!("skipped on this device: {what}: {why}");
}

/// Runs the `ncalm` binary.
pub fn ncalm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ncalm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap()
}

/// Runs `ncalm`, requires success, and returns standard output and error together.
pub fn ok(args: &[&str]) -> String {
    let out = ncalm(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ncalm {args:?} failed:\n{text}");
    text
}

/// A small text corpus of generated Rust functions, tokenized with the byte tokenizer into
/// `dir/corpus` (`extra`: more `ncalm tokenize` flags); returns its path.
pub fn code_corpus(dir: &std::path::Path, extra: &[&str]) -> String {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        let text: String =
            (0..60).map(|j| format!("fn item_{i}_{j}(x: u32) -> u32 {{ x * {j} + {i} }}\n")).collect();
        std::fs::write(src.join(format!("f{i}.rs")), text).unwrap();
    }
    let out = dir.join("corpus");
    let mut args =
        vec!["tokenize", src.to_str().unwrap(), "--out", out.to_str().unwrap(), "--tokenizer", "bytes"];
    args.extend_from_slice(extra);
    ok(&args);
    out.to_str().unwrap().to_string()
}

/// (step, loss, gradient norm) of every training step a run's `metrics.jsonl` logged.
pub fn logged_steps(run: &std::path::Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap(), v["grad_norm"].as_f64().unwrap()))
        .collect()
}

/// A small tmpfs mounted at `dir` (needs root and mount permission), unmounted when dropped: a disk
/// that fills.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn mount(dir: &std::path::Path, mib: u32) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let size = format!("size={mib}m");
        let mounted =
            Command::new("mount").args(["-t", "tmpfs", "-o", &size, "tmpfs", dir.to_str()?]).status();
        mounted.is_ok_and(|s| s.success()).then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The built example `name`. `cargo test` builds the examples; a filtered `cargo test --test ...`
/// does not, so then it is built here with the test's profile.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let example = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !example.exists() {
        let profile = if cfg!(debug_assertions) { "dev" } else { "release" };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", name, "--profile", profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building the example {name} failed");
    }
    example
}

/// Runs `ncalm`, requires failure with an error mentioning `expect`, and no panic.
pub fn fails(args: &[&str], expect: &str) {
    let out = ncalm(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ncalm {args:?} should fail");
    assert!(err.contains(expect), "ncalm {args:?}: error should mention {expect:?}, got:\n{err}");
    assert!(!err.contains("panicked"), "ncalm {args:?} panicked:\n{err}");
}

/// One forward and backward pass on `data`, with the dropout and fire masks of `key` and the loss scaled by
/// 1 / its counted targets, by the reference (on `params`) and by `model`: returns the reference's pass
/// and the GPU's per-position losses and gradients.
pub fn reference_and_gpu_pass(
    gpu: &Gpu,
    model: &ncalm::model::gpu::GpuModel,
    params: &[Vec<f64>],
    data: &ncalm::model::reference::Batch,
    key: Option<u64>,
) -> (ncalm::model::reference::ForwardBackward, Vec<f32>, Vec<Vec<f32>>) {
    let scale = 1.0 / data.counted() as f64;
    let want = ncalm::model::reference::forward_backward(&model.cfg, params, &model.index, data, scale, key);
    model.set_batch(&data.ids, &data.targets).unwrap();
    let mut rec = ncalm::gpu::Recorder::new(gpu, &model.cache);
    model.zero_grads(&mut rec);
    model.forward(&mut rec, scale as f32, key, None).unwrap();
    model.backward(&mut rec, key).unwrap();
    rec.submit();
    (want, gpu.read(model.losses()).unwrap(), model.read_grads().unwrap())
}

/// The f64 reference's side of an optimiser run that the GPU model takes step for step: its parameters
/// and Adam moments.
pub struct ReferenceAdam {
    pub params: Vec<Vec<f64>>,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    base: ncalm::ops::adamw::AdamParams,
    /// Weight decay for matrices only.
    pub decay_2d_only: bool,
    /// Tensors the optimiser leaves alone (and the gradient norm leaves out).
    pub frozen: Vec<usize>,
    /// Relative error allowed in the squared gradient norm (1e-4; more for half precision).
    pub norm_tolerance: f64,
}

impl ReferenceAdam {
    pub fn new(params: Vec<Vec<f64>>, base: ncalm::ops::adamw::AdamParams) -> Self {
        let m: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        Self { v: m.clone(), m, params, base, decay_2d_only: false, frozen: Vec::new(), norm_tolerance: 1e-4 }
    }

    /// Optimiser step `step` on `data` (its step key is the step number) by the reference and by `model`;
    /// checks the squared gradient norm clipping saw and returns (GPU loss, reference loss), each the
    /// mean over the counted targets.
    pub fn step(
        &mut self,
        gpu: &Gpu,
        model: &ncalm::model::gpu::GpuModel,
        data: &ncalm::model::reference::Batch,
        step: u64,
    ) -> (f64, f64) {
        use ncalm::ops::adamw;
        let scale = 1.0 / data.counted() as f64;
        let key = Some(step);
        let pass = ncalm::model::reference::forward_backward(
            &model.cfg,
            &self.params,
            &model.index,
            data,
            scale,
            key,
        );
        let want_loss: f64 = pass.losses.iter().sum::<f64>() * scale;
        let trained = |i: &usize| !self.frozen.contains(i);
        let norm_sq: f64 =
            (0..self.params.len()).filter(trained).flat_map(|i| &pass.grads[i]).map(|g| g * g).sum();
        let p = adamw::AdamParams { step, ..self.base };
        for i in (0..self.params.len()).filter(trained) {
            let mut p = p;
            if self.decay_2d_only && !model.infos[i].is_matrix() {
                p.weight_decay = 0.0;
            }
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            adamw::reference::step(&mut self.params[i], &pass.grads[i], m, v, norm_sq, &p);
        }
        model.set_batch(&data.ids, &data.targets).unwrap();
        let mut rec = ncalm::gpu::Recorder::new(gpu, &model.cache);
        model.zero_grads(&mut rec);
        model.forward(&mut rec, scale as f32, key, None).unwrap();
        model.backward(&mut rec, key).unwrap();
        model.optimizer_step(&mut rec, &p, self.decay_2d_only, &self.frozen).unwrap();
        rec.submit();
        let got_loss = f64::from(gpu.read::<f32>(model.loss_sum()).unwrap()[0]) * scale;
        // Adam all but ignores a common scale of the gradients, so clipping is checked at its input.
        let got_norm_sq = f64::from(gpu.read::<f32>(model.norm_sq()).unwrap()[0]);
        let rel = (got_norm_sq - norm_sq).abs() / norm_sq;
        assert!(
            rel < 1e-3,
            "step {step}: squared gradient norm {got_norm_sq} on the GPU, {norm_sq} by the reference"
        );
        (got_loss, want_loss)
    }
}

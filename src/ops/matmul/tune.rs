//! Autotuning of the matmul variant. The first product of each shape class on an adapter times every
//! variant at that shape and keeps the fastest. The choices persist in `matmul-tune.json` under the
//! user's cache directory, per adapter and driver, so later runs start tuned.
//!
//! `NCALM_AUTOTUNE=1|0` turns tuning on or off (default: on, except on CPU adapters, whose timings
//! rank kernels differently from GPUs); `NCALM_CACHE_DIR` moves the file; `NCALM_MATMUL` forces a variant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;

use super::{matmul_with, MatmulShape, Variant};
use crate::gpu::{Gpu, KernelCache, Recorder};
use crate::util::write_atomic;

pub const FILE: &str = "matmul-tune.json";

/// Products per timed round, and rounds per variant (after one untimed run that compiles it): the best
/// round counts, so that one slow round (a clock change, another process) does not decide.
const REPS: u32 = 3;
const ROUNDS: u32 = 3;

/// Where the choices persist: `$NCALM_CACHE_DIR`, else `$XDG_CACHE_HOME/ncalm`, else `~/.cache/ncalm`.
pub fn cache_path() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = var("NCALM_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("ncalm")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("ncalm")))?;
    Some(dir.join(FILE))
}

/// Whether products on this adapter are tuned (see the module docs).
pub fn enabled(gpu: &Gpu) -> bool {
    match std::env::var("NCALM_AUTOTUNE").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => !gpu.is_cpu(),
    }
}

/// The shape class: the layout and every dimension rounded up to a power of two.
fn class(shape: &MatmulShape) -> String {
    let layout = |t: bool| if t { 't' } else { 'n' };
    format!(
        "{}{} m{} n{} k{}",
        layout(shape.trans_a),
        layout(shape.trans_b),
        shape.m.next_power_of_two(),
        shape.n.next_power_of_two(),
        shape.k.next_power_of_two()
    )
}

/// The adapter and driver the timings belong to.
pub fn adapter_key(gpu: &Gpu) -> String {
    match &gpu.adapter_info {
        Some(i) => format!("{} | {:?} | {} {}", i.name, i.backend, i.driver, i.driver_info),
        None => "host-provided device".into(),
    }
}

/// Tuned choices of every adapter in one file: adapter -> shape class -> variant name.
pub struct Tuner {
    path: Option<PathBuf>,
    choices: BTreeMap<String, BTreeMap<String, String>>,
    /// Classes whose timing failed (e.g. no memory beside a model for the buffers), kept to the rule for
    /// this process and never saved.
    untuned: BTreeMap<String, Variant>,
}

impl Tuner {
    /// Reads the choices at `path` (None: keep them in memory only). A missing file starts empty; an
    /// unreadable one is reported and replaced, since it only holds timings.
    pub fn open(path: Option<PathBuf>) -> Self {
        let choices = path
            .as_deref()
            .filter(|p| p.exists())
            .and_then(|p| {
                match std::fs::read(p)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| Ok(serde_json::from_slice(&b)?))
                {
                    Ok(c) => Some(c),
                    Err(e) => {
                        eprintln!("warning: ignoring matmul tuning file {}: {e}", p.display());
                        None
                    }
                }
            })
            .unwrap_or_default();
        Self { path, choices, untuned: BTreeMap::new() }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Shape classes tuned on `gpu`'s adapter and driver.
    pub fn tuned(&self, gpu: &Gpu) -> usize {
        self.choices.get(&adapter_key(gpu)).map_or(0, BTreeMap::len)
    }

    /// The variant for `shape` on `gpu`: the recorded choice, or the fastest of a timing run now (then
    /// recorded and saved). The flag says whether it was timed now.
    pub fn choose(&mut self, gpu: &Gpu, shape: &MatmulShape) -> Result<(Variant, bool)> {
        let (adapter, key) = (adapter_key(gpu), class(shape));
        let known = self.choices.get(&adapter).and_then(|c| c.get(&key));
        if let Some(v) = known.and_then(|name| Variant::ALL.into_iter().find(|v| v.name() == name)) {
            return Ok((v, false));
        }
        if let Some(&v) = self.untuned.get(&key) {
            return Ok((v, false));
        }
        let best = match fastest(gpu, shape) {
            Ok(v) => v,
            Err(e) => {
                let v = Variant::for_rule(shape.m, shape.n);
                eprintln!("warning: matmul class {key} was not tuned ({e:#}); it uses {}", v.name());
                self.untuned.insert(key, v);
                return Ok((v, false));
            }
        };
        self.choices.entry(adapter).or_default().insert(key, best.name().to_string());
        if let Some(path) = &self.path {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_atomic(path, (serde_json::to_string_pretty(&self.choices)? + "\n").as_bytes())?;
        }
        Ok((best, true))
    }
}

/// Times every variant at `shape` on buffers of its own and returns the fastest.
fn fastest(gpu: &Gpu, shape: &MatmulShape) -> Result<Variant> {
    let (m, n, k) = (shape.m as usize, shape.n as usize, shape.k as usize);
    let (a, b, c) =
        (gpu.tensor(m * k, "tune a")?, gpu.tensor(k * n, "tune b")?, gpu.tensor(m * n, "tune c")?);
    // A cache of its own, so that no attached profiler times the tuning.
    let cache = KernelCache::default();
    let mut best = (f64::INFINITY, Variant::for_rule(shape.m, shape.n));
    for variant in Variant::ALL {
        let run = |reps: u32| -> Result<f64> {
            let start = Instant::now();
            let mut rec = Recorder::new(gpu, &cache);
            for _ in 0..reps {
                matmul_with(&mut rec, &a, &b, &c, shape, None, variant)?;
            }
            rec.submit();
            gpu.wait()?;
            Ok(start.elapsed().as_secs_f64())
        };
        run(1)?;
        let mut seconds = f64::INFINITY;
        for _ in 0..ROUNDS {
            seconds = seconds.min(run(REPS)?);
        }
        if seconds < best.0 {
            best = (seconds, variant);
        }
    }
    Ok(best.1)
}

static TUNER: Mutex<Option<Tuner>> = Mutex::new(None);

/// The variant [`matmul`](super::matmul) uses: forced, tuned, or by rule (see the module docs).
pub fn pick(gpu: &Gpu, shape: &MatmulShape) -> Result<Variant> {
    if let Some(forced) = super::forced_variant() {
        return Ok(forced);
    }
    if !enabled(gpu) {
        return Ok(Variant::for_rule(shape.m, shape.n));
    }
    let mut tuner = TUNER.lock().unwrap_or_else(|p| p.into_inner());
    let tuner = tuner.get_or_insert_with(|| Tuner::open(cache_path()));
    Ok(tuner.choose(gpu, shape)?.0)
}

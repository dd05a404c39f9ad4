//! Autotuning of kernel variants. The first dispatch of each shape class on an adapter checks every
//! variant of the op at that shape against the op's reference variant, on the same inputs, leaves out
//! any that disagrees (with a warning naming it), times the rest and keeps the fastest. The choices
//! persist in `kernel-tune.json` under the user's cache directory, per adapter and driver and per
//! version of each variant's shader source, so later runs start tuned and an edited kernel is tuned
//! again. The ops name
//! their classes and time them (`ops::matmul`, `ops::attention`); each lists its variants in one
//! [`VariantTable`], which serves forcing by environment variable, tuning, and the registry of shaders.
//!
//! `NCALM_AUTOTUNE=1|0` turns tuning on or off (default: on, except on CPU adapters, whose timings
//! rank kernels differently from GPUs); `NCALM_CACHE_DIR` moves the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use anyhow::Result;

use super::{CooperativeShape, Gpu, KernelCache, KernelNeeds, Recorder, Shader};
use crate::util::write_atomic;

pub const FILE: &str = "kernel-tune.json";

/// Dispatches per timed round, and rounds per variant (after one untimed run that compiles it): the
/// best round counts, so that one slow round (a clock change, another process) does not decide.
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

/// Whether kernels are tuned on this adapter (see the module docs).
pub fn enabled(gpu: &Gpu) -> bool {
    match std::env::var("NCALM_AUTOTUNE").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => !gpu.is_cpu(),
    }
}

/// The adapter and driver the timings belong to.
pub fn adapter_key(gpu: &Gpu) -> String {
    let i = &gpu.adapter_info;
    format!("{} | {:?} | {} {}", i.name, i.backend, i.driver, i.driver_info)
}

/// Seconds per dispatch of the work `record` records: the best of a few rounds, on a kernel cache of its
/// own so that no attached profiler times the tuning.
pub fn best_time(gpu: &Gpu, record: &dyn Fn(&mut Recorder) -> Result<()>) -> Result<f64> {
    let cache = KernelCache::default();
    let run = |reps: u32| -> Result<f64> {
        let start = Instant::now();
        let mut rec = Recorder::new(gpu, &cache);
        for _ in 0..reps {
            record(&mut rec)?;
        }
        rec.submit();
        gpu.wait()?;
        Ok(start.elapsed().as_secs_f64() / f64::from(reps))
    };
    run(1)?;
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        best = best.min(run(REPS)?);
    }
    Ok(best)
}

/// What tuning learns of one variant at one shape.
#[derive(Clone, Debug, PartialEq)]
pub enum Trial {
    /// Seconds per dispatch.
    Seconds(f64),
    /// Its output disagrees with the reference variant's on the same inputs: how.
    Disagrees(String),
}

/// How `candidate` differs from `reference`, the same op's output from the reference variant, if it
/// does: an element further from the reference than `tolerance` times the reference's largest
/// magnitude (which leaves room for another order of summation, not for a wrong result), or a
/// non-finite element where the reference has a finite one.
pub fn disagreement(reference: &[f32], candidate: &[f32], tolerance: f32) -> Option<String> {
    if reference.len() != candidate.len() {
        return Some(format!("{} values where the reference has {}", candidate.len(), reference.len()));
    }
    let scale = reference.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE);
    let (worst, at) = reference
        .iter()
        .zip(candidate)
        .map(|(r, c)| if r.is_finite() && !c.is_finite() { f32::INFINITY } else { (r - c).abs() / scale })
        .enumerate()
        .fold((0.0f32, 0), |best, (i, e)| if e > best.0 { (e, i) } else { best });
    (worst > tolerance).then(|| {
        format!(
            "element {at} is {} where the reference has {} (error {worst:.1e} of the largest magnitude {scale:.3e})",
            candidate[at], reference[at]
        )
    })
}

/// A stable 64-bit FNV-1a hash (the standard hasher may change between Rust releases, and the tuning
/// file outlives them).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Tuned choices of every adapter in one file: adapter -> shape class -> variant name.
pub struct Tuner {
    path: Option<PathBuf>,
    choices: BTreeMap<String, BTreeMap<String, String>>,
    /// Classes whose timing failed (e.g. no memory beside a model for the buffers), kept to the fallback
    /// for this process and never saved.
    untuned: BTreeMap<String, String>,
}

impl Tuner {
    /// Reads the choices at `path` (None: keep them in memory only). A missing file starts empty; an
    /// unreadable one is reported and replaced, since it only holds timings.
    pub fn open(path: Option<PathBuf>) -> Self {
        let read = |p: &Path| -> Result<BTreeMap<String, BTreeMap<String, String>>> {
            Ok(serde_json::from_slice(&std::fs::read(p)?)?)
        };
        let choices = match path.as_deref().filter(|p| p.exists()) {
            Some(p) => read(p).unwrap_or_else(|e| {
                eprintln!("warning: ignoring kernel tuning file {}: {e}", p.display());
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
        Self { path, choices, untuned: BTreeMap::new() }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Shape classes tuned on `gpu`'s adapter and driver.
    pub fn tuned(&self, gpu: &Gpu) -> usize {
        self.choices.get(&adapter_key(gpu)).map_or(0, BTreeMap::len)
    }

    /// The variant of `class` on `gpu`, one of `candidates` (name and a hash of its shader source):
    /// the recorded choice among these versions of these variants, or else the fastest by `trial`,
    /// then recorded and saved. A variant whose trial finds it disagreeing with the reference is left
    /// out with a warning. Where a trial fails, `fallback` for the rest of the process. The flag says
    /// whether it was timed now.
    pub fn choose(
        &mut self,
        gpu: &Gpu,
        class: &str,
        candidates: &[(&str, u64)],
        fallback: &str,
        trial: &mut dyn FnMut(&str) -> Result<Trial>,
    ) -> Result<(String, bool)> {
        let adapter = adapter_key(gpu);
        // A choice holds among the variants, and the versions of them, it was timed against: a new
        // variant, or an edited one, gets timed too.
        let versions: Vec<String> =
            candidates.iter().map(|(name, hash)| format!("{name}@{hash:016x}")).collect();
        let class = &format!("{class} among {}", versions.join(","));
        let known = self.choices.get(&adapter).and_then(|c| c.get(class));
        if let Some(name) = known.filter(|n| candidates.iter().any(|(c, _)| c == n)) {
            return Ok((name.clone(), false));
        }
        if let Some(name) = self.untuned.get(class) {
            return Ok((name.clone(), false));
        }
        let mut best = (f64::INFINITY, fallback);
        for &(name, _) in candidates {
            match trial(name) {
                Ok(Trial::Seconds(seconds)) if seconds < best.0 => best = (seconds, name),
                Ok(Trial::Seconds(_)) => {}
                Ok(Trial::Disagrees(why)) => {
                    eprintln!("warning: kernel {name} disagrees with {fallback}'s output at {class} ({why}); it is left out")
                }
                Err(e) => {
                    eprintln!("warning: {class} was not tuned ({e:#}); it uses {fallback}");
                    self.untuned.insert(class.to_string(), fallback.to_string());
                    return Ok((fallback.to_string(), false));
                }
            }
        }
        let best = best.1.to_string();
        self.choices.entry(adapter).or_default().insert(class.to_string(), best.clone());
        if let Some(path) = &self.path {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_atomic(path, (serde_json::to_string_pretty(&self.choices)? + "\n").as_bytes())?;
        }
        Ok((best, true))
    }
}

static TUNER: Mutex<Option<Tuner>> = Mutex::new(None);

/// [`Tuner::choose`] on the process's tuner (the user's file), or `fallback` where tuning is off.
pub fn pick(
    gpu: &Gpu,
    class: &str,
    candidates: &[(&str, u64)],
    fallback: &str,
    trial: &mut dyn FnMut(&str) -> Result<Trial>,
) -> Result<String> {
    if !enabled(gpu) {
        return Ok(fallback.to_string());
    }
    let mut tuner = TUNER.lock().unwrap_or_else(|p| p.into_inner());
    let tuner = tuner.get_or_insert_with(|| Tuner::open(cache_path()));
    Ok(tuner.choose(gpu, class, candidates, fallback, trial)?.0)
}

/// One kernel variant of an op: the same contract as its siblings, another way of doing the work.
#[derive(Debug)]
pub struct KernelVariant<V: 'static> {
    pub variant: V,
    /// Its name in the op's environment variable and in `kernel-tune.json`.
    pub name: &'static str,
    /// Its shaders: one per operand layout where the op compiles the layout in (matmul's nn, nt, tn,
    /// tt), else one. Profiles name kernels after them.
    pub shaders: &'static [Shader],
    /// Rows x columns of the output one workgroup covers.
    pub tile: [u32; 2],
    /// What the adapter must offer to run it (and, with EXPERIMENTAL_COOPERATIVE_MATRIX, the shapes its
    /// shaders multiply in, which the table reads from them).
    pub requires: wgpu::Features,
    /// Whether tuning and the environment variable may choose it (otherwise only a caller that asks
    /// for it by name, e.g. for reduced precision).
    pub tunable: bool,
}

/// Every variant of one op, and the environment variable that forces one.
pub struct VariantTable<V: 'static> {
    pub env_var: &'static str,
    pub variants: &'static [KernelVariant<V>],
    forced: OnceLock<Option<V>>,
    /// Per variant, a hash of its shaders' full sources: the version tuning results belong to.
    versions: OnceLock<Vec<u64>>,
    /// Per variant, the storage buffers and workgroup memory its shaders need.
    needs: OnceLock<Vec<KernelNeeds>>,
    /// Per variant, the cooperative-matrix shapes its shaders multiply in.
    cooperative: OnceLock<Vec<Vec<CooperativeShape>>>,
}

impl<V: Copy + PartialEq + Send + Sync + 'static> VariantTable<V> {
    pub const fn new(env_var: &'static str, variants: &'static [KernelVariant<V>]) -> Self {
        Self {
            env_var,
            variants,
            forced: OnceLock::new(),
            versions: OnceLock::new(),
            needs: OnceLock::new(),
            cooperative: OnceLock::new(),
        }
    }

    /// The entry of `variant` (every variant of the op has one).
    pub fn entry(&self, variant: V) -> &'static KernelVariant<V> {
        self.variants.iter().find(|e| e.variant == variant).expect("every variant is in its table")
    }

    /// The variant named `name`, tunable or not.
    pub fn by_name(&self, name: &str) -> Option<V> {
        self.variants.iter().find(|e| e.name == name).map(|e| e.variant)
    }

    /// The variants tuning and the environment variable choose from, in table order.
    pub fn tunable(&self) -> Vec<V> {
        self.variants.iter().filter(|e| e.tunable).map(|e| e.variant).collect()
    }

    /// Every variant `gpu` can run, tunable or not.
    pub fn supported(&self, gpu: &Gpu) -> Vec<V> {
        self.variants.iter().filter(|e| self.shortfall(gpu, e.variant).is_none()).map(|e| e.variant).collect()
    }

    /// Why `gpu` cannot run `variant`: a feature it lacks, a cooperative-matrix shape its adapter does
    /// not list, or a limit too low; `None` when it can.
    pub fn shortfall(&self, gpu: &Gpu, variant: V) -> Option<String> {
        let entry = self.entry(variant);
        let missing = entry.requires - gpu.features();
        if !missing.is_empty() {
            return Some(format!("needs the adapter feature(s) {missing}"));
        }
        let index = self.variants.iter().position(|e| e.variant == variant).expect("in its table");
        if entry.requires.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            let cooperative = self.cooperative.get_or_init(|| {
                let shapes = |e: &KernelVariant<V>| -> Vec<CooperativeShape> {
                    let all = e
                        .shaders
                        .iter()
                        .flat_map(|s| CooperativeShape::of(s.name, &s.full_source()).unwrap_or_default());
                    all.fold(Vec::new(), |mut seen, shape| {
                        if !seen.contains(&shape) {
                            seen.push(shape);
                        }
                        seen
                    })
                };
                self.variants.iter().map(shapes).collect()
            });
            let shapes = cooperative[index].iter();
            if let Some(shape) = shapes.clone().find(|shape| !gpu.offers_cooperative(shape)) {
                let listed = gpu.cooperative_matrix_shapes();
                let listed = if listed.is_empty() { "none".to_string() } else { listed.join(", ") };
                return Some(format!(
                    "needs {shape} cooperative matrices, which the adapter does not list ({listed})"
                ));
            }
        }
        let needs = self.needs.get_or_init(|| {
            self.variants
                .iter()
                .map(|e| {
                    e.shaders.iter().fold(KernelNeeds::default(), |needs, s| {
                        // A shader that does not validate alone (the NCA's, specialised per rule
                        // family before it is compiled) says what it needs when it is compiled.
                        needs.max(KernelNeeds::of(s.name, &s.full_source()).unwrap_or_default())
                    })
                })
                .collect()
        });
        needs[index].shortfall(&gpu.limits())
    }

    /// `fallback` where `gpu` can run it, else the first tunable variant it can.
    fn runnable(&self, gpu: &Gpu, fallback: V) -> Result<V> {
        if self.shortfall(gpu, fallback).is_none() {
            return Ok(fallback);
        }
        match self.candidates(Some(gpu)).first() {
            Some((name, _)) => Ok(self.by_name(name).expect("a variant's own name")),
            None => anyhow::bail!(
                "no kernel variant ({}) runs on this device: {}",
                self.env_var,
                self.left_out(gpu).join("; ")
            ),
        }
    }

    /// The tunable variants `gpu` cannot run, each with why.
    pub fn left_out_variants(&self, gpu: &Gpu) -> Vec<(V, String)> {
        let tunable = self.variants.iter().filter(|e| e.tunable);
        tunable.filter_map(|e| self.shortfall(gpu, e.variant).map(|why| (e.variant, why))).collect()
    }

    /// [`left_out_variants`](Self::left_out_variants) in words, each as `name why`.
    pub fn left_out(&self, gpu: &Gpu) -> Vec<String> {
        let named = self.left_out_variants(gpu).into_iter();
        named.map(|(v, why)| format!("{} {why}", self.entry(v).name)).collect()
    }

    /// Every shader of every variant, for validation.
    pub fn shaders(&self) -> impl Iterator<Item = &'static Shader> {
        self.variants.iter().flat_map(|e| e.shaders)
    }

    /// Fails when `gpu` lacks what `variant` requires.
    pub fn check_supported(&self, gpu: &Gpu, variant: V) -> Result<()> {
        match self.shortfall(gpu, variant) {
            Some(why) => {
                anyhow::bail!("kernel {} cannot run on this device: it {why}", self.entry(variant).name)
            }
            None => Ok(()),
        }
    }

    /// The tunable variant the environment variable names, if it is set (read once per process; a name
    /// that is not one is reported and ignored).
    pub fn forced(&self) -> Option<V> {
        *self.forced.get_or_init(|| {
            let name = std::env::var(self.env_var).ok()?;
            let found = self.variants.iter().find(|e| e.tunable && e.name == name).map(|e| e.variant);
            if found.is_none() {
                eprintln!(
                    "warning: {}={name:?} is not one of {}; ignored",
                    self.env_var,
                    self.tunable_names(None).join(", ")
                );
            }
            found
        })
    }

    /// Names of the tunable variants (those `gpu` can run, when given).
    fn tunable_names(&self, gpu: Option<&Gpu>) -> Vec<&'static str> {
        self.candidates(gpu).into_iter().map(|(name, _)| name).collect()
    }

    /// The tunable variants (those `gpu` can run, when given), each with the hash of its shaders.
    fn candidates(&self, gpu: Option<&Gpu>) -> Vec<(&'static str, u64)> {
        self.versioned(|e| e.tunable && gpu.is_none_or(|g| self.shortfall(g, e.variant).is_none()))
    }

    /// The variants `keep` keeps, each with the hash of its shaders.
    fn versioned(&self, keep: impl Fn(&KernelVariant<V>) -> bool) -> Vec<(&'static str, u64)> {
        let versions = self.versions.get_or_init(|| {
            self.variants
                .iter()
                .map(|e| fnv1a(e.shaders.iter().map(Shader::full_source).collect::<String>().as_bytes()))
                .collect()
        });
        self.variants
            .iter()
            .zip(versions)
            .filter(|(e, _)| keep(e))
            .map(|(e, &version)| (e.name, version))
            .collect()
    }

    /// The variants of `among` that `gpu` can run, in table order, each with the hash of its shaders.
    fn runnable_among(&self, gpu: &Gpu, among: &[V]) -> Vec<(&'static str, u64)> {
        self.versioned(|e| among.contains(&e.variant) && self.shortfall(gpu, e.variant).is_none())
    }

    /// As [`choose`](Self::choose), among the variants of `among` (tunable or not) that `gpu` can run,
    /// e.g. those of a reduced precision; `fallback` must be one of them.
    pub fn choose_among(
        &self,
        tuner: &mut Tuner,
        gpu: &Gpu,
        class: &str,
        among: &[V],
        fallback: V,
        trial: &mut dyn FnMut(V) -> Result<Trial>,
    ) -> Result<(V, bool)> {
        self.choose_from(tuner, gpu, class, &self.runnable_among(gpu, among), fallback, trial)
    }

    /// As [`pick`](Self::pick), among the variants of `among` that `gpu` can run, never forced by the
    /// environment variable: tuned on this adapter, or `fallback` where tuning is off.
    pub fn pick_among(
        &self,
        gpu: &Gpu,
        class: &str,
        among: &[V],
        fallback: V,
        trial: &mut dyn FnMut(V) -> Result<Trial>,
    ) -> Result<V> {
        self.pick_from(gpu, class, &self.runnable_among(gpu, among), fallback, trial)
    }

    /// [`Tuner::choose`] among the tunable variants `gpu` can run; `trial` checks a variant against
    /// the reference and times it.
    pub fn choose(
        &self,
        tuner: &mut Tuner,
        gpu: &Gpu,
        class: &str,
        fallback: V,
        trial: &mut dyn FnMut(V) -> Result<Trial>,
    ) -> Result<(V, bool)> {
        let fallback = self.runnable(gpu, fallback)?;
        self.choose_from(tuner, gpu, class, &self.candidates(Some(gpu)), fallback, trial)
    }

    /// The variant for `class`: forced by the environment variable, tuned on this adapter (the user's
    /// tuning file, see [`pick`]), or `fallback`.
    pub fn pick(
        &self,
        gpu: &Gpu,
        class: &str,
        fallback: V,
        trial: &mut dyn FnMut(V) -> Result<Trial>,
    ) -> Result<V> {
        if let Some(forced) = self.forced() {
            return Ok(forced);
        }
        let fallback = self.runnable(gpu, fallback)?;
        self.pick_from(gpu, class, &self.candidates(Some(gpu)), fallback, trial)
    }

    /// [`Tuner::choose`] among `candidates`, in variants rather than names.
    fn choose_from(
        &self,
        tuner: &mut Tuner,
        gpu: &Gpu,
        class: &str,
        candidates: &[(&'static str, u64)],
        fallback: V,
        trial: &mut dyn FnMut(V) -> Result<Trial>,
    ) -> Result<(V, bool)> {
        let mut trial = |name: &str| trial(self.by_name(name).expect("a variant's own name"));
        let (name, timed) = tuner.choose(gpu, class, candidates, self.entry(fallback).name, &mut trial)?;
        Ok((self.by_name(&name).expect("a variant's own name"), timed))
    }

    /// [`pick`] among `candidates`, in variants rather than names.
    fn pick_from(
        &self,
        gpu: &Gpu,
        class: &str,
        candidates: &[(&'static str, u64)],
        fallback: V,
        trial: &mut dyn FnMut(V) -> Result<Trial>,
    ) -> Result<V> {
        let mut trial = |name: &str| trial(self.by_name(name).expect("a variant's own name"));
        let name = pick(gpu, class, candidates, self.entry(fallback).name, &mut trial)?;
        Ok(self.by_name(&name).expect("a variant's own name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disagreement_allows_reordered_sums_and_names_a_wrong_element() {
        let reference = [1.0, -200.0, 3.0, 0.0];
        assert_eq!(disagreement(&reference, &[1.0, -200.01, 3.0, 1e-4], 1e-3), None);
        let why = disagreement(&reference, &[1.0, -200.0, 3.5, 0.0], 1e-3).unwrap();
        assert!(why.starts_with("element 2 is 3.5 where the reference has 3"), "{why}");
        assert!(disagreement(&reference, &[1.0, f32::NAN, 3.0, 0.0], 1e-3).unwrap().starts_with("element 1"));
        assert!(disagreement(&reference, &[1.0], 1e-3).is_some());
    }

    #[test]
    fn the_hash_of_a_source_is_stable() {
        // Tuning files outlive builds: the version of a kernel must hash the same in every build.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}

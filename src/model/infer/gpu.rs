//! Generation on the GPU: the key-value cache, the tokens and the sampler all stay on the device, so
//! that N decode steps record into one command encoder and run in one submission with no readback.
//!
//! The tokens live in one u32 buffer, `tokens[capacity]`: the prompt, then what is generated. A state
//! buffer holds the position. Every decode step records the same dispatches: embed `tokens[pos]`, run the
//! body at the position the kernels read from the state (RoPE angle, the cache row to append to, how many
//! keys attention reads; for the NCA, the ring slot of each step's cell), the final norm and the head,
//! then the sampler writes `tokens[pos + 1]`, except while that is still a prompt token (the prompt is
//! prefilled through the same loop), and advances the position.

use anyhow::{ensure, Result};

use super::Sampling;
use crate::gpu::{role_arena_with_runs, Gpu, GpuTensor, KernelCache, Recorder};
use crate::model::config::{Arch, ModelConfig};
use crate::model::gpu::GpuModel;
use crate::model::params::{HostParams, ParamIndex};
use crate::ops::decode::{self, CacheShape, SampleParams, STATE_LEN};
use crate::ops::{activation, rmsnorm, rope, swiglu};
use crate::rng::derive_key;

/// Per transformer layer: the rotated keys and values of every position so far, `[capacity, d_model]`.
struct LayerCache {
    keys: GpuTensor,
    values: GpuTensor,
}

/// The vectors of one decode step.
struct Work {
    x: GpuTensor,
    h: GpuTensor,
    /// The query, key and value side by side, as one product writes them.
    qkv: GpuTensor,
    o: GpuTensor,
    /// The NCA cell's hidden layer.
    a: GpuTensor,
    /// The gate and up halves of the MLP side by side.
    gate_up: GpuTensor,
    m: GpuTensor,
    rstd: GpuTensor,
    logits: GpuTensor,
    /// Attention scores, `[heads, capacity]`.
    scores: GpuTensor,
}

/// A generator whose decode steps run entirely on the GPU (see the module documentation); the host
/// [`Generator`](super::Generator) is its reference.
///
/// ```no_run
/// # use ncalm::model::infer::{GpuGenerator, Sampling};
/// # fn demo(gpu: &ncalm::Gpu, cfg: &ncalm::model::ModelConfig, params: &ncalm::model::HostParams) -> anyhow::Result<()> {
/// let sampling = Sampling { temperature: 0.8, top_p: 0.95, seed: 1 };
/// let mut generator = GpuGenerator::new(gpu, cfg, params, sampling)?;
/// generator.set_prompt(&[1, 2, 3])?;
/// generator.generate(2 + 16)?; // the prefill of tokens 1..3, then 16 new tokens
/// let tokens = generator.read_tokens()?; // 3 + 16 tokens
/// # Ok(()) }
/// ```
pub struct GpuGenerator {
    gpu: Gpu,
    cache: KernelCache,
    cfg: ModelConfig,
    index: ParamIndex,
    /// Views of the parameters, indexed like [`ParamIndex`].
    params: Vec<GpuTensor>,
    /// Per transformer layer: the stacked q, k and v weights, and the stacked gate and up weights.
    stacked: Vec<[GpuTensor; 2]>,
    sampling: Sampling,
    allowed: u32,
    /// The prompt and what is generated, u32 `[capacity]`.
    tokens: GpuTensor,
    /// u32: the position, the prompt's length, two spare words.
    state: GpuTensor,
    inv_freq: GpuTensor,
    layers: Vec<LayerCache>,
    /// Per NCA step: the latest `kernel_width` cell states, `[kernel_width, d_model]`, slot pos % width.
    rings: Vec<GpuTensor>,
    /// The NCA step's perception.
    perception: GpuTensor,
    work: Work,
    capacity: u32,
    /// The host's copy of the position: the next token to feed is `tokens[pos]`.
    pos: u32,
    prompt_len: u32,
}

impl GpuGenerator {
    /// Uploads `params` and allocates the caches for `cfg.context` tokens.
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, params: &HostParams, sampling: Sampling) -> Result<Self> {
        // Packed as a training model packs them, so that each layer's stacked weights are one view.
        let tensors = params.infos.iter().map(|i| (i.name.as_str(), i.len()));
        let role = role_arena_with_runs(gpu, "decode params", tensors, &params.index.runs())?;
        for (t, v) in role.iter().zip(&params.values) {
            gpu.write(t, v);
        }
        Self::build(gpu, cfg, params.index.clone(), role.tensors, sampling)
    }

    /// Samples from a training model's parameters without copying them: the generator binds the model's
    /// parameter views, so it sees every optimiser step the model takes (record generation between
    /// steps, not during one).
    pub fn from_model(model: &GpuModel, sampling: Sampling) -> Result<Self> {
        Self::build(&model.gpu, &model.cfg, model.index.clone(), model.params.tensors.clone(), sampling)
    }

    fn build(
        gpu: &Gpu,
        cfg: &ModelConfig,
        index: ParamIndex,
        params: Vec<GpuTensor>,
        sampling: Sampling,
    ) -> Result<Self> {
        cfg.validate()?;
        check_sampling(&sampling)?;
        let (d, hid, v) = (cfg.d_model as usize, cfg.mlp_hidden as usize, cfg.vocab_size as usize);
        let capacity = cfg.context;
        let c = capacity as usize;
        let t = |len: usize, label: &str| gpu.tensor(len, label);
        let transformer = cfg.arch == Arch::Transformer;
        let layers = index
            .layers
            .iter()
            .map(|_| Ok(LayerCache { keys: t(c * d, "decode keys")?, values: t(c * d, "decode values")? }))
            .collect::<Result<Vec<_>>>()?;
        let width = cfg.kernel_width as usize;
        let rings = index.cells.iter().map(|_| t(width * d, "decode cells")).collect::<Result<Vec<_>>>()?;
        let heads = if transformer { cfg.heads as usize } else { 1 };
        let stacked = index
            .layers
            .iter()
            .map(|l| [GpuTensor::joined(&params[l.qkv()]), GpuTensor::joined(&params[l.gate_up()])])
            .collect();
        let work = Work {
            x: t(d, "decode x")?,
            h: t(d, "decode h")?,
            qkv: t(3 * d, "decode qkv")?,
            o: t(d, "decode o")?,
            a: t(hid, "decode a")?,
            gate_up: t(2 * hid, "decode gate_up")?,
            m: t(hid, "decode m")?,
            rstd: t(1, "decode rstd")?,
            logits: t(v, "decode logits")?,
            scores: t(heads * c, "decode scores")?,
        };
        let inv_freq =
            gpu.upload(&rope::inverse_frequencies(cfg.head_dim().max(2), cfg.rope_theta), "inv freq")?;
        Ok(Self {
            gpu: gpu.clone(),
            cache: KernelCache::default(),
            cfg: cfg.clone(),
            index,
            params,
            stacked,
            sampling,
            allowed: cfg.vocab_size,
            tokens: t(c, "decode tokens")?,
            state: t(STATE_LEN, "decode state")?,
            inv_freq,
            layers,
            rings,
            perception: t(d, "decode perception")?,
            work,
            capacity,
            pos: 0,
            prompt_len: 0,
        })
    }

    /// Samples only among the first `allowed` tokens (a tokenizer's, when the model's vocabulary is
    /// padded); the default is the whole vocabulary.
    pub fn set_allowed(&mut self, allowed: u32) -> Result<()> {
        ensure!(
            allowed > 0 && allowed <= self.cfg.vocab_size,
            "{allowed} allowed tokens: expected 1..={} (the vocabulary)",
            self.cfg.vocab_size
        );
        self.allowed = allowed;
        Ok(())
    }

    /// Changes the sampling settings for the steps recorded from now on.
    pub fn set_sampling(&mut self, sampling: Sampling) -> Result<()> {
        check_sampling(&sampling)?;
        self.sampling = sampling;
        Ok(())
    }

    /// Starts over from `prompt`: the position returns to 0 and the caches' contents are ignored.
    pub fn set_prompt(&mut self, prompt: &[u32]) -> Result<()> {
        ensure!(!prompt.is_empty(), "the prompt is empty: generation needs at least one token to start from");
        ensure!(
            prompt.len() <= self.capacity as usize,
            "the prompt of {} tokens exceeds the context of {} tokens",
            prompt.len(),
            self.capacity
        );
        if let Some(bad) = prompt.iter().find(|&&t| t >= self.cfg.vocab_size) {
            anyhow::bail!("prompt token {bad} is not below the vocabulary size {}", self.cfg.vocab_size);
        }
        let mut tokens = vec![0u32; self.capacity as usize];
        tokens[..prompt.len()].copy_from_slice(prompt);
        self.gpu.write(&self.tokens, &tokens);
        self.gpu.write(&self.state, &[0, prompt.len() as u32, 0, 0]);
        self.pos = 0;
        self.prompt_len = prompt.len() as u32;
        Ok(())
    }

    /// The position: the number of decode steps since the prompt was set, the index of the next token fed.
    pub fn position(&self) -> u32 {
        self.pos
    }

    /// The tokens on the GPU, u32 `[context]`: the prompt, then what is generated (for hosts that read
    /// them on the device; the first `max(prompt, position + 1)` are valid).
    pub fn tokens(&self) -> &GpuTensor {
        &self.tokens
    }

    /// The logits of the latest step, `[vocab]`.
    pub fn logits(&self) -> &GpuTensor {
        &self.work.logits
    }

    /// Reads back the prompt and the tokens generated so far (waits for submitted work).
    pub fn read_tokens(&self) -> Result<Vec<u32>> {
        ensure!(self.prompt_len > 0, "no prompt was set");
        let known = self.prompt_len.max(self.pos + 1).min(self.capacity) as usize;
        self.gpu.read(&self.tokens.slice(0, known))
    }

    /// Records `steps` decode steps into a host's `encoder`, for the host to submit (with its own work, if
    /// it likes). Each step feeds `tokens[pos]`; while `pos + 1` is in the prompt the prompt's next token
    /// is kept, afterwards the sampler's pick is written. A prompt of P tokens thus takes P - 1 steps of
    /// prefill before the first generated token.
    pub fn record(&mut self, encoder: &mut wgpu::CommandEncoder, steps: u32) -> Result<()> {
        ensure!(self.prompt_len > 0, "set a prompt before generating");
        let end = u64::from(self.pos) + u64::from(steps);
        ensure!(
            end <= u64::from(self.capacity),
            "{steps} more steps from position {} run past the {} tokens the generator holds (the model's \
             context{})",
            self.pos,
            self.capacity,
            if self.cfg.arch == Arch::Nca {
                "; the NCA has no positional limit, but the GPU generator's token buffer is that long"
            } else {
                ""
            }
        );
        let mut pos = self.pos;
        let mut left = steps;
        while left > 0 {
            let mut rec = Recorder::in_encoder(&self.gpu, &self.cache, encoder);
            let before = rec.params_left();
            self.record_step(&mut rec, pos)?;
            let (mut done, per_step) = (1, before - rec.params_left());
            // As many steps as this recorder's parameter buffer holds, then a fresh one.
            while done < left && rec.params_left() >= per_step {
                self.record_step(&mut rec, pos + done)?;
                done += 1;
            }
            rec.submit();
            pos += done;
            left -= done;
        }
        self.pos = pos;
        Ok(())
    }

    /// Records `steps` decode steps and submits them (does not wait).
    pub fn generate(&mut self, steps: u32) -> Result<()> {
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        self.record(&mut encoder, steps)?;
        self.gpu.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// One decode step; `pos` is the host's copy of the position, used only for the sampler's key.
    fn record_step(&self, rec: &mut Recorder, pos: u32) -> Result<()> {
        let (cfg, p, w) = (&self.cfg, &self.params, &self.work);
        let d = cfg.d_model;
        let norm = |rec: &mut Recorder, x: &GpuTensor, weight: usize, y: &GpuTensor| {
            rmsnorm::forward(rec, x, &p[weight], y, &w.rstd, 1, d, cfg.norm_eps)
        };
        decode::embed(rec, &p[self.index.embed], &self.tokens, &self.state, &w.x)?;
        for (cell, ring) in self.index.cells.iter().zip(&self.rings) {
            decode::perceive(
                rec,
                &w.x,
                &p[cell.conv],
                &p[cell.conv_bias],
                ring,
                &self.perception,
                &self.state,
                cfg.kernel_width,
            )?;
            norm(rec, &self.perception, cell.norm, &w.h)?;
            decode::matvec(rec, &p[cell.fc1], &w.h, Some(&p[cell.fc1_bias]), &w.a, false)?;
            activation::forward(rec, &w.a, &w.m, cfg.activation)?;
            decode::matvec(rec, &p[cell.fc2], &w.m, Some(&p[cell.fc2_bias]), &w.x, true)?;
        }
        let shape = CacheShape { heads: cfg.heads, head_dim: cfg.head_dim(), capacity: self.capacity };
        for ((layer, [qkv, gate_up]), cache) in self.index.layers.iter().zip(&self.stacked).zip(&self.layers)
        {
            norm(rec, &w.x, layer.attn_norm, &w.h)?;
            decode::matvec(rec, qkv, &w.h, None, &w.qkv, false)?;
            decode::rope_append(rec, &w.qkv, &cache.keys, &cache.values, &self.inv_freq, &self.state, shape)?;
            decode::attention(rec, &w.qkv, &cache.keys, &cache.values, &w.scores, &w.o, &self.state, shape)?;
            decode::matvec(rec, &p[layer.o], &w.o, None, &w.x, true)?;
            norm(rec, &w.x, layer.mlp_norm, &w.h)?;
            decode::matvec(rec, gate_up, &w.h, None, &w.gate_up, false)?;
            swiglu::forward(rec, &w.gate_up, &w.m, cfg.mlp_hidden)?;
            decode::matvec(rec, &p[layer.down], &w.m, None, &w.x, true)?;
        }
        norm(rec, &w.x, self.index.final_norm, &w.h)?;
        let head_bias = self.index.head_bias.map(|b| &p[b]);
        decode::matvec(rec, &p[self.index.head], &w.h, head_bias, &w.logits, false)?;
        let s = &self.sampling;
        let params = SampleParams {
            temperature: s.temperature,
            top_p: s.top_p,
            key: derive_key(s.seed, &[u64::from(pos)]),
            allowed: self.allowed,
        };
        decode::sample(rec, &w.logits, &self.tokens, &self.state, params)
    }
}

fn check_sampling(s: &Sampling) -> Result<()> {
    ensure!(
        s.temperature >= 0.0 && s.temperature.is_finite() && s.top_p > 0.0 && s.top_p <= 1.0,
        "sampling needs a temperature >= 0 and top-p in (0, 1], got {} and {}",
        s.temperature,
        s.top_p
    );
    Ok(())
}

//! Generation on the host, one token at a time. The transformer keeps each layer's rotated keys and values
//! so a new token costs one pass over the cache instead of the whole prefix; the NCA keeps, per step, the
//! states of the `kernel_width - 1` cells before the new one, so a new token costs the same at any length.
//!
//! [`GpuGenerator`] does the same on the GPU, with the cache, the tokens and the sampler on the device;
//! this host [`Generator`] is the reference it is tested against.

use std::collections::VecDeque;

use anyhow::{ensure, Result};

use super::config::{Arch, ModelConfig};
use super::params::HostParams;
use crate::ops::{activation, decode};
use crate::rng::derive_key;

mod gpu;

pub use gpu::GpuGenerator;

/// Generation on the host in f32, one token per [`step`](Self::step).
pub struct Generator {
    cfg: ModelConfig,
    params: HostParams,
    /// Per layer: keys and values of every position so far, [pos][d].
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Per NCA step: the states h_s of the latest `kernel_width - 1` cells, oldest first.
    cells: Vec<VecDeque<Vec<f32>>>,
    pos: usize,
    inv_freq: Vec<f32>,
}

fn matvec(w: &[f32], x: &[f32], out: usize) -> Vec<f32> {
    let inp = x.len();
    (0..out).map(|o| w[o * inp..(o + 1) * inp].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

impl Generator {
    /// A generator at position 0 over `params`.
    pub fn new(cfg: &ModelConfig, params: HostParams) -> Self {
        let hd = cfg.head_dim() as usize;
        let inv_freq = (0..hd / 2).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / hd as f32)).collect();
        let layers = params.index.layers.len();
        Self {
            cfg: cfg.clone(),
            keys: vec![Vec::new(); layers],
            values: vec![Vec::new(); layers],
            cells: vec![VecDeque::new(); params.index.cells.len()],
            params,
            pos: 0,
            inv_freq,
        }
    }

    /// The NCA's K updates of the newest cell (docs/nca-lm.md), every cell firing as in evaluation.
    fn update_cell(&mut self, mut x: Vec<f32>) -> Vec<f32> {
        let cfg = &self.cfg;
        let (d, hid, width) = (cfg.d_model as usize, cfg.mlp_hidden as usize, cfg.kernel_width as usize);
        let p = &self.params;
        for (w, history) in p.index.cells.iter().zip(&mut self.cells) {
            let (kernel, bias) = (&p.values[w.conv], &p.values[w.conv_bias]);
            // kernel[j] weighs the cell j positions back; cells before the sequence start are 0.
            let mut perception: Vec<f32> = (0..d).map(|c| bias[c] + kernel[c] * x[c]).collect();
            for (j, past) in history.iter().rev().enumerate() {
                for c in 0..d {
                    perception[c] += kernel[(j + 1) * d + c] * past[c];
                }
            }
            let q = rmsnorm(&perception, &p.values[w.norm], cfg.norm_eps);
            let mut a = matvec(&p.values[w.fc1], &q, hid);
            a.iter_mut().zip(&p.values[w.fc1_bias]).for_each(|(v, b)| *v += b);
            let a64: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
            let g: Vec<f32> =
                activation::reference::forward(&a64, cfg.activation).iter().map(|&v| v as f32).collect();
            let mut u = matvec(&p.values[w.fc2], &g, d);
            u.iter_mut().zip(&p.values[w.fc2_bias]).for_each(|(v, b)| *v += b);
            if width > 1 {
                if history.len() == width - 1 {
                    history.pop_front();
                }
                history.push_back(x.clone());
            }
            x.iter_mut().zip(&u).for_each(|(h, u)| *h += u);
        }
        x
    }

    fn rope(&self, x: &mut [f32], pos: usize) {
        let hd = self.cfg.head_dim() as usize;
        for head in x.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let a = pos as f32 * self.inv_freq[i];
                let (s, c) = a.sin_cos();
                let (x1, x2) = (head[i], head[i + hd / 2]);
                head[i] = x1 * c - x2 * s;
                head[i + hd / 2] = x2 * c + x1 * s;
            }
        }
    }

    /// Feeds one token and returns the logits for the next.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        ensure!(token < cfg.vocab_size, "token {token} is not below the vocabulary size {}", cfg.vocab_size);
        // The NCA has no positions: past its receptive field a sequence of any length looks the same.
        ensure!(
            cfg.arch == Arch::Nca || self.pos < cfg.context as usize,
            "the context of {} tokens is full",
            cfg.context
        );
        let (d, hid, heads, hd) =
            (cfg.d_model as usize, cfg.mlp_hidden as usize, cfg.heads as usize, cfg.head_dim() as usize);
        let embedded = self.params.values[self.params.index.embed]
            [token as usize * d..(token as usize + 1) * d]
            .to_vec();
        let mut x = if cfg.arch == Arch::Nca { self.update_cell(embedded) } else { embedded };
        let cfg = &self.cfg;
        let p = &self.params;
        for l in 0..p.index.layers.len() {
            let li = p.index.layers[l];
            let h = rmsnorm(&x, &p.values[li.attn_norm], cfg.norm_eps);
            let mut q = matvec(&p.values[li.q], &h, d);
            let mut k = matvec(&p.values[li.k], &h, d);
            let v = matvec(&p.values[li.v], &h, d);
            self.rope(&mut q, self.pos);
            self.rope(&mut k, self.pos);
            self.keys[l].extend_from_slice(&k);
            self.values[l].extend_from_slice(&v);
            let n = self.pos + 1;
            let mut o = vec![0.0f32; d];
            let scale = 1.0 / (hd as f32).sqrt();
            for hh in 0..heads {
                let qh = &q[hh * hd..(hh + 1) * hd];
                let scores: Vec<f32> = (0..n)
                    .map(|j| {
                        self.keys[l][j * d + hh * hd..j * d + (hh + 1) * hd]
                            .iter()
                            .zip(qh)
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (j, w) in e.iter().enumerate() {
                    let vj = &self.values[l][j * d + hh * hd..j * d + (hh + 1) * hd];
                    for (oi, vv) in o[hh * hd..(hh + 1) * hd].iter_mut().zip(vj) {
                        *oi += w / z * vv;
                    }
                }
            }
            let attn = matvec(&p.values[li.o], &o, d);
            x.iter_mut().zip(&attn).for_each(|(a, b)| *a += b);
            let h2 = rmsnorm(&x, &p.values[li.mlp_norm], cfg.norm_eps);
            let a = matvec(&p.values[li.gate], &h2, hid);
            let b = matvec(&p.values[li.up], &h2, hid);
            let m: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a / (1.0 + (-a).exp()) * b).collect();
            let down = matvec(&p.values[li.down], &m, d);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        let fin = rmsnorm(&x, &p.values[p.index.final_norm], cfg.norm_eps);
        let mut logits = matvec(&p.values[p.index.head], &fin, cfg.vocab_size as usize);
        if let Some(b) = p.index.head_bias {
            logits.iter_mut().zip(&p.values[b]).for_each(|(l, b)| *l += b);
        }
        self.pos += 1;
        Ok(logits)
    }
}

/// Sampling settings: temperature 0 is greedy; top-p keeps the smallest set of tokens whose
/// probability reaches p.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// In (0, 1]: the probability mass of the tokens kept.
    pub top_p: f32,
    /// The random stream: draw `d` uses the key `derive_key(seed, &[d])`.
    pub seed: u64,
}

/// Picks the next token among the first `allowed` logits; `draw` indexes the random stream (the GPU
/// generator draws with the position of the logits). The rule is the GPU sampler's,
/// [`decode::reference::sample`]: a top-p threshold on the probabilities, then Gumbel-max.
pub fn sample(logits: &[f32], s: &Sampling, draw: u64, allowed: usize) -> u32 {
    let logits = &logits[..allowed.min(logits.len())];
    decode::reference::sample(logits, s.temperature, s.top_p, derive_key(s.seed, &[draw])).token
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::reference::{forward_backward, Batch};

    #[test]
    fn cached_generation_equals_the_full_forward_pass() {
        let cfg = ModelConfig {
            vocab_size: 50,
            layers: 2,
            d_model: 16,
            heads: 2,
            mlp_hidden: 24,
            context: 12,
            head_bias: true,
            ..Default::default()
        };
        let host = HostParams::init(&cfg, 4);
        let ids: Vec<u32> = (0..10).map(|i| (i * 7 + 3) % 50).collect();
        let params: Vec<Vec<f64>> =
            host.values.iter().map(|v| v.iter().map(|&x| f64::from(x)).collect()).collect();
        let batch = Batch { ids: ids.clone(), targets: vec![0; 10], batch: 1, seq_len: 10 };
        let want = forward_backward(&cfg, &params, &host.index, &batch, 1.0, None).logits;
        let mut g = Generator::new(&cfg, host);
        for (t, &id) in ids.iter().enumerate() {
            let got = g.step(id).unwrap();
            for (a, b) in got.iter().zip(&want[t * 50..(t + 1) * 50]) {
                assert!((f64::from(*a) - b).abs() < 1e-4 * (1.0 + b.abs()), "position {t}: {a} vs {b}");
            }
        }
        assert!(g.step(1).is_ok() && g.step(1).is_ok() && g.step(1).is_err(), "the context is 12 tokens");
    }

    #[test]
    fn sampling_respects_temperature_and_top_p() {
        let logits = [0.0, 5.0, 1.0, 4.9];
        let greedy = Sampling { temperature: 0.0, top_p: 1.0, seed: 1 };
        assert_eq!(sample(&logits, &greedy, 0, 4), 1);
        let nucleus = Sampling { temperature: 1.0, top_p: 0.5, seed: 1 };
        assert!(
            (0..100).all(|d| sample(&logits, &nucleus, d, 4) == 1),
            "top-p 0.5 keeps only the best token"
        );
        let wide = Sampling { temperature: 1.0, top_p: 0.95, seed: 1 };
        let picks: std::collections::HashSet<u32> = (0..200).map(|d| sample(&logits, &wide, d, 4)).collect();
        assert!(picks.contains(&1) && picks.contains(&3) && !picks.contains(&0));
    }
}

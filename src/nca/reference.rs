//! The plain-Rust reference simulator: the semantics every GPU kernel is tested against.

use super::rule::{RuleTable, TableLayout, DOMAIN_INITIAL_GRID, DOMAIN_INITIAL_LOGITS, DOMAIN_STEP_NOISE};
use super::spec::NcaSpec;
use crate::rng::{gumbel, philox, unit_f32, Stream};

/// The cumulative initial-state distribution of one simulation: z ~ N(0, 1)^n drawn once, then
/// softmax(z). Computed on the host for both simulators, so the initial grids agree bit for bit.
pub fn initial_cdf(spec: &NcaSpec, sim_key: u64) -> Vec<f32> {
    let mut stream = Stream::new(sim_key, DOMAIN_INITIAL_LOGITS);
    let z: Vec<f64> = (0..spec.states).map(|_| stream.next_normal()).collect();
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let mut cdf: Vec<f32> = weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc as f32
        })
        .collect();
    *cdf.last_mut().unwrap() = 1.0;
    cdf
}

/// Every cell i.i.d. from the initial distribution: the first state whose cumulative mass exceeds u.
pub fn initial_grid(spec: &NcaSpec, sim_key: u64, cdf: &[f32]) -> Vec<u8> {
    (0..spec.cells() as u32)
        .map(|cell| {
            let u = unit_f32(philox(sim_key, [0, cell, 0, DOMAIN_INITIAL_GRID])[0]);
            cdf.iter().position(|&c| u < c).unwrap_or(cdf.len() - 1) as u8
        })
        .collect()
}

/// The deterministic part of one cell's update: logits (with the identity bias) for every next state.
pub fn cell_logits(spec: &NcaSpec, table: &RuleTable, grid: &[u8], cell: usize) -> Vec<f32> {
    let lay = TableLayout::new(spec);
    let w = &table.data;
    let (g, n, c, h) =
        (spec.grid as usize, spec.states as usize, spec.conv_channels as usize, spec.hidden as usize);
    let (y, x) = (cell / g, cell % g);
    let mut conv: Vec<f32> = w[lay.conv_bias..lay.conv_bias + c].to_vec();
    for k in 0..9 {
        let yy = (y + g + k / 3 - 1) % g;
        let xx = (x + g + k % 3 - 1) % g;
        let s = grid[yy * g + xx] as usize;
        for (o, acc) in conv.iter_mut().enumerate() {
            *acc += w[(k * n + s) * c + o];
        }
    }
    let hidden: Vec<f32> = (0..h)
        .map(|j| {
            let mut acc = w[lay.hidden_bias + j];
            for (i, v) in conv.iter().enumerate() {
                acc += v * w[lay.hidden + i * h + j];
            }
            acc.max(0.0)
        })
        .collect();
    let current = grid[cell] as usize;
    (0..n)
        .map(|k| {
            let mut acc = w[lay.out_bias + k];
            for (j, v) in hidden.iter().enumerate() {
                acc += v * w[lay.out + j * n + k];
            }
            if k == current {
                acc += spec.identity_bias;
            }
            acc
        })
        .collect()
}

/// Gumbel-max scores (logit / T + Gumbel noise) of one cell at step t; the next state is their argmax.
pub fn cell_scores(
    spec: &NcaSpec,
    table: &RuleTable,
    grid: &[u8],
    cell: usize,
    sim_key: u64,
    t: u32,
) -> Vec<f32> {
    cell_logits(spec, table, grid, cell)
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let words = philox(sim_key, [t, cell as u32, k as u32 / 4, DOMAIN_STEP_NOISE]);
            l / spec.temperature + gumbel(words[k % 4])
        })
        .collect()
}

/// First index of the maximum (ties go to the lower state, as in the GPU kernel).
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (k, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = k;
        }
    }
    best
}

/// One synchronous update of every cell: the grid at step t from the grid at step t - 1.
pub fn step(spec: &NcaSpec, table: &RuleTable, grid: &[u8], sim_key: u64, t: u32) -> Vec<u8> {
    (0..grid.len()).map(|cell| argmax(&cell_scores(spec, table, grid, cell, sim_key, t)) as u8).collect()
}

/// Frames s_burn_in .. s_(burn_in + frames - 1) of one simulation.
pub fn rollout(spec: &NcaSpec, table: &RuleTable, sim_key: u64, frames: u32) -> Vec<Vec<u8>> {
    let cdf = initial_cdf(spec, sim_key);
    let mut grid = initial_grid(spec, sim_key, &cdf);
    let mut out = Vec::with_capacity(frames as usize);
    for t in 0..spec.burn_in + frames {
        if t > 0 {
            grid = step(spec, table, &grid, sim_key, t);
        }
        if t >= spec.burn_in {
            out.push(grid.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nca::rule::Rule;
    use crate::rng::derive_key;

    #[test]
    fn initial_grid_follows_its_distribution() {
        let spec = NcaSpec { grid: 64, ..NcaSpec::default() };
        let key = derive_key(11, &[]);
        let cdf = initial_cdf(&spec, key);
        assert!(cdf.windows(2).all(|w| w[0] <= w[1]) && cdf[9] == 1.0);
        let grid = initial_grid(&spec, key, &cdf);
        let mut prev = 0.0;
        for (s, &c) in cdf.iter().enumerate() {
            let p = f64::from(c - prev);
            prev = c;
            let got = grid.iter().filter(|&&v| v as usize == s).count() as f64 / grid.len() as f64;
            assert!(
                (got - p).abs() < 4.0 * (p * (1.0 - p) / 4096.0).sqrt() + 1e-3,
                "state {s}: {got} vs {p}"
            );
        }
    }

    #[test]
    fn identity_bias_freezes_the_grid() {
        let spec = NcaSpec { identity_bias: 1e3, temperature: 1.0, ..NcaSpec::default() };
        let table = Rule::sample(&spec, derive_key(1, &[])).table(&spec);
        let frames = rollout(&spec, &table, derive_key(2, &[]), 3);
        assert_eq!(frames[0], frames[2]);
    }

    #[test]
    fn tied_cells_pick_uniformly() {
        // A rule whose logits are all zero leaves every pick to the Gumbel noise: uniform over states.
        let spec = NcaSpec { grid: 32, ..NcaSpec::default() };
        let mut rule = Rule::sample(&spec, derive_key(1, &[]));
        rule.out.iter_mut().for_each(|w| *w = 0.0);
        let table = rule.table(&spec);
        let grid = vec![0u8; spec.cells()];
        let next = step(&spec, &table, &grid, derive_key(9, &[]), 1);
        for s in 0..10u8 {
            let share = next.iter().filter(|&&v| v == s).count() as f64 / next.len() as f64;
            assert!((share - 0.1).abs() < 0.04, "state {s} share {share}");
        }
    }
}

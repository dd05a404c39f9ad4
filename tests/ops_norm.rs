//! RMSNorm, RoPE and the token embedding on the GPU against their f64 references, on shapes that fill no
//! workgroup or block evenly, plus one per op that spans several workgroups in every dimension.
//!
//! Tolerances (relative, with the floor 1e-3 * rms of `error_stats`):
//! - RMSNorm y and rstd: a few f32 roundings after one f32 row reduction: 1e-4;
//! - RMSNorm dx: the same, but g - x r^2 mean(g x) cancels, so outputs near zero meet the floor: 1e-3;
//! - sums over many rows (RMSNorm dw over up to 1000 rows, embedding rows with over a hundred tokens)
//!   add one f32 rounding per term: 1e-3;
//! - RoPE: a c - b s cancels too, and the kernel's angle is Hugging Face's f32 product pos * inv_freq
//!   while the reference's is exact, off by up to pos * 2^-24 rad, so positions stay below 16: 1e-3.
//!
//! The embedding gradient is also checked bit for bit against an f32 sum in token order, and both
//! reductions for determinism across runs.

mod common;

use ncalm::gpu::{GpuTensor, KernelCache, Recorder};
use ncalm::ops::rope::{Direction, RopeShape};
use ncalm::ops::testing::*;
use ncalm::ops::Accumulate;
use ncalm::ops::{cat_columns, split_columns};
use ncalm::ops::{embedding, rmsnorm, rope};
use ncalm::Gpu;

fn upload(gpu: &Gpu, v: &[f64], label: &str) -> GpuTensor {
    gpu.upload(&to_f32(v), label).unwrap()
}

fn read(gpu: &Gpu, t: &GpuTensor) -> Vec<f32> {
    gpu.read::<f32>(t).unwrap()
}

fn plus(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn rmsnorm_case(gpu: &Gpu, cache: &KernelCache, rows: u32, dim: u32) {
    let (r, d) = (rows as usize, dim as usize);
    let eps = 1e-5;
    let x = randn(r * d, 10 + u64::from(dim));
    let w: Vec<f64> = randn(d, 11).iter().map(|v| 1.0 + 0.5 * v).collect();
    let dy = randn(r * d, 12);
    let dw_before = randn(d, 13);
    let (gx, gw, gdy) = (upload(gpu, &x, "x"), upload(gpu, &w, "w"), upload(gpu, &dy, "dy"));
    let y = gpu.tensor(r * d, "y").unwrap();
    let rstd = gpu.tensor(r, "rstd").unwrap();
    let dx = gpu.tensor(r * d, "dx").unwrap();
    // Garbage in dw: the plain backward must overwrite it.
    let dw = upload(gpu, &randn(d, 14), "dw");
    let dw_acc = upload(gpu, &dw_before, "dw accumulated");
    let dw_again = gpu.tensor(d, "dw again").unwrap();
    let dy_in_place = upload(gpu, &dy, "dy, then dx in place");
    let dx_before = randn(r * d, 17);
    let dx_acc = upload(gpu, &dx_before, "dx accumulated");
    let y_carrying = gpu.tensor(r * d, "y of the carrying forward").unwrap();
    let rstd_carrying = gpu.tensor(r, "rstd of the carrying forward").unwrap();
    let carry = gpu.tensor(r * d, "carry").unwrap();
    let dw_in_place = gpu.tensor(d, "dw of the in-place run").unwrap();
    let scratch = gpu.tensor(rmsnorm::scratch_len(rows, dim), "scratch").unwrap();

    let mut rec = Recorder::new(gpu, cache);
    let (write, add_dw) = (Accumulate::default(), Accumulate { dx: false, dw: true });
    rmsnorm::forward(&mut rec, &gx, &gw, &y, &rstd, rows, dim, eps as f32).unwrap();
    rmsnorm::forward_carrying(&mut rec, &gx, &gw, &y_carrying, &rstd_carrying, &carry, rows, dim, eps as f32)
        .unwrap();
    rmsnorm::backward(&mut rec, &gdy, &gx, &gw, &rstd, &dx, &dw, &scratch, rows, dim, write).unwrap();
    rmsnorm::backward(&mut rec, &gdy, &gx, &gw, &rstd, &dx, &dw_acc, &scratch, rows, dim, add_dw).unwrap();
    rmsnorm::backward(&mut rec, &gdy, &gx, &gw, &rstd, &dx, &dw_again, &scratch, rows, dim, write).unwrap();
    let add_dx = Accumulate { dx: true, dw: false };
    rmsnorm::backward(&mut rec, &gdy, &gx, &gw, &rstd, &dx_acc, &dw_again, &scratch, rows, dim, add_dx)
        .unwrap();
    let in_place = &dy_in_place;
    rmsnorm::backward(
        &mut rec,
        in_place,
        &gx,
        &gw,
        &rstd,
        in_place,
        &dw_in_place,
        &scratch,
        rows,
        dim,
        write,
    )
    .unwrap();
    rec.submit();

    let (ry, rrstd) = rmsnorm::reference::forward(&x, &w, r, d, eps);
    let (rdx, rdw) = rmsnorm::reference::backward(&dy, &x, &w, &rrstd, r, d);
    println!("rmsnorm rows {rows} x dim {dim}");
    assert_close_f32("  y", &read(gpu, &y), &ry, 1e-4);
    assert_close_f32("  rstd", &read(gpu, &rstd), &rrstd, 1e-4);
    assert_close_f32("  dx", &read(gpu, &dx), &rdx, 1e-3);
    assert_close_f32("  dx in place of dy", &read(gpu, &dy_in_place), &rdx, 1e-3);
    assert_close_f32("  dx accumulated", &read(gpu, &dx_acc), &plus(&dx_before, &rdx), 1e-3);
    assert_eq!(read(gpu, &y_carrying), read(gpu, &y), "the carrying forward's y");
    assert_eq!(read(gpu, &rstd_carrying), read(gpu, &rstd), "the carrying forward's rstd");
    assert_eq!(read(gpu, &carry), to_f32(&x), "the carried copy of x");
    let got_dw = read(gpu, &dw);
    assert_close_f32("  dw", &got_dw, &rdw, 1e-3);
    assert_close_f32("  dw accumulated", &read(gpu, &dw_acc), &plus(&dw_before, &rdw), 1e-3);
    // dw_again was written twice (the second time beside an accumulated dx), the same both times.
    assert_eq!(got_dw, read(gpu, &dw_again), "dw differs between identical runs");
    assert_eq!(got_dw, read(gpu, &dw_in_place), "dw changes when dx overwrites dy");
}

#[test]
fn rmsnorm_matches_the_reference() {
    for (build, gpu) in common::reduction_gpus() {
        println!("{build}");
        let cache = KernelCache::default();
        rmsnorm_case(&gpu, &cache, 37, 53);
        rmsnorm_case(&gpu, &cache, 1000, 96);
        // Several column tiles and row blocks in the dw reduction, several columns per invocation.
        rmsnorm_case(&gpu, &cache, 300, 600);
    }
}

/// One workgroup per row: past 65535 rows the grid spills into its y dimension.
#[test]
fn rmsnorm_covers_rows_beyond_one_grid_dimension() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let (rows, dim) = (66_000u32, 2u32);
    let (r, d) = (rows as usize, dim as usize);
    let (x, w) = (randn(r * d, 15), randn(d, 16));
    let (gx, gw) = (upload(&gpu, &x, "x"), upload(&gpu, &w, "w"));
    let (y, rstd) = (gpu.tensor(r * d, "y").unwrap(), gpu.tensor(r, "rstd").unwrap());
    let mut rec = Recorder::new(&gpu, &cache);
    rmsnorm::forward(&mut rec, &gx, &gw, &y, &rstd, rows, dim, 1e-5).unwrap();
    rec.submit();
    let (ry, rrstd) = rmsnorm::reference::forward(&x, &w, r, d, 1e-5);
    assert_close_f32("rmsnorm y, 66000 rows", &read(&gpu, &y), &ry, 1e-4);
    assert_close_f32("rmsnorm rstd, 66000 rows", &read(&gpu, &rstd), &rrstd, 1e-4);
}

fn rope_case(gpu: &Gpu, cache: &KernelCache, rows: u32, seq_len: u32, heads: u32, head_dim: u32) {
    let (r, s, h, d) = (rows as usize, seq_len as usize, heads as usize, head_dim as usize);
    let theta = 1e4;
    let n = r * h * d;
    let (x, dy) = (randn(n, 20 + u64::from(head_dim)), randn(n, 21));
    let (gx, gdy) = (upload(gpu, &x, "x"), upload(gpu, &dy, "dy"));
    let (y, dx) = (gpu.tensor(n, "y").unwrap(), gpu.tensor(n, "dx").unwrap());
    let (x_in_place, dy_in_place) = (upload(gpu, &x, "x in place"), upload(gpu, &dy, "dy in place"));
    let shape = RopeShape { rows, seq_len, heads, head_dim, theta: theta as f32 };
    let mut rec = Recorder::new(gpu, cache);
    rope::turn(&mut rec, Direction::Forward, &gx, &y, &shape).unwrap();
    rope::turn(&mut rec, Direction::Backward, &gdy, &dx, &shape).unwrap();
    rope::turn(&mut rec, Direction::Forward, &x_in_place, &x_in_place, &shape).unwrap();
    rope::turn(&mut rec, Direction::Backward, &dy_in_place, &dy_in_place, &shape).unwrap();
    // Queries and keys side by side with values in one qkv matrix, each part different data; the values
    // stay as they were.
    let values = randn(n, 22);
    let width = h * d;
    let qkv = upload(gpu, &cat_columns(&[&x, &dy, &values], width), "qkv");
    let dqkv = upload(gpu, &cat_columns(&[&dy, &x, &values], width), "dqkv");
    rope::turn_qk(&mut rec, Direction::Forward, &qkv, &shape).unwrap();
    rope::turn_qk(&mut rec, Direction::Backward, &dqkv, &shape).unwrap();
    rec.submit();
    let reference = |x: &[f64], direction| rope::reference::turn(x, direction, r, s, h, d, theta);
    let ry = reference(&x, Direction::Forward);
    let rdx = reference(&dy, Direction::Backward);
    println!("rope rows {rows} (seq {seq_len}) x heads {heads} x head_dim {head_dim}");
    assert_close_f32("  y", &read(gpu, &y), &ry, 1e-3);
    assert_close_f32("  dx", &read(gpu, &dx), &rdx, 1e-3);
    assert_close_f32("  y in place", &read(gpu, &x_in_place), &ry, 1e-3);
    assert_close_f32("  dx in place", &read(gpu, &dy_in_place), &rdx, 1e-3);
    let [q, k, v]: [Vec<f32>; 3] = split_columns(&read(gpu, &qkv), 3, width).try_into().unwrap();
    assert_close_f32("  qkv: q", &q, &ry, 1e-3);
    assert_close_f32("  qkv: k", &k, &reference(&dy, Direction::Forward), 1e-3);
    assert_close_f32("  qkv: v", &v, &values, 1e-6);
    let [dq, dk, dv]: [Vec<f32>; 3] = split_columns(&read(gpu, &dqkv), 3, width).try_into().unwrap();
    assert_close_f32("  dqkv: dq", &dq, &rdx, 1e-3);
    assert_close_f32("  dqkv: dk", &dk, &reference(&x, Direction::Backward), 1e-3);
    assert_close_f32("  dqkv: dv", &dv, &values, 1e-6);
}

#[test]
fn rope_matches_the_reference() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    rope_case(&gpu, &cache, 2 * 13, 13, 3, 10);
    // 32000 pairs: 125 workgroups; the last sequence is partial.
    rope_case(&gpu, &cache, 200, 16, 5, 64);
}

/// At long positions the angle is the f32 product of position and f32 inverse frequency, as in Hugging
/// Face; the kernel must then take its sine and cosine accurately although it reaches thousands of
/// radians. The reference here is that f32 angle, with sine and cosine in f64.
#[test]
fn rope_keeps_its_accuracy_at_long_positions() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let (rows, head_dim, theta) = (4096u32, 8u32, 1e4f32);
    let (r, d, half) = (rows as usize, head_dim as usize, head_dim as usize / 2);
    let x = randn(r * d, 30);
    let gx = upload(&gpu, &x, "x");
    let y = gpu.tensor(r * d, "y").unwrap();
    let mut rec = Recorder::new(&gpu, &cache);
    rope::turn(
        &mut rec,
        Direction::Forward,
        &gx,
        &y,
        &RopeShape { rows, seq_len: rows, heads: 1, head_dim, theta },
    )
    .unwrap();
    rec.submit();
    let inv_freq = rope::inverse_frequencies(head_dim, theta);
    let mut want = vec![0.0; r * d];
    for row in 0..r {
        for i in 0..half {
            let angle = f64::from(row as f32 * inv_freq[i]);
            let (s, c) = angle.sin_cos();
            let (a, b) = (x[row * d + i], x[row * d + i + half]);
            want[row * d + i] = a * c - b * s;
            want[row * d + i + half] = b * c + a * s;
        }
    }
    let e = assert_close_f32("rope y at positions up to 4095", &read(&gpu, &y), &want, 1e-3);
    // WGSL bounds the error of sin and cos only on [-pi, pi]: this holds the kernel's range reduction.
    assert!(e.max_abs <= 1e-5, "rope at long positions: max abs error {:.2e}", e.max_abs);
}

/// dtable as the kernel must compute it: f32 sums in token order, starting from `start`.
fn token_order_sums(dout: &[f32], ids: &[u32], start: &[f32], dim: usize) -> Vec<f32> {
    let mut dtable = start.to_vec();
    for (row, &id) in dout.chunks_exact(dim).zip(ids) {
        if let Some(target) = dtable.get_mut(id as usize * dim..(id as usize + 1) * dim) {
            for (d, g) in target.iter_mut().zip(row) {
                *d += g;
            }
        }
    }
    dtable
}

fn embedding_case(gpu: &Gpu, cache: &KernelCache, ids: &[u32], vocab: u32, dim: u32) {
    let (v, d, tokens) = (vocab as usize, dim as usize, ids.len() as u32);
    let table = randn(v * d, 40 + u64::from(dim));
    let dout = randn(ids.len() * d, 41);
    let dtable_before = randn(v * d, 42);
    let (gtable, gdout) = (upload(gpu, &table, "table"), upload(gpu, &dout, "dout"));
    let gids = gpu.upload(ids, "ids").unwrap();
    let out = upload(gpu, &randn(ids.len() * d, 43), "out");
    // Garbage in dtable: the plain backward must overwrite every row, absent ids' rows included.
    let dtable = upload(gpu, &randn(v * d, 44), "dtable");
    let dtable_acc = upload(gpu, &dtable_before, "dtable accumulated");
    let dtable_again = gpu.tensor(v * d, "dtable again").unwrap();
    let mut rec = Recorder::new(gpu, cache);
    embedding::forward(&mut rec, &gtable, &gids, &out, tokens, vocab, dim).unwrap();
    embedding::backward(&mut rec, &gdout, &gids, &dtable, tokens, vocab, dim, false).unwrap();
    embedding::backward(&mut rec, &gdout, &gids, &dtable_acc, tokens, vocab, dim, true).unwrap();
    embedding::backward(&mut rec, &gdout, &gids, &dtable_again, tokens, vocab, dim, false).unwrap();
    rec.submit();

    let rdtable = embedding::reference::backward(&dout, ids, v, d);
    println!("embedding vocab {vocab} x dim {dim}, {tokens} tokens");
    // A gather copies the f32 table exactly.
    let table_f32 = to_f64(&to_f32(&table));
    assert_close_f32("  out", &read(gpu, &out), &embedding::reference::forward(&table_f32, ids, d), 0.0);
    let got = read(gpu, &dtable);
    assert_close_f32("  dtable", &got, &rdtable, 1e-3);
    let got_acc = read(gpu, &dtable_acc);
    assert_close_f32("  dtable accumulated", &got_acc, &plus(&dtable_before, &rdtable), 1e-3);
    let (dout32, zeros) = (to_f32(&dout), vec![0.0f32; v * d]);
    assert_eq!(got, token_order_sums(&dout32, ids, &zeros, d), "dtable is not the f32 sum in token order");
    assert_eq!(
        got_acc,
        token_order_sums(&dout32, ids, &to_f32(&dtable_before), d),
        "accumulated dtable is not the f32 sum in token order"
    );
    assert_eq!(got, read(gpu, &dtable_again), "dtable differs between identical runs");
}

#[test]
fn embedding_matches_the_reference() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    // Many repeats: every third token is id 7 (a hot row across chunks), ids beyond the vocabulary
    // are skipped, and the last block of rows is partial.
    let mut ids: Vec<u32> = randint(300, 50, 50);
    for (t, id) in ids.iter_mut().enumerate() {
        if t % 3 == 0 {
            *id = 7;
        }
    }
    ids[5] = 50;
    ids[200] = u32::MAX;
    embedding_case(&gpu, &cache, &ids, 50, 19);
    // 32 blocks of rows, 20 chunks of tokens.
    embedding_case(&gpu, &cache, &randint(5000, 1000, 51), 1000, 7);
    // More columns than invocations per workgroup.
    embedding_case(&gpu, &cache, &randint(700, 70, 52), 70, 300);
}

#[test]
fn launchers_reject_mismatched_shapes() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let t = |n| gpu.tensor(n, "t").unwrap();
    let mut rec = Recorder::new(&gpu, &cache);
    let err = rmsnorm::forward(&mut rec, &t(12), &t(4), &t(12), &t(2), 3, 4, 1e-5).unwrap_err();
    assert!(err.to_string().contains("rstd"), "{err}");
    let err = rmsnorm::backward(
        &mut rec,
        &t(130 * 2),
        &t(130 * 2),
        &t(2),
        &t(130),
        &t(130 * 2),
        &t(2),
        &t(2),
        130,
        2,
        Accumulate::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("scratch"), "{err}");
    // dx may replace dy, but cannot add to it: the kernel would read gradients it already added.
    let (dy, scratch) = (t(8), t(rmsnorm::scratch_len(2, 4)));
    let add_dx = Accumulate { dx: true, dw: false };
    let err = rmsnorm::backward(&mut rec, &dy, &t(8), &t(4), &t(2), &dy, &t(4), &scratch, 2, 4, add_dx);
    assert!(err.unwrap_err().to_string().contains("overlapping dy"));
    let x = t(8);
    let err = rmsnorm::forward_carrying(&mut rec, &x, &t(4), &t(8), &t(2), &x, 2, 4, 1e-5).unwrap_err();
    assert!(err.to_string().contains("carry"), "{err}");
    let err = rope::turn(
        &mut rec,
        Direction::Forward,
        &t(30),
        &t(30),
        &RopeShape { rows: 3, seq_len: 3, heads: 1, head_dim: 10 + 1, theta: 1e4 },
    )
    .unwrap_err();
    assert!(err.to_string().contains("even"), "{err}");
    // A qkv matrix holds three parts per row: q alone is too short.
    let err = rope::turn_qk(
        &mut rec,
        Direction::Forward,
        &t(24),
        &RopeShape { rows: 3, seq_len: 3, heads: 2, head_dim: 4, theta: 1e4 },
    )
    .unwrap_err();
    assert!(err.to_string().contains("3 x heads 2"), "{err}");
    let err = embedding::forward(&mut rec, &t(19), &t(3), &t(12), 3, 5, 4).unwrap_err();
    assert!(err.to_string().contains("table"), "{err}");
}

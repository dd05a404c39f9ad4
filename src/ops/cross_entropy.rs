//! The training loss: softmax cross-entropy over the vocabulary with an ignore mask, fused with its
//! backward. One pass per row writes the row's loss and overwrites the logits with d loss / d logits, so
//! the [rows, vocab] gradient (the largest activation of a small model) needs no buffer of its own.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, ReducingShader, WgslConst};

/// A target that is not trained on (padding, prompt tokens): its row gets loss 0 and gradient 0.
pub const IGNORE: u32 = u32::MAX;

pub const SHADER: ReducingShader =
    reducing_shader!("cross_entropy", "cross_entropy.wgsl", &[("IGNORE", WgslConst::U32(IGNORE))]);

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
    /// Whether the gradient is also multiplied by the loss scale in binding 4.
    scaled: u32,
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { rows, vocab, scale, scaled })
}

/// For each row of `logits` [rows, vocab]: `losses[row] = logsumexp(z) - z[target]`, unscaled (0 for an
/// ignored row), and the logits are overwritten IN PLACE with `(softmax(z) - onehot(target)) * scale`
/// (0 for an ignored row). `scale` is the caller's: 1/C for the mean over C counted targets; a
/// `loss_scale` (element 0 of [`LossScale`](super::loss_scale::LossScale)'s state, read on the GPU)
/// multiplies it further. Targets `>= vocab` other than [`IGNORE`] are treated as ignored.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward(
    rec: &mut Recorder,
    logits: &GpuTensor,
    targets: &GpuTensor,
    losses: &GpuTensor,
    rows: u32,
    vocab: u32,
    scale: f32,
    loss_scale: Option<&GpuTensor>,
) -> Result<()> {
    ensure!(vocab > 0, "cross_entropy: vocab is 0");
    let elements = rows as usize * vocab as usize;
    ensure!(
        logits.len == elements,
        "cross_entropy: logits hold {} values, not rows {rows} x vocab {vocab} = {elements}",
        logits.len
    );
    // The shader indexes the logits with u32.
    ensure!(
        elements <= u32::MAX as usize,
        "cross_entropy: rows {rows} x vocab {vocab} exceeds 2^32 logits; split the rows"
    );
    ensure!(targets.len == rows as usize, "cross_entropy: targets hold {}, not rows {rows}", targets.len);
    ensure!(losses.len == rows as usize, "cross_entropy: losses hold {}, not rows {rows}", losses.len);
    ensure!(scale.is_finite(), "cross_entropy: scale {scale} is not finite");
    let params = Params { rows, vocab, scale, scaled: loss_scale.is_some().into() };
    // Unscaled, the shader never reads binding 4, but it must hold some buffer.
    let bindings = [logits, targets, losses, loss_scale.unwrap_or(losses)];
    rec.dispatch(&SHADER.for_gpu(rec.gpu()), "forward_backward", &params, &bindings, grid_1d(rows))
}

/// The plain-Rust reference (f64).
pub mod reference {
    use super::IGNORE;

    /// Returns (losses, dlogits) with the same meaning as the GPU op (which writes dlogits in place).
    pub fn forward_backward(
        logits: &[f64],
        targets: &[u32],
        rows: usize,
        vocab: usize,
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        assert_eq!(logits.len(), rows * vocab, "logits are not rows x vocab");
        assert_eq!(targets.len(), rows, "one target per row");
        let mut losses = vec![0.0; rows];
        let mut dlogits = vec![0.0; rows * vocab];
        for (row, &target) in targets.iter().enumerate() {
            if target == IGNORE || target as usize >= vocab {
                continue;
            }
            let t = target as usize;
            let z = &logits[row * vocab..(row + 1) * vocab];
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
            losses[row] = lse - z[t];
            let dz = &mut dlogits[row * vocab..(row + 1) * vocab];
            for (j, (d, &v)) in dz.iter_mut().zip(z).enumerate() {
                let onehot = if j == t { 1.0 } else { 0.0 };
                *d = ((v - lse).exp() - onehot) * scale;
            }
        }
        (losses, dlogits)
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use super::IGNORE;
    use crate::ops::testing::*;

    #[test]
    fn reference_gradient_matches_finite_differences() {
        let (rows, vocab) = (6, 7);
        let logits: Vec<f64> = randn(rows * vocab, 1).iter().map(|v| 2.0 * v).collect();
        // Two ignored rows: one marked IGNORE, one with an out-of-range target.
        let targets = [3, IGNORE, 0, 6, 9, 2];
        let counted = 4.0;
        // The op's output is the scalar mean loss; a scale that is not 1/C also catches a dropped factor.
        let scale = 0.7 / counted;
        let (_, dlogits) = forward_backward(&logits, &targets, rows, vocab, scale);
        let loss =
            |z: &[f64]| forward_backward(z, &targets, rows, vocab, scale).0.iter().sum::<f64>() * scale;
        let fd = finite_difference(&loss, &logits, 1e-6);
        assert_close("cross_entropy dlogits vs finite differences", &dlogits, &fd, 1e-6);
        for row in [1, 4] {
            assert!(dlogits[row * vocab..(row + 1) * vocab].iter().all(|&d| d == 0.0), "ignored row {row}");
        }
    }

    #[test]
    fn reference_loss_is_log_vocab_for_equal_logits_and_shift_invariant() {
        let vocab = 11;
        let (losses, _) = forward_backward(&[2.5; 11], &[4], 1, vocab, 1.0);
        assert!((losses[0] - (vocab as f64).ln()).abs() < 1e-12, "loss {}", losses[0]);
        let z = randn(vocab, 2);
        let shifted: Vec<f64> = z.iter().map(|v| v + 1000.0).collect();
        let (a, da) = forward_backward(&z, &[5], 1, vocab, 1.0);
        let (b, db) = forward_backward(&shifted, &[5], 1, vocab, 1.0);
        assert!((a[0] - b[0]).abs() < 1e-9, "loss {} vs shifted {}", a[0], b[0]);
        assert_close("cross_entropy gradient under a shift", &db, &da, 1e-9);
    }
}

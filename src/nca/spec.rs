//! What defines a family of random NCA rules and how their trajectories become token sequences.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The rule family and simulation settings of docs/method.md section 1. Settings left out take the paper's
/// defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NcaSpec {
    /// Side of the square, periodic grid (even, so 2x2 patches tile it).
    pub grid: u32,
    /// Alphabet size n: each cell holds one of n states.
    pub states: u32,
    /// Wrap-pad the channel axis too, as the reference does (states 0 and n-1 get two weight draws).
    pub channel_wrap: bool,
    /// Output channels of the 3x3 convolution.
    pub conv_channels: u32,
    /// Width of the per-cell hidden layer (ReLU).
    pub hidden: u32,
    /// Gumbel-max sampling temperature T.
    pub temperature: f32,
    /// Logit bonus for keeping the current state.
    pub identity_bias: f32,
    /// Steps simulated and discarded before the first recorded frame.
    pub burn_in: u32,
}

impl Default for NcaSpec {
    fn default() -> Self {
        Self {
            grid: 12,
            states: 10,
            channel_wrap: true,
            conv_channels: 4,
            hidden: 16,
            temperature: 1e-4,
            identity_bias: 0.0,
            burn_in: 10,
        }
    }
}

pub const MAX_STATES: u32 = 15;
pub const MAX_CONV_CHANNELS: u32 = 16;
pub const MAX_HIDDEN: u32 = 64;
pub const MAX_GRID: u32 = 256;

impl NcaSpec {
    /// Checks every setting, naming the setting by its field (its key in a preset's `[data]`) and the
    /// allowed range.
    pub fn validate(&self) -> Result<()> {
        if self.grid < 2 || !self.grid.is_multiple_of(2) || self.grid > MAX_GRID {
            bail!("grid must be an even number in 2..={MAX_GRID} (2x2 patches tile it), got {}", self.grid);
        }
        if !(2..=MAX_STATES).contains(&self.states) {
            bail!(
                "states must be in 2..={MAX_STATES} so that every patch token (n^4 + 2 ids) fits uint16, got {}",
                self.states
            );
        }
        if !(1..=MAX_CONV_CHANNELS).contains(&self.conv_channels) {
            bail!("conv_channels must be in 1..={MAX_CONV_CHANNELS}, got {}", self.conv_channels);
        }
        if !(1..=MAX_HIDDEN).contains(&self.hidden) {
            bail!("hidden (the per-cell MLP's width) must be in 1..={MAX_HIDDEN}, got {}", self.hidden);
        }
        if !(self.temperature.is_finite() && (1e-6..=1e3).contains(&self.temperature)) {
            bail!("temperature must be in [1e-6, 1e3], got {}", self.temperature);
        }
        if !self.identity_bias.is_finite() || self.identity_bias.abs() > 1e3 {
            bail!("identity_bias must be finite and at most 1e3 in magnitude, got {}", self.identity_bias);
        }
        if self.burn_in > 100_000 {
            bail!("burn_in must be at most 100000 steps, got {}", self.burn_in);
        }
        Ok(())
    }

    pub fn cells(&self) -> usize {
        (self.grid * self.grid) as usize
    }

    /// Input channels of the 3x3 convolution: n, or n + 2 with the channel-axis wrap.
    pub fn conv_inputs(&self) -> u32 {
        self.states + if self.channel_wrap { 2 } else { 0 }
    }

    /// Trainable-looking parameters of one rule (686 for the paper's defaults).
    pub fn parameters_per_rule(&self) -> usize {
        let (c, h, n) = (self.conv_channels as usize, self.hidden as usize, self.states as usize);
        9 * self.conv_inputs() as usize * c + c + c * h + h + h * n + n
    }
}

/// How frames become tokens: 2x2 patches row-major, each frame wrapped in `<grid>` ... `</grid>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLayout {
    pub grid: u32,
    pub states: u32,
    /// Model context L; a stored sequence holds L + 1 tokens (input and shifted target).
    pub seq_len: u32,
}

impl TokenLayout {
    pub fn new(spec: &NcaSpec, seq_len: u32) -> Result<Self> {
        if !(2..=1 << 20).contains(&seq_len) {
            bail!("sequence length must be in 2..=1048576 tokens, got {seq_len}");
        }
        Ok(Self { grid: spec.grid, states: spec.states, seq_len })
    }

    pub fn patches(&self) -> u32 {
        (self.grid / 2) * (self.grid / 2)
    }

    /// Tokens per frame: the patches and the two delimiters.
    pub fn frame_len(&self) -> u32 {
        self.patches() + 2
    }

    pub fn grid_token(&self) -> u32 {
        self.states.pow(4)
    }

    pub fn end_grid_token(&self) -> u32 {
        self.states.pow(4) + 1
    }

    pub fn vocab_size(&self) -> u32 {
        self.states.pow(4) + 2
    }

    /// Tokens stored per sequence.
    pub fn stored_len(&self) -> u32 {
        self.seq_len + 1
    }

    /// Frames one simulation must record to fill a stored sequence.
    pub fn frames(&self) -> u32 {
        self.stored_len().div_ceil(self.frame_len())
    }

    /// Targets at positions 0..masked_targets() lie inside the first frame and are not trained on.
    pub fn masked_targets(&self) -> u32 {
        (self.frame_len() - 1).min(self.seq_len)
    }

    /// Patch id a + n b + n^2 c + n^3 d of the patch whose top-left cell is (2 py, 2 px).
    pub fn patch_token(&self, frame: &[u8], py: u32, px: u32) -> u32 {
        let (g, n) = (self.grid as usize, self.states);
        let (y, x) = (2 * py as usize, 2 * px as usize);
        let cell = |yy: usize, xx: usize| u32::from(frame[yy * g + xx]);
        cell(y, x) + n * cell(y, x + 1) + n * n * cell(y + 1, x) + n * n * n * cell(y + 1, x + 1)
    }

    /// Appends one frame's tokens; with `delimiters` false only the patch ids (as the gzip filter wants).
    pub fn push_frame(&self, frame: &[u8], delimiters: bool, out: &mut Vec<u32>) {
        if delimiters {
            out.push(self.grid_token());
        }
        let side = self.grid / 2;
        for py in 0..side {
            for px in 0..side {
                out.push(self.patch_token(frame, py, px));
            }
        }
        if delimiters {
            out.push(self.end_grid_token());
        }
    }

    /// One stored sequence (L + 1 tokens) from recorded frames.
    pub fn sequence(&self, frames: &[Vec<u8>]) -> Vec<u32> {
        let mut out = Vec::with_capacity((self.frame_len() * frames.len() as u32) as usize);
        for frame in frames {
            self.push_frame(frame, true, &mut out);
        }
        out.truncate(self.stored_len() as usize);
        out
    }

    /// Inverse of the patch tokenisation for one frame's patch ids (delimiters excluded).
    pub fn decode_frame(&self, patch_tokens: &[u32]) -> Result<Vec<u8>> {
        if patch_tokens.len() != self.patches() as usize {
            bail!("a frame needs {} patch tokens, got {}", self.patches(), patch_tokens.len());
        }
        let (g, n, side) = (self.grid as usize, self.states, (self.grid / 2) as usize);
        let mut frame = vec![0u8; g * g];
        for (p, &tok) in patch_tokens.iter().enumerate() {
            if tok >= n.pow(4) {
                bail!("token {tok} at patch {p} is not a patch id (alphabet {n})");
            }
            let (y, x) = (2 * (p / side), 2 * (p % side));
            let digit = |k: u32| (tok / n.pow(k) % n) as u8;
            frame[y * g + x] = digit(0);
            frame[y * g + x + 1] = digit(1);
            frame[(y + 1) * g + x] = digit(2);
            frame[(y + 1) * g + x + 1] = digit(3);
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_layout_numbers() {
        let l = TokenLayout::new(&NcaSpec::default(), 1024).unwrap();
        assert_eq!((l.patches(), l.frame_len(), l.frames(), l.vocab_size()), (36, 38, 27, 10_002));
        assert_eq!((l.grid_token(), l.end_grid_token(), l.masked_targets()), (10_000, 10_001, 37));
        assert_eq!(NcaSpec::default().parameters_per_rule(), 686);
    }

    #[test]
    fn tokens_round_trip() {
        for (grid, states) in [(12u32, 10u32), (4, 2), (6, 15)] {
            let spec = NcaSpec { grid, states, ..NcaSpec::default() };
            let l = TokenLayout::new(&spec, 100).unwrap();
            let frame: Vec<u8> =
                (0..spec.cells()).map(|i| ((i * 7 + i / 5) % states as usize) as u8).collect();
            let mut toks = Vec::new();
            l.push_frame(&frame, false, &mut toks);
            assert!(toks.iter().all(|&t| t < states.pow(4)));
            assert_eq!(l.decode_frame(&toks).unwrap(), frame);
        }
    }

    #[test]
    fn patch_digit_order() {
        let spec = NcaSpec { grid: 2, states: 10, ..NcaSpec::default() };
        let l = TokenLayout::new(&spec, 10).unwrap();
        // top-left 1, top-right 2, bottom-left 3, bottom-right 4 -> 1 + 20 + 300 + 4000
        assert_eq!(l.patch_token(&[1, 2, 3, 4], 0, 0), 4321);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |s: NcaSpec| s.validate().unwrap_err().to_string();
        assert!(bad(NcaSpec { grid: 11, ..NcaSpec::default() }).contains("grid"));
        assert!(bad(NcaSpec { states: 16, ..NcaSpec::default() }).contains("uint16"));
        assert!(bad(NcaSpec { temperature: 0.0, ..NcaSpec::default() }).contains("temperature"));
        assert!(TokenLayout::new(&NcaSpec::default(), 1).is_err());
    }
}

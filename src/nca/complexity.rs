//! The gzip complexity filter of docs/method.md section 3: a rule is kept when the gzip compression ratio of
//! its scoring rollout lies strictly inside a band.

use std::io::Write;

use anyhow::{bail, Result};
use flate2::{write::GzEncoder, Compression};
use serde::{Deserialize, Serialize};

/// Frames of the separate scoring rollout (s_burn_in .. s_burn_in+9).
pub const SCORE_FRAMES: u32 = 10;

/// Bins of the candidate-ratio histogram: width 0.05 over [0, 1]; ratios >= 1 land in the last bin.
pub const HISTOGRAM_BINS: usize = 20;

/// Length of the gzip member (level 9, zlib's deflate, 10-byte header with no file name, 8-byte
/// trailer) of `bytes`: what Python's `len(gzip.compress(bytes, 9))` gives.
pub fn gzip_len(bytes: &[u8]) -> usize {
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() + 64), Compression::new(9));
    enc.write_all(bytes).expect("writing to memory cannot fail");
    enc.finish().expect("writing to memory cannot fail").len()
}

/// Compression ratio of patch tokens serialised as int32 little-endian, the reference's byte format.
pub fn gzip_ratio(patch_tokens: &[u32]) -> f64 {
    let bytes: Vec<u8> = patch_tokens.iter().flat_map(|&t| (t as i32).to_le_bytes()).collect();
    gzip_len(&bytes) as f64 / bytes.len() as f64
}

/// An open interval of compression ratios: lower < ratio < upper. Settings write it "LO:HI".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Band {
    pub lower: f64,
    pub upper: f64,
}

impl Band {
    pub const PAPER_DEFAULT: Band = Band { lower: 0.5, upper: 1.0 };

    pub fn new(lower: f64, upper: f64) -> Result<Self> {
        if !(lower.is_finite() && upper.is_finite()) || lower < 0.0 || upper > 1.0 || lower >= upper {
            bail!("complexity band must satisfy 0 <= lower < upper <= 1, got {lower}:{upper}");
        }
        Ok(Self { lower, upper })
    }

    /// Parses "LO:HI", e.g. "0.5:1.0".
    pub fn parse(text: &str) -> Result<Self> {
        let Some((lo, hi)) = text.split_once(':') else {
            bail!("complexity band must be written LO:HI (e.g. 0.5:1.0), got {text:?}");
        };
        let num = |s: &str| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| anyhow::anyhow!("complexity band bound {s:?} in {text:?} is not a number"))
        };
        Self::new(num(lo)?, num(hi)?)
    }

    pub fn contains(&self, ratio: f64) -> bool {
        self.lower < ratio && ratio < self.upper
    }
}

impl TryFrom<String> for Band {
    type Error = anyhow::Error;

    fn try_from(text: String) -> Result<Self> {
        Self::parse(&text)
    }
}

/// "LO:HI" as `parse` reads it, each bound written so that it reads back exactly ("0.5:1.0").
impl From<Band> for String {
    fn from(band: Band) -> String {
        format!("{:?}:{:?}", band.lower, band.upper)
    }
}

impl std::fmt::Display for Band {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.lower, self.upper)
    }
}

/// Counts of candidate ratios in bins of 0.05.
pub fn histogram(ratios: &[f64]) -> Vec<u64> {
    let mut bins = vec![0u64; HISTOGRAM_BINS];
    for &r in ratios {
        let b = ((r / 0.05).floor().max(0.0) as usize).min(HISTOGRAM_BINS - 1);
        bins[b] += 1;
    }
    bins
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths printed by CPython's gzip.compress(data, 9, mtime=0), which uses zlib.
    #[test]
    fn gzip_lengths_match_zlib() {
        assert_eq!(gzip_len(b""), 20);
        assert_eq!(gzip_len(&[0u8; 1440]), 32);
        let ramp: Vec<u8> = (0..6).flat_map(|_| 0..=255u8).collect();
        assert_eq!(gzip_len(&ramp), 303);
        let ints: Vec<u32> = (0..360u32).map(|i| i * 7919 % 10_000).collect();
        let bytes: Vec<u8> = ints.iter().flat_map(|t| (*t as i32).to_le_bytes()).collect();
        assert_eq!(gzip_len(&bytes), 882);
        assert_eq!(gzip_ratio(&ints), 882.0 / 1440.0);
    }

    #[test]
    fn constant_grid_scores_as_the_paper_says() {
        // docs/method.md section 3: a constant grid scores 0.022.
        assert!((gzip_ratio(&[0u32; 360]) - 0.022).abs() < 0.001);
    }

    #[test]
    fn band_is_strict_and_parsed() {
        let b = Band::parse("0.5:1.0").unwrap();
        assert!(!b.contains(0.5) && b.contains(0.5001) && !b.contains(1.0));
        for bad in ["0.5", "a:1", "0.6:0.5", "0.5:1.5", "-1:0.5", "nan:1"] {
            assert!(Band::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn band_text_reads_back() {
        assert_eq!(String::from(Band::PAPER_DEFAULT), "0.5:1.0");
        for text in ["0.3:0.4", "0:1", "1e-7:0.123456789"] {
            let b = Band::parse(text).unwrap();
            assert_eq!(Band::parse(&String::from(b)).unwrap(), b, "{text}");
        }
    }

    #[test]
    fn histogram_bins() {
        let h = histogram(&[0.0, 0.049, 0.05, 0.99, 1.2]);
        assert_eq!((h[0], h[1], h[19]), (2, 1, 2));
    }
}

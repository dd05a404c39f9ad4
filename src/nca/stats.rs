//! Statistics of a token data set: counts, distinct tokens, the rank-frequency (Zipf) slope and the
//! gzip histogram of the rule search, as numbers and as a picture.

use serde::Serialize;

use crate::plot::{render_grid, Bars, Canvas, Chart};

#[derive(Clone, Debug, Serialize)]
pub struct TokenStats {
    pub tokens: u64,
    pub distinct: u64,
    /// Least-squares slope of log frequency against log rank over the patch tokens (delimiters left out).
    pub zipf_slope: f64,
    /// Ranks the slope was fitted over.
    pub zipf_ranks: u64,
    /// Entropy of the unigram distribution in nats (the loss of a model that learns only frequencies).
    pub unigram_entropy: f64,
    /// Frequencies of the patch tokens, most common first.
    #[serde(skip)]
    pub rank_frequency: Vec<u64>,
}

/// Counts tokens below `vocab`; tokens at or above `first_special` are delimiters, left out of the
/// rank-frequency curve.
pub fn token_stats(tokens: &[u16], vocab: u32, first_special: u32) -> TokenStats {
    let mut counts = vec![0u64; vocab as usize];
    for &t in tokens {
        counts[t as usize] += 1;
    }
    let total = tokens.len() as f64;
    let unigram_entropy =
        counts.iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / total) * (c as f64 / total).ln()).sum();
    let distinct = counts.iter().filter(|&&c| c > 0).count() as u64;
    let mut freq: Vec<u64> = counts[..first_special as usize].iter().copied().filter(|&c| c > 0).collect();
    freq.sort_unstable_by(|a, b| b.cmp(a));
    // The fit covers the ranks whose counts are large enough to be measured (>= 5 occurrences).
    let fit: Vec<(f64, f64)> = freq
        .iter()
        .enumerate()
        .take_while(|(_, &c)| c >= 5)
        .map(|(r, &c)| (((r + 1) as f64).ln(), (c as f64).ln()))
        .collect();
    TokenStats {
        tokens: tokens.len() as u64,
        distinct,
        zipf_slope: slope(&fit),
        zipf_ranks: fit.len() as u64,
        unigram_entropy,
        rank_frequency: freq,
    }
}

fn slope(points: &[(f64, f64)]) -> f64 {
    if points.len() < 2 {
        return f64::NAN;
    }
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}

/// Two panels: rank-frequency on log-log axes, and the candidates' gzip-ratio histogram.
pub fn stats_picture(stats: &TokenStats, histogram: &[u64], bin_width: f64, band: [f64; 2]) -> Canvas {
    let zipf: Vec<(f64, f64)> =
        stats.rank_frequency.iter().enumerate().map(|(r, &c)| ((r + 1) as f64, c as f64)).collect();
    let zipf_chart = Chart::line(format!("rank-frequency (slope {:.2})", stats.zipf_slope), "rank", "count")
        .log_x()
        .log_y()
        .with_series("patch tokens", zipf);
    let edges: Vec<f64> = (0..=histogram.len()).map(|i| i as f64 * bin_width).collect();
    let heights: Vec<f64> = histogram.iter().map(|&h| h as f64).collect();
    let gzip_chart = Chart::line(
        format!("gzip ratio of candidate rules (kept: {}..{})", band[0], band[1]),
        "gzip compression ratio",
        "candidates",
    )
    .with_bars(Bars { edges, heights });
    render_grid(&[zipf_chart, gzip_chart], 2, 800, 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_slope_of_a_power_law() {
        // Counts proportional to 1/r give slope -1.
        let mut tokens = Vec::new();
        for r in 1..=200u16 {
            tokens.extend(std::iter::repeat_n(r - 1, (20_000 / r) as usize));
        }
        let s = token_stats(&tokens, 202, 200);
        assert!((s.zipf_slope + 1.0).abs() < 0.02, "{}", s.zipf_slope);
        assert_eq!(s.distinct, 200);
    }
}

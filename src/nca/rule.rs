//! One random NCA rule: a never-trained network drawn with LeCun truncated-normal initialisation.

use super::spec::NcaSpec;
use crate::rng::Stream;

/// Random-stream domains (the fourth Philox counter word) of the NCA, shared with `shaders/nca.wgsl`.
pub const DOMAIN_RULE_WEIGHTS: u32 = 1;
pub const DOMAIN_INITIAL_LOGITS: u32 = 2;
pub const DOMAIN_INITIAL_GRID: u32 = 3;
pub const DOMAIN_STEP_NOISE: u32 = 4;

/// 1 / standard deviation of a standard normal truncated to [-2, 2] (the variance-scaling constant).
const TRUNCATED_STD: f64 = 0.879_625_661_034_239_8;

/// The weights of one rule, in the reference's layouts.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// 3x3 convolution kernel, HWIO: `[dy][dx][input channel][output channel]`.
    pub conv: Vec<f32>,
    pub conv_bias: Vec<f32>,
    /// 1x1 convolution to the hidden layer, `[conv channel][hidden]`.
    pub hidden: Vec<f32>,
    pub hidden_bias: Vec<f32>,
    /// 1x1 convolution to the state logits, `[hidden][state]`.
    pub out: Vec<f32>,
    pub out_bias: Vec<f32>,
}

impl Rule {
    /// Draws a rule from its key: every weight LeCun truncated normal, every bias zero.
    pub fn sample(spec: &NcaSpec, key: u64) -> Self {
        let mut stream = Stream::new(key, DOMAIN_RULE_WEIGHTS);
        let mut lecun = |count: usize, fan_in: usize| -> Vec<f32> {
            let scale = (1.0 / fan_in as f64).sqrt() / TRUNCATED_STD;
            (0..count).map(|_| (stream.next_truncated_normal(2.0) * scale) as f32).collect()
        };
        let (cin, c, h, n) = (
            spec.conv_inputs() as usize,
            spec.conv_channels as usize,
            spec.hidden as usize,
            spec.states as usize,
        );
        Self {
            conv: lecun(9 * cin * c, 9 * cin),
            conv_bias: vec![0.0; c],
            hidden: lecun(c * h, c),
            hidden_bias: vec![0.0; h],
            out: lecun(h * n, h),
            out_bias: vec![0.0; n],
        }
    }

    /// The kernel as it acts on one-hot states: for neighbour k = 3 dy + dx and state s, the sum of the
    /// kernel rows of every input channel that is 1 for s. With the channel wrap, the input channels are
    /// [s(n-1), s0, ..., s(n-1), s0], so states 0 and n-1 each collect two rows.
    pub fn table(&self, spec: &NcaSpec) -> RuleTable {
        let (cin, c, n) = (spec.conv_inputs() as usize, spec.conv_channels as usize, spec.states as usize);
        let mut lut = vec![0.0f32; 9 * n * c];
        for k in 0..9 {
            for s in 0..n {
                let channels: Vec<usize> = if spec.channel_wrap {
                    let mut v = vec![s + 1];
                    if s == n - 1 {
                        v.insert(0, 0);
                    }
                    if s == 0 {
                        v.push(n + 1);
                    }
                    v
                } else {
                    vec![s]
                };
                for o in 0..c {
                    lut[(k * n + s) * c + o] =
                        channels.iter().map(|&ch| self.conv[(k * cin + ch) * c + o]).sum();
                }
            }
        }
        let mut data = lut;
        for part in [&self.conv_bias, &self.hidden, &self.hidden_bias, &self.out, &self.out_bias] {
            data.extend_from_slice(part);
        }
        RuleTable { data }
    }
}

/// A rule packed for simulation: [lookup 9 x n x C][conv bias C][W1 C x H][b1 H][W2 H x n][b2 n].
/// The same flat layout is uploaded to the GPU, so both simulators read identical numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleTable {
    pub data: Vec<f32>,
}

/// Offsets of the parts of a [`RuleTable`].
#[derive(Clone, Copy, Debug)]
pub struct TableLayout {
    pub conv_bias: usize,
    pub hidden: usize,
    pub hidden_bias: usize,
    pub out: usize,
    pub out_bias: usize,
    pub len: usize,
}

impl TableLayout {
    pub fn new(spec: &NcaSpec) -> Self {
        let (c, h, n) = (spec.conv_channels as usize, spec.hidden as usize, spec.states as usize);
        let conv_bias = 9 * n * c;
        let hidden = conv_bias + c;
        let hidden_bias = hidden + c * h;
        let out = hidden_bias + h;
        let out_bias = out + h * n;
        Self { conv_bias, hidden, hidden_bias, out, out_bias, len: out_bias + n }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::derive_key;

    #[test]
    fn paper_rule_shapes_and_scales() {
        let spec = NcaSpec::default();
        let rule = Rule::sample(&spec, derive_key(3, &[]));
        assert_eq!(rule.conv.len(), 3 * 3 * 12 * 4);
        let total = rule.conv.len() + 4 + rule.hidden.len() + 16 + rule.out.len() + 10;
        assert_eq!(total, 686);
        assert!(rule.conv_bias.iter().chain(&rule.hidden_bias).chain(&rule.out_bias).all(|&b| b == 0.0));
        // LeCun normal: the variance of each layer's weights is 1 / fan_in.
        let var = |w: &[f32]| w.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / w.len() as f64;
        let many: Vec<Rule> = (0..200).map(|i| Rule::sample(&spec, derive_key(4, &[i]))).collect();
        let conv: Vec<f32> = many.iter().flat_map(|r| r.conv.clone()).collect();
        let hidden: Vec<f32> = many.iter().flat_map(|r| r.hidden.clone()).collect();
        assert!((var(&conv) * 108.0 - 1.0).abs() < 0.05, "conv variance x fan_in {}", var(&conv) * 108.0);
        assert!((var(&hidden) * 4.0 - 1.0).abs() < 0.08, "hidden variance x fan_in {}", var(&hidden) * 4.0);
        let bound = 2.0 * (1.0f32 / 108.0).sqrt() / TRUNCATED_STD as f32;
        assert!(conv.iter().all(|w| w.abs() <= bound * 1.0001));
    }

    /// The lookup table must equal a dense convolution over the wrap-padded one-hot channel axis.
    #[test]
    fn table_equals_dense_convolution_of_padded_one_hot() {
        for wrap in [true, false] {
            let spec = NcaSpec { channel_wrap: wrap, states: 5, ..NcaSpec::default() };
            let rule = Rule::sample(&spec, derive_key(5, &[u64::from(wrap)]));
            let table = rule.table(&spec);
            let (n, c, cin) = (5usize, 4usize, spec.conv_inputs() as usize);
            for k in 0..9 {
                for s in 0..n {
                    let mut one_hot = vec![0.0f64; n];
                    one_hot[s] = 1.0;
                    let padded: Vec<f64> = if wrap {
                        let mut p = vec![one_hot[n - 1]];
                        p.extend(&one_hot);
                        p.push(one_hot[0]);
                        p
                    } else {
                        one_hot
                    };
                    for o in 0..c {
                        let dense: f64 = (0..cin)
                            .map(|ch| padded[ch] * f64::from(rule.conv[(k * cin + ch) * c + o]))
                            .sum();
                        let got = f64::from(table.data[(k * n + s) * c + o]);
                        assert!((dense - got).abs() < 1e-6, "k {k} s {s} o {o}: {dense} vs {got}");
                    }
                }
            }
        }
    }
}

//! Minimal PNG chart renderer for data-set statistics and training curves.
//!
//! Draws line series and histogram bars on linear or log10 axes into an RGB
//! [`Canvas`] using a built-in bitmap font, so reports can be produced without
//! pulling in a plotting stack. Several charts can be tiled with
//! [`render_grid`], and images are written atomically with
//! [`Canvas::save_png`].

use std::path::Path;

use anyhow::Context;

/// An RGB colour.
pub type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const TEXT: Rgb = [30, 30, 30];
const FRAME: Rgb = [90, 90, 90];
const GRID: Rgb = [222, 222, 222];
const GRID_MINOR: Rgb = [240, 240, 240];

/// Series colours, cycled when there are more series than entries.
pub const PALETTE: [Rgb; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

/// 5x9 glyphs for ASCII 32..=126: nine rows of five bits, row 0 in the highest
/// bits and the leftmost column in the highest bit of each row. Rows 7-8 hold
/// descenders, so the baseline sits under row 6.
#[rustfmt::skip]
const FONT: [u64; 95] = [
    0x000000000000, 0x042108401000, 0x0A5280000000, 0x0A57D5F52800, 0x047D1C5F1000, // space ! " # $
    0x18C888898C00, 0x0C9511593400, 0x042200000000, 0x022210820800, 0x082084222000, // % & ' ( )
    0x00255D520000, 0x00213E420000, 0x000000063088, 0x00003E000000, 0x000000063000, // * + , - .
    0x000888880000, 0x0E8CEB98B800, 0x046108423800, 0x0E8844447C00, 0x1F110418B800, // / 0 1 2 3
    0x0232A5F10800, 0x1F878218B800, 0x06443D18B800, 0x1F0888842000, 0x0E8C5D18B800, // 4 5 6 7 8
    0x0E8C5E113000, 0x006300C60000, 0x006300C61100, 0x022220820800, 0x0007C1F00000, // 9 : ; < =
    0x082082222000, 0x0E8844401000, 0x0E8DEB783800, 0x0E8C7F18C400, 0x1E8C7D18F800, // > ? @ A B
    0x0E8C2108B800, 0x1C9463197000, 0x1F843D087C00, 0x1F843D084000, 0x0E8C2F18BC00, // C D E F G
    0x118C7F18C400, 0x0E2108423800, 0x071084293000, 0x119531494400, 0x108421087C00, // H I J K L
    0x11DD6B18C400, 0x118E6B38C400, 0x0E8C6318B800, 0x1E8C7D084000, 0x0E8C63593400, // M N O P Q
    0x1E8C7D494400, 0x0F841C10F800, 0x1F2108421000, 0x118C6318B800, 0x118C63151000, // R S T U V
    0x118C6B5AA800, 0x118A88A8C400, 0x118A88421000, 0x1F0888887C00, 0x0E4210843800, // W X Y Z [
    0x008208208000, 0x0E1084213800, 0x045440000000, 0x0000000003E0, 0x082080000000, // \ ] ^ _ `
    0x000382F8BC00, 0x1085B318F800, 0x0003A108B800, 0x010B6718BC00, 0x0003A3F83800, // a b c d e
    0x064A38842000, 0x0003E318BC2E, 0x1085B318C400, 0x040308423800, 0x020184210A4C, // f g h i j
    0x1084A98A4800, 0x0C2108423800, 0x0006AB5AD400, 0x0005B318C400, 0x0003A318B800, // k l m n o
    0x0007A318FA10, 0x0003E318BC21, 0x0005B3084000, 0x0003E0E0F800, 0x084710849800, // p q r s t
    0x00046319B400, 0x000463151000, 0x0004635AA800, 0x000454454400, 0x00046318BC2E, // u v w x y
    0x0007C4447C00, 0x022110420800, 0x042108421080, 0x082104422000, 0x00022A200000, // z { | } ~
];

const GLYPH_H: i64 = 9;
/// Horizontal advance per character in font pixels: five columns plus a gap.
const ADVANCE: i64 = 6;

/// A named line series; points need not be sorted.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// How values map onto an axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Axis {
    #[default]
    Linear,
    Log10,
}

/// Histogram bars: bar `i` spans `edges[i]..edges[i + 1]` with `heights[i]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bars {
    pub edges: Vec<f64>,
    pub heights: Vec<f64>,
}

impl Bars {
    /// Counts the finite `values` into `bins` equal-width bins over their range.
    pub fn histogram(values: &[f64], bins: usize) -> Self {
        let bins = bins.max(1);
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let Some((lo, hi)) = extent(finite.clone()) else {
            return Bars::default();
        };
        // A constant input still gets a bin of non-zero width.
        let pad = if hi > lo { 0.0 } else { 0.5 };
        let (lo, hi) = (lo - pad, hi + pad);
        let width = (hi - lo) / bins as f64;
        let mut heights = vec![0.0; bins];
        for v in finite {
            heights[(((v - lo) / width) as usize).min(bins - 1)] += 1.0;
        }
        let edges = (0..=bins).map(|i| lo + width * i as f64).collect();
        Bars { edges, heights }
    }

    /// Finite `(left, right, height)` triples; surplus edges or heights are ignored.
    fn iter(&self) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
        self.edges
            .windows(2)
            .zip(&self.heights)
            .map(|(e, &h)| (e[0], e[1], h))
            .filter(|&(a, b, h)| a.is_finite() && b.is_finite() && h.is_finite())
    }
}

/// One chart: any number of line series, optionally over histogram bars.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: Axis,
    pub y_axis: Axis,
    pub series: Vec<Series>,
    pub bars: Option<Bars>,
}

impl Chart {
    /// An empty chart with linear axes.
    pub fn line(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_axis: Axis::Linear,
            y_axis: Axis::Linear,
            series: Vec::new(),
            bars: None,
        }
    }

    pub fn log_x(mut self) -> Self {
        self.x_axis = Axis::Log10;
        self
    }

    pub fn log_y(mut self) -> Self {
        self.y_axis = Axis::Log10;
        self
    }

    pub fn with_series(mut self, name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        let name = name.into();
        self.series.push(Series { name, points });
        self
    }

    pub fn with_bars(mut self, bars: Bars) -> Self {
        self.bars = Some(bars);
        self
    }

    /// Points drawable on this chart's axes, across all series.
    fn valid_points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let (xa, ya) = (self.x_axis, self.y_axis);
        let pts = self.series.iter().flat_map(|s| s.points.iter().copied());
        pts.filter(move |&(x, y)| valid(xa, x) && valid(ya, y))
    }
}

/// An RGB raster with clipped drawing primitives; coordinates may lie outside.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    pub width: u32,
    pub height: u32,
    /// Row-major RGB bytes, `3 * width * height` long.
    pub pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `background`; zero sizes are bumped to 1 so it can
    /// always be encoded.
    pub fn new(width: u32, height: u32, background: Rgb) -> Self {
        let (width, height) = (width.max(1), height.max(1));
        let pixels = background.repeat(width as usize * height as usize);
        Canvas { width, height, pixels }
    }

    pub fn get(&self, x: u32, y: u32) -> Option<Rgb> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = 3 * (y as usize * self.width as usize + x as usize);
        Some([self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]])
    }

    pub fn fill(&mut self, c: Rgb) {
        for px in self.pixels.chunks_exact_mut(3) {
            px.copy_from_slice(&c);
        }
    }

    /// Mixes `c` into pixel (x, y) with opacity `alpha`; off-canvas is a no-op.
    fn blend(&mut self, x: i64, y: i64, c: Rgb, alpha: f64) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = 3 * (y as usize * self.width as usize + x as usize);
        let old = [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]];
        self.pixels[i..i + 3].copy_from_slice(&mix(old, c, alpha.clamp(0.0, 1.0)));
    }

    /// Fills the rectangle with top-left (x, y) and size w x h.
    pub fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        let (x0, y0) = (x.max(0), y.max(0));
        let x1 = x.saturating_add(w).min(self.width as i64);
        let y1 = y.saturating_add(h).min(self.height as i64);
        for yy in y0..y1 {
            let row = yy as usize * self.width as usize;
            for xx in x0..x1 {
                let i = 3 * (row + xx as usize);
                self.pixels[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Anti-aliased segment of the given stroke width with round caps;
    /// segments reaching far outside the canvas are skipped.
    pub fn line(&mut self, from: (f64, f64), to: (f64, f64), width: f64, c: Rgb) {
        let ((x0, y0), (x1, y1)) = (from, to);
        if ![x0, y0, x1, y1, width].iter().all(|v| v.is_finite()) {
            return;
        }
        // Keep far-off coordinates from turning into huge loops.
        let lim = 4.0 * (self.width.max(self.height) as f64) + 1e3;
        if [x0, y0, x1, y1].iter().any(|v| v.abs() > lim) {
            return;
        }
        let r = (width / 2.0).max(0.5);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = dx * dx + dy * dy;
        // Walk the major axis so each pixel is visited once and cost is linear.
        let steep = dy.abs() > dx.abs();
        let (a0, a1, extent) = if steep {
            (y0.min(y1), y0.max(y1), self.height as i64)
        } else {
            (x0.min(x1), x0.max(x1), self.width as i64)
        };
        let start = ((a0 - r - 1.0).floor() as i64).max(0);
        let end = ((a1 + r + 1.0).ceil() as i64).min(extent - 1);
        let half = 1.5 * r + 1.5;
        for m in start..=end {
            let mc = m as f64 + 0.5;
            let t = match (steep, len2 > 0.0) {
                (_, false) => 0.0,
                (true, _) => ((mc - y0) / dy).clamp(0.0, 1.0),
                (false, _) => ((mc - x0) / dx).clamp(0.0, 1.0),
            };
            let minor = if steep { x0 + t * dx } else { y0 + t * dy };
            for n in (minor - half).floor() as i64..=(minor + half).ceil() as i64 {
                let (px, py) = if steep { (n, m) } else { (m, n) };
                let (cx, cy) = (px as f64 + 0.5, py as f64 + 0.5);
                let u =
                    if len2 > 0.0 { (((cx - x0) * dx + (cy - y0) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                let dist = (cx - x0 - u * dx).hypot(cy - y0 - u * dy);
                let cover = r + 0.5 - dist;
                if cover > 0.0 {
                    self.blend(px, py, c, cover);
                }
            }
        }
    }

    /// Draws `s` with its top-left corner at (x, y); glyphs are 5x9 font
    /// pixels scaled by `scale`, non-ASCII characters show as '?'.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: u32, c: Rgb) {
        let sc = scale.max(1) as i64;
        for (i, ch) in s.chars().enumerate() {
            let bits = glyph(ch);
            let ox = x + i as i64 * ADVANCE * sc;
            for row in 0..GLYPH_H {
                let r = (bits >> ((GLYPH_H - 1 - row) * 5)) & 0x1F;
                for col in 0..5 {
                    if r & (0x10 >> col) != 0 {
                        self.rect(ox + col * sc, y + row * sc, sc, sc, c);
                    }
                }
            }
        }
    }

    /// Draws `s` horizontally centred on `cx`.
    fn text_centered(&mut self, cx: i64, y: i64, s: &str, scale: u32, c: Rgb) {
        self.text(cx - Self::text_width(s, scale) / 2, y, s, scale, c);
    }

    /// Width in pixels that [`Canvas::text`] uses for `s`.
    pub fn text_width(s: &str, scale: u32) -> i64 {
        let n = s.chars().count() as i64;
        (n * ADVANCE - 1).max(0) * scale.max(1) as i64
    }

    /// Copies `src` onto this canvas with its top-left corner at (x, y).
    pub fn blit(&mut self, src: &Canvas, x: i64, y: i64) {
        let x0 = x.max(0);
        let x1 = (x + src.width as i64).min(self.width as i64);
        if x1 <= x0 {
            return;
        }
        for sy in 0..src.height as i64 {
            let ty = y + sy;
            if ty < 0 || ty >= self.height as i64 {
                continue;
            }
            let s = 3 * (sy as usize * src.width as usize + (x0 - x) as usize);
            let d = 3 * (ty as usize * self.width as usize + x0 as usize);
            let n = 3 * (x1 - x0) as usize;
            self.pixels[d..d + n].copy_from_slice(&src.pixels[s..s + n]);
        }
    }

    /// Encodes the canvas as an 8-bit RGB PNG.
    pub fn to_png_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().context("writing PNG header")?;
        writer.write_image_data(&self.pixels).context("encoding PNG data")?;
        writer.finish().context("finishing PNG")?;
        Ok(out)
    }

    /// Writes a PNG atomically: readers never see a partial image under `path`.
    pub fn save_png(&self, path: &Path) -> anyhow::Result<()> {
        crate::util::write_atomic(path, &self.to_png_bytes()?)
    }
}

fn glyph(ch: char) -> u64 {
    let i = ch as usize;
    FONT[if (32..127).contains(&i) { i } else { '?' as usize } - 32]
}

fn valid(axis: Axis, v: f64) -> bool {
    v.is_finite() && (axis == Axis::Linear || v > 0.0)
}

fn extent(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    vals.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Tick layout of one axis; `lo`, `hi` and `ticks` are in axis units, which
/// are log10 of the value on log axes.
#[derive(Debug, Clone)]
struct Scale {
    axis: Axis,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    labels: Vec<String>,
    minor: Vec<f64>,
}

impl Scale {
    /// Position of axis unit `t` as a fraction of the axis length.
    fn frac_t(&self, t: f64) -> f64 {
        ((t - self.lo) / (self.hi - self.lo)).clamp(-10.0, 10.0)
    }

    fn frac(&self, v: f64) -> f64 {
        self.frac_t(if self.axis == Axis::Log10 { v.log10() } else { v })
    }
}

/// Step of the form {1, 2, 5} x 10^k giving about `target` intervals over `span`.
fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = [1.0, 2.0, 5.0].into_iter().find(|&m| f <= m).unwrap_or(10.0);
    m * mag
}

/// Widens [lo, hi] to multiples of a nice step; returns (lo, hi, step, ticks).
fn linear_ticks(lo: f64, hi: f64, target: usize) -> (f64, f64, f64, Vec<f64>) {
    let step = nice_step(hi - lo, target);
    let a = (lo / step + 1e-9).floor();
    let b = (hi / step - 1e-9).ceil();
    if !(step > 0.0 && step.is_finite() && a.is_finite() && b.is_finite()) || b - a > 1000.0 {
        return (lo, hi, hi - lo, vec![lo, hi]);
    }
    let ticks: Vec<f64> = (0..=(b - a) as i64)
        .map(|i| (a + i as f64) * step)
        .map(|v| if v.abs() < step * 1e-9 { 0.0 } else { v })
        .collect();
    (a * step, b * step, step, ticks)
}

/// Decade ticks over log10 range [a, b]; returns (lo, hi, ticks, minor) in
/// log10 units, with 2x and 5x ticks added when the range is a single decade.
fn log_ticks(a: f64, b: f64, target: usize) -> (f64, f64, Vec<f64>, Vec<f64>) {
    let (mut lo, mut hi) = ((a + 1e-9).floor(), (b - 1e-9).ceil());
    if hi <= lo {
        (lo, hi) = (lo.min(hi) - 1.0, lo.max(hi) + 1.0);
    }
    let every = ((hi - lo) / target.max(1) as f64).ceil().max(1.0);
    (lo, hi) = ((lo / every).floor() * every, (hi / every).ceil() * every);
    let count = ((hi - lo) / every).round() as i64;
    let mut ticks: Vec<f64> = (0..=count).map(|i| lo + i as f64 * every).collect();
    let mut minor = Vec::new();
    if every == 1.0 && hi - lo <= 8.0 {
        for k in 0..(hi - lo) as i64 {
            for m in 2..10 {
                minor.push(lo + k as f64 + (m as f64).log10());
            }
        }
        if hi - lo == 1.0 && target >= 3 {
            ticks.extend([2f64.log10() + lo, 5f64.log10() + lo]);
            ticks.sort_by(f64::total_cmp);
        }
    }
    (lo, hi, ticks, minor)
}

fn decimals(step: f64) -> usize {
    (-(step.log10() + 1e-9).floor()).clamp(0.0, 12.0) as usize
}

/// Linear tick label: fixed decimals from the step, or `2.5e6` style when
/// the axis magnitude `mag` is very large or very small.
fn fmt_linear(v: f64, step: f64, mag: f64) -> String {
    if !(1e-3..1e6).contains(&mag) && v != 0.0 {
        let mut e = v.abs().log10().floor();
        let mut m = v / 10f64.powf(e);
        if m.abs() >= 9.9999999 {
            (m, e) = (m / 10.0, e + 1.0);
        }
        let s = format!("{:.*}", decimals(step / 10f64.powf(e)).min(6), m);
        let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
        return format!("{s}e{e}");
    }
    format!("{:.*}", decimals(step), v)
}

/// Log tick label for log10 value `t`: plain digits for 0.01..1000, else `2e5`.
fn fmt_log(t: f64) -> String {
    let k = (t + 1e-9).floor();
    let m = 10f64.powf(t - k).round();
    if (-2.0..=3.0).contains(&k) {
        format!("{:.*}", (-k).max(0.0) as usize, m * 10f64.powf(k))
    } else {
        format!("{m}e{k}")
    }
}

fn make_scale(axis: Axis, ext: Option<(f64, f64)>, target: usize) -> Scale {
    let (lo, hi, ticks, labels, minor) = match axis {
        Axis::Linear => {
            let (lo, hi) = match ext {
                None => (0.0, 1.0),
                Some((a, b)) if b > a => (a, b),
                Some((a, _)) => {
                    let pad = if a == 0.0 { 1.0 } else { a.abs() * 0.1 };
                    (a - pad, a + pad)
                }
            };
            let (lo, hi, step, ticks) = linear_ticks(lo, hi, target);
            let mag = lo.abs().max(hi.abs());
            let labels = ticks.iter().map(|&v| fmt_linear(v, step, mag)).collect();
            (lo, hi, ticks, labels, Vec::new())
        }
        Axis::Log10 => {
            let (a, b) = ext.map_or((0.0, 1.0), |(a, b)| (a.log10(), b.log10()));
            let (lo, hi, ticks, minor) = log_ticks(a, b, target);
            let labels = ticks.iter().map(|&t| fmt_log(t)).collect();
            (lo, hi, ticks, labels, minor)
        }
    };
    Scale { axis, lo, hi, ticks, labels, minor }
}

/// Picks the densest tick layout whose labels, of pixel size `size(label)`
/// along an axis `len` pixels long, do not collide.
fn fit_scale(axis: Axis, ext: Option<(f64, f64)>, len: i64, size: impl Fn(&str) -> i64) -> Scale {
    let mut target = 10;
    loop {
        let sc = make_scale(axis, ext, target);
        let fits = sc.ticks.windows(2).zip(sc.labels.windows(2)).all(|(t, l)| {
            let gap = (sc.frac_t(t[1]) - sc.frac_t(t[0])) * len as f64;
            gap >= ((size(&l[0]) + size(&l[1])) / 2) as f64
        });
        if fits || target <= 2 {
            return sc;
        }
        target -= 1;
    }
}

fn mix(c: Rgb, other: Rgb, a: f64) -> Rgb {
    std::array::from_fn(|k| (c[k] as f64 + (other[k] as f64 - c[k] as f64) * a).round() as u8)
}

/// Draws one chart onto a fresh `width` x `height` canvas.
pub fn render(chart: &Chart, width: u32, height: u32) -> Canvas {
    let mut c = Canvas::new(width, height, WHITE);
    let (w, h) = (c.width as i64, c.height as i64);
    // Text grows with the image so large renders stay readable.
    let s = (w.min(h) / 400).max(1) as u32;
    let si = s as i64;
    let (pad, tick, line_h) = (6 * si, 4 * si, (GLYPH_H + 3) * si);

    let mut top = pad;
    if !chart.title.is_empty() {
        // Enlarged title unless that would overflow the width.
        let ts = s + u32::from(Canvas::text_width(&chart.title, s + 1) <= w - 2 * pad);
        c.text_centered(w / 2, top, &chart.title, ts, TEXT);
        top += GLYPH_H * ts as i64 + pad;
    }
    if !chart.y_label.is_empty() {
        c.text(pad, top, &chart.y_label, s, TEXT);
        top += line_h;
    }
    top += line_h / 2;
    let x_label_h = if chart.x_label.is_empty() { 0 } else { line_h };
    let bottom = h - (pad + tick + line_h + x_label_h + pad / 2);

    // Only points valid on both axes count, both for ranges and drawing.
    let (xa, ya) = (chart.x_axis, chart.y_axis);
    let bars: Vec<(f64, f64, f64)> = chart
        .bars
        .iter()
        .flat_map(|b| b.iter())
        .filter(|&(l, r, hgt)| valid(xa, l) && valid(xa, r) && valid(ya, hgt))
        .collect();
    let bar_x = bars.iter().flat_map(|b| [b.0, b.1]);
    let x_ext = extent(chart.valid_points().map(|p| p.0).chain(bar_x));
    // Bars rise from zero on linear axes; on log axes leave room so the
    // smallest bar stays visible above the bottom edge.
    let bar_floor = |hgt: f64| if ya == Axis::Linear { 0.0 } else { hgt * 0.5 };
    let bar_y = bars.iter().flat_map(|b| [b.2, bar_floor(b.2)]);
    let y_ext = extent(chart.valid_points().map(|p| p.1).chain(bar_y));

    let ys = fit_scale(ya, y_ext, bottom - top, |_| 3 * line_h);
    let label_w = ys.labels.iter().map(|l| Canvas::text_width(l, s)).max().unwrap_or(0);
    let left = pad + label_w + tick + 2 * si;
    let right = w - 4 * pad;
    let (pw, ph) = (right - left, bottom - top);
    if pw < 8 || ph < 8 {
        return c;
    }
    let xs = fit_scale(xa, x_ext, pw, |l| Canvas::text_width(l, s) + 4 * ADVANCE * si);
    let map = |x: f64, y: f64| {
        let px = left as f64 + xs.frac(x) * pw as f64;
        (px, top as f64 + (1.0 - ys.frac(y)) * ph as f64)
    };
    let gx = |t: f64| left + (xs.frac_t(t) * pw as f64).round() as i64;
    let gy = |t: f64| bottom - (ys.frac_t(t) * ph as f64).round() as i64;

    for &t in &xs.minor {
        c.rect(gx(t), top, 1, ph, GRID_MINOR);
    }
    for &t in &ys.minor {
        c.rect(left, gy(t), pw, 1, GRID_MINOR);
    }
    for &t in &xs.ticks {
        c.rect(gx(t), top, 1, ph, GRID);
    }
    for &t in &ys.ticks {
        c.rect(left, gy(t), pw, 1, GRID);
    }

    let (bar_fill, bar_edge) = (mix(PALETTE[0], WHITE, 0.45), PALETTE[0]);
    for &(l, r, hgt) in &bars {
        let base = if ya == Axis::Linear { ys.lo.max(0.0).min(ys.hi) } else { 10f64.powf(ys.lo) };
        let (x0, y0) = map(l.min(r), hgt);
        let (x1, y1) = map(l.max(r), base);
        let (x0, x1) = (x0.round() as i64, x1.round() as i64);
        let (yt, yb) = (y0.min(y1).round() as i64, y0.max(y1).round() as i64);
        let (bw, bh) = (x1 - x0 + 1, yb - yt + 1);
        // Outline only bars wide enough to stay distinguishable.
        if bw >= 5 {
            c.rect(x0, yt, bw, bh, bar_edge);
            c.rect(x0 + 1, yt + 1, bw - 2, bh - 2, bar_fill);
        } else {
            c.rect(x0, yt, bw, bh, bar_fill);
        }
    }

    let stroke = 1.6 * s as f64;
    for (i, series) in chart.series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        // Invalid points break the line rather than being bridged over.
        for run in series.points.split(|&(x, y)| !(valid(xa, x) && valid(ya, y))) {
            match run {
                [] => {}
                [p] => {
                    let q = map(p.0, p.1);
                    c.line(q, q, 4.0 * s as f64, col);
                }
                _ => {
                    for seg in run.windows(2) {
                        c.line(map(seg[0].0, seg[0].1), map(seg[1].0, seg[1].1), stroke, col);
                    }
                }
            }
        }
    }

    for (x, y, rw, rh) in
        [(left, top, pw + 1, 1), (left, bottom, pw + 1, 1), (left, top, 1, ph + 1), (right, top, 1, ph + 1)]
    {
        c.rect(x, y, rw, rh, FRAME);
    }
    let glyph_mid = 7 * si / 2;
    for (&t, label) in ys.ticks.iter().zip(&ys.labels) {
        let y = gy(t);
        c.rect(left - tick, y, tick, 1, FRAME);
        let lw = Canvas::text_width(label, s);
        c.text(left - tick - 2 * si - lw, y - glyph_mid, label, s, TEXT);
    }
    for (&t, label) in xs.ticks.iter().zip(&xs.labels) {
        let x = gx(t);
        c.rect(x, bottom + 1, 1, tick, FRAME);
        c.text_centered(x, bottom + tick + 3 * si, label, s, TEXT);
    }
    if !chart.x_label.is_empty() {
        let y = bottom + tick + 3 * si + line_h;
        c.text_centered(left + pw / 2, y, &chart.x_label, s, TEXT);
    }

    if x_ext.is_none() {
        let y = top + ph / 2 - glyph_mid;
        c.text_centered(left + pw / 2, y, "no data", s + 1, FRAME);
    }
    if chart.series.len() > 1 {
        draw_legend(&mut c, chart, (left, top, pw, ph), s, &|x, y| map(x, y));
    }
    c
}

/// Draws the legend in whichever inner corner of the plot covers the fewest points.
fn draw_legend(
    c: &mut Canvas,
    chart: &Chart,
    plot: (i64, i64, i64, i64),
    scale: u32,
    map: &dyn Fn(f64, f64) -> (f64, f64),
) {
    let si = scale as i64;
    let (left, top, pw, ph) = plot;
    let (pad, line_h, swatch) = (5 * si, (GLYPH_H + 3) * si, 16 * si);
    let names = chart.series.iter().map(|sr| Canvas::text_width(&sr.name, scale));
    let name_w = names.max().unwrap_or(0);
    let bw = pad * 3 + swatch + name_w;
    let bh = pad * 2 + line_h * chart.series.len() as i64 - 3 * si;
    let inset = 8 * si;
    let corners = [
        (left + pw - inset - bw, top + inset),
        (left + inset, top + inset),
        (left + pw - inset - bw, top + ph - inset - bh),
        (left + inset, top + ph - inset - bh),
    ];
    let covered = |&(bx, by): &(i64, i64)| {
        let inside = |&(x, y): &(f64, f64)| {
            (bx as f64..=(bx + bw) as f64).contains(&x) && (by as f64..=(by + bh) as f64).contains(&y)
        };
        chart.valid_points().map(|p| map(p.0, p.1)).filter(inside).count()
    };
    let (bx, by) = corners.iter().copied().min_by_key(covered).unwrap_or(corners[0]);
    c.rect(bx, by, bw, bh, FRAME);
    c.rect(bx + 1, by + 1, bw - 2, bh - 2, WHITE);
    for (i, series) in chart.series.iter().enumerate() {
        let y = by + pad + i as i64 * line_h;
        let mid = (y + 7 * si / 2) as f64 + 0.5;
        let col = PALETTE[i % PALETTE.len()];
        c.line(((bx + pad) as f64, mid), ((bx + pad + swatch) as f64, mid), 2.0 * scale as f64, col);
        c.text(bx + pad * 2 + swatch, y, &series.name, scale, TEXT);
    }
}

/// Renders `charts` as `panel_w` x `panel_h` panels, `cols` per row.
pub fn render_grid(charts: &[Chart], cols: usize, panel_w: u32, panel_h: u32) -> Canvas {
    let cols = cols.clamp(1, charts.len().max(1));
    let rows = charts.len().div_ceil(cols).max(1);
    let (pw, ph) = (panel_w.max(1), panel_h.max(1));
    let mut c = Canvas::new(pw.saturating_mul(cols as u32), ph.saturating_mul(rows as u32), WHITE);
    for (i, chart) in charts.iter().enumerate() {
        let panel = render(chart, pw, ph);
        c.blit(&panel, (i % cols) as i64 * pw as i64, (i / cols) as i64 * ph as i64);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_nice(step: f64) -> bool {
        let m = step / 10f64.powf(step.log10().floor());
        [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-9)
    }

    #[test]
    fn nice_steps_are_1_2_5() {
        assert!((nice_step(1.0, 5) - 0.2).abs() < 1e-12);
        assert!((nice_step(10.0, 5) - 2.0).abs() < 1e-12);
        assert!((nice_step(100.0, 4) - 50.0).abs() < 1e-12);
        for span in [0.003, 0.7, 1.0, 3.3, 17.0, 999.0, 12345.0, 4e9] {
            assert!(is_nice(nice_step(span, 6)), "{span}");
        }
    }

    #[test]
    fn linear_ticks_cover_range_on_step_multiples() {
        let (lo, hi, step, ticks) = linear_ticks(-3.2, 7.9, 5);
        assert_eq!(step, 5.0);
        assert_eq!(ticks, vec![-5.0, 0.0, 5.0, 10.0]);
        assert_eq!((lo, hi), (-5.0, 10.0));
        let (_, _, step, ticks) = linear_ticks(0.0, 1.0, 5);
        assert_eq!(ticks.len(), 6);
        let labels: Vec<_> = ticks.iter().map(|&v| fmt_linear(v, step, 1.0)).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(fmt_linear(0.25, 0.05, 1.0), "0.25");
        assert_eq!(fmt_linear(-1.5, 0.5, 2.0), "-1.5");
        assert_eq!(fmt_linear(2e6, 1e6, 5e6), "2e6");
        assert_eq!(fmt_linear(2.5e6, 5e5, 5e6), "2.5e6");
        assert_eq!(fmt_linear(5e-5, 1e-5, 1e-4), "5e-5");
        assert_eq!(fmt_linear(300.0, 100.0, 500.0), "300");
    }

    #[test]
    fn log_ticks_are_powers_of_ten() {
        let (lo, hi, ticks, minor) = log_ticks(0.0, 4.0, 10);
        assert_eq!((lo, hi), (0.0, 4.0));
        assert_eq!(ticks, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(minor.len(), 4 * 8);
        let labels: Vec<_> = ticks.iter().map(|&t| fmt_log(t)).collect();
        assert_eq!(labels, ["1", "10", "100", "1000", "1e4"]);
        assert_eq!(fmt_log(-3.0), "1e-3");
        assert_eq!(fmt_log(-2.0), "0.01");
        // Wide ranges skip decades instead of crowding labels.
        let (_, _, ticks, _) = log_ticks(-10.0, 10.0, 5);
        assert!(ticks.len() <= 7 && ticks.iter().all(|t| t.fract() == 0.0));
        // A single decade gains 2x and 5x ticks; a single value gets a range.
        let (_, _, ticks, _) = log_ticks(0.1, 0.9, 5);
        assert_eq!(ticks.iter().map(|&t| fmt_log(t)).collect::<Vec<_>>(), ["1", "2", "5", "10"]);
        let (lo, hi, _, _) = log_ticks(2.0, 2.0, 5);
        assert!(lo < 2.0 && hi > 2.0);
    }

    fn plot_has_ink(c: &Canvas, colour: Rgb) -> bool {
        let (w, h) = (c.width, c.height);
        (h / 4..3 * h / 4).any(|y| (w / 4..3 * w / 4).any(|x| c.get(x, y) == Some(colour)))
    }

    #[test]
    fn render_draws_series_inside_plot_area() {
        let pts: Vec<_> = (0..50).map(|i| (i as f64, (i as f64 * 0.3).sin())).collect();
        let chart = Chart::line("sine", "x", "y")
            .with_series("a", pts.clone())
            .with_series("b", pts.iter().map(|&(x, y)| (x, -y)).collect());
        let c = render(&chart, 640, 400);
        assert_eq!((c.width, c.height, c.pixels.len()), (640, 400, 640 * 400 * 3));
        assert!(plot_has_ink(&c, PALETTE[0]));
        assert!(plot_has_ink(&c, PALETTE[1]));
    }

    #[test]
    fn render_draws_histogram_bars() {
        let values: Vec<f64> = (0..1000).map(|i| ((i * 37) % 101) as f64 / 40.0).collect();
        let chart = Chart::line("ratios", "ratio", "count").with_bars(Bars::histogram(&values, 20));
        let c = render(&chart, 500, 300);
        assert!(plot_has_ink(&c, mix(PALETTE[0], WHITE, 0.45)));
    }

    #[test]
    fn bad_inputs_do_not_panic() {
        let nasty = vec![
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
            (-1.0, -5.0),
            (0.0, 0.0),
            (2.0, 3.0),
            (f64::MAX, f64::MIN_POSITIVE),
            (f64::MIN_POSITIVE, 1e300),
        ];
        let bars = Bars { edges: vec![-1.0, 0.0, f64::NAN, 2.0], heights: vec![0.0, -3.0, 1.0, 9.0] };
        for (lx, ly) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut chart =
                Chart::line("t", "x", "y").with_series("n", nasty.clone()).with_bars(bars.clone());
            chart = chart.with_series("m", vec![(1.0, 1.0)]);
            if lx {
                chart = chart.log_x();
            }
            if ly {
                chart = chart.log_y();
            }
            for (w, h) in [(0, 0), (1, 1), (30, 20), (300, 200)] {
                let c = render(&chart, w, h);
                assert_eq!((c.width, c.height), (w.max(1), h.max(1)));
            }
        }
        // Empty, single-point and constant charts still get axes.
        let empty = render(&Chart::line("", "", ""), 200, 150);
        assert!(empty.pixels.iter().any(|&b| b != 255));
        render(&Chart::line("p", "x", "y").with_series("p", vec![(3.0, 3.0)]), 200, 150);
        render(&Chart::line("c", "x", "y").log_y().with_series("c", vec![(0.0, 7.0), (1.0, 7.0)]), 200, 150);
        assert!(Bars::histogram(&[f64::NAN], 4).edges.is_empty());
    }

    #[test]
    fn png_round_trip() {
        let grid = render_grid(&[Chart::line("a", "x", "y"), Chart::line("b", "x", "y").log_x()], 2, 120, 90);
        assert_eq!((grid.width, grid.height), (240, 90));
        let bytes = grid.to_png_bytes().unwrap();
        let reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (240, 90));
        assert_eq!(info.color_type, png::ColorType::Rgb);

        let dir = std::env::temp_dir().join(format!("plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.png");
        grid.save_png(&path).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "temporary file left behind");
        assert_eq!(std::fs::read(&path).unwrap(), grid.to_png_bytes().unwrap());
        assert!(grid.save_png(&dir.join("missing").join("x.png")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn font_covers_printable_ascii() {
        assert_eq!(glyph(' '), 0);
        for ch in (33u8..127).map(char::from) {
            assert_ne!(glyph(ch), 0, "{ch:?} has no glyph");
            assert!(glyph(ch) < 1 << 45, "{ch:?} overflows 5x9");
        }
        let mut all: Vec<u64> = FONT.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 95, "two characters share a glyph");
        assert_eq!(glyph('\u{e9}'), glyph('?'));
        let mut c = Canvas::new(40, 12, WHITE);
        c.text(1, 1, "1e-3", 1, TEXT);
        assert_eq!(Canvas::text_width("1e-3", 1), 23);
        assert!(c.pixels.iter().any(|&b| b != 255));
    }
}

//! PNG charts for data-set statistics and training curves, drawn with plotters.
//!
//! Callers describe a [`Chart`] (line series, optionally over histogram bars, on linear or log10
//! axes), then [`render`] it, or tile several with [`render_grid`], into an RGB [`Canvas`] that
//! [`Canvas::save_png`] writes atomically. Text uses DejaVu Sans, embedded in the binary
//! (`assets/fonts/`), so charts come out the same on a machine without any system font.

use std::path::Path;
use std::sync::Once;

use anyhow::Context;
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// DejaVu Sans (Bitstream Vera licence, `assets/fonts/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded font as plotters' sans-serif family, once per process.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the embedded font does not parse"));
    });
}

/// A named line series; points are joined in the order given.
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

    fn valid_point(&self, (x, y): (f64, f64)) -> bool {
        valid(self.x_axis, x) && valid(self.y_axis, y)
    }

    /// Points drawable on this chart's axes, across all series.
    fn valid_points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.series.iter().flat_map(|s| s.points.iter().copied()).filter(|&p| self.valid_point(p))
    }

    /// Bars drawable on this chart's axes.
    fn valid_bars(&self) -> Vec<(f64, f64, f64)> {
        let (xa, ya) = (self.x_axis, self.y_axis);
        let bars = self.bars.iter().flat_map(|b| b.iter());
        bars.filter(|&(l, r, h)| valid(xa, l) && valid(xa, r) && valid(ya, h)).collect()
    }
}

/// An RGB raster: what charts are drawn into, and a plain pixel surface for other pictures.
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

    /// Fills the rectangle with top-left (x, y) and size w x h, clipped to the canvas.
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

/// Whether `v` can be drawn on `axis`. Magnitudes beyond 1e100 (and below 1e-100 on log axes) are
/// left out: no chart here needs them, and tick placement over such spans never ends.
fn valid(axis: Axis, v: f64) -> bool {
    v.is_finite() && v.abs() <= 1e100 && (axis == Axis::Linear || v >= 1e-100)
}

fn extent(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    vals.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The range an axis shows for data spanning `ext`: a default without data, room around a single
/// value, and with `margin` 4% of the span on either side (of the decades spanned on log axes), so
/// lines do not run along the frame.
fn axis_range(axis: Axis, ext: Option<(f64, f64)>, margin: bool) -> (f64, f64) {
    match (axis, ext) {
        (Axis::Linear, None) => (0.0, 1.0),
        (Axis::Log10, None) => (1.0, 10.0),
        // Spans too narrow for their magnitude are widened like a single value.
        (Axis::Linear, Some((a, b))) if b - a > 1e-9 * a.abs().max(b.abs()) => {
            let m = if margin { 0.04 * (b - a) } else { 0.0 };
            (a - m, b + m)
        }
        (Axis::Linear, Some((a, _))) => {
            let pad = if a == 0.0 { 1.0 } else { a.abs() * 0.1 };
            (a - pad, a + pad)
        }
        (Axis::Log10, Some((a, b))) if b > a * (1.0 + 1e-9) => {
            let (la, lb) = (a.log10(), b.log10());
            let m = if margin { 0.04 * (lb - la) } else { 0.0 };
            (10f64.powf(la - m), 10f64.powf(lb + m))
        }
        (Axis::Log10, Some((a, _))) => (a / 2.0, a * 2.0),
    }
}

/// A log10 axis over `lo..hi`: ticks at powers of ten (every few decades when there are many),
/// also at 2x and 5x when the range spans under two decades, and light grid lines at the other
/// multiples of each decade.
fn log_axis(lo: f64, hi: f64) -> WithKeyPoints<LogCoord<f64>> {
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let decades = (b - a).max(1);
    let every = (decades + 7) / 8;
    let in_range = |v: &f64| (lo..=hi).contains(v);
    let mults: &[f64] = if hi / lo < 100.0 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    let bold: Vec<f64> = (a..=b)
        .filter(|k| k.rem_euclid(every) == 0)
        .flat_map(|k| mults.iter().map(move |m| m * 10f64.powi(k)))
        .filter(in_range)
        .collect();
    let light: Vec<f64> = if decades <= 8 {
        (a..=b).flat_map(|k| (2..10).map(move |m| m as f64 * 10f64.powi(k))).filter(in_range).collect()
    } else {
        Vec::new()
    };
    (lo..hi).log_scale().with_key_points(bold).with_light_points(light)
}

/// Tick label: plain digits for magnitudes 0.01..10000, else `2.5e6` style; at most four
/// significant digits, so float noise in tick positions never shows.
fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a < 1e-12 {
        return "0".to_string();
    }
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let e = a.log10().floor();
    if (-2.0..4.0).contains(&e) {
        return trim(format!("{:.*}", (3.0 - e).max(0.0) as usize, v));
    }
    let mut m = v / 10f64.powf(e);
    let mut e = e;
    if (m.abs() * 1000.0).round() >= 10_000.0 {
        (m, e) = (m / 10.0, e + 1.0);
    }
    format!("{}e{e}", trim(format!("{m:.3}")))
}

fn colour([r, g, b]: Rgb) -> RGBColor {
    RGBColor(r, g, b)
}

fn mix(c: Rgb, other: Rgb, a: f64) -> Rgb {
    std::array::from_fn(|k| (c[k] as f64 + (other[k] as f64 - c[k] as f64) * a).round() as u8)
}

/// Draws one chart onto a fresh `width` x `height` canvas.
pub fn render(chart: &Chart, width: u32, height: u32) -> Canvas {
    render_grid(std::slice::from_ref(chart), 1, width, height)
}

/// Renders `charts` as `panel_w` x `panel_h` panels, `cols` per row.
pub fn render_grid(charts: &[Chart], cols: usize, panel_w: u32, panel_h: u32) -> Canvas {
    register_font();
    let cols = cols.clamp(1, charts.len().max(1));
    let rows = charts.len().div_ceil(cols).max(1);
    let (pw, ph) = (panel_w.max(1), panel_h.max(1));
    let mut c = Canvas::new(pw.saturating_mul(cols as u32), ph.saturating_mul(rows as u32), WHITE);
    {
        let root = BitMapBackend::with_buffer(&mut c.pixels, (c.width, c.height)).into_drawing_area();
        for (i, chart) in charts.iter().enumerate() {
            let (x, y) = ((i % cols) as u32 * pw, (i / cols) as u32 * ph);
            let panel = root.clone().shrink((x, y), (pw, ph));
            // A chart too small for its text is left blank rather than failing the picture.
            let _ = draw_chart(&panel, chart);
        }
        let _ = root.present();
    }
    c
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

fn draw_chart(area: &DrawingArea<BitMapBackend<'_>, Shift>, chart: &Chart) -> DrawResult<()> {
    let (w, h) = area.dim_in_pixel();
    if w < 40 || h < 30 {
        return Ok(());
    }
    let bars = chart.valid_bars();
    let x_ext = extent(chart.valid_points().map(|p| p.0).chain(bars.iter().flat_map(|b| [b.0, b.1])));
    // Bars rise from zero on linear axes; on log axes leave room so the smallest bar stays
    // visible above the bottom edge.
    let ya = chart.y_axis;
    let bar_floor = |hgt: f64| if ya == Axis::Linear { 0.0 } else { hgt * 0.5 };
    let y_ext =
        extent(chart.valid_points().map(|p| p.1).chain(bars.iter().flat_map(|b| [b.2, bar_floor(b.2)])));
    let (x0, x1) = axis_range(chart.x_axis, x_ext, false);
    let (mut y0, y1) = axis_range(ya, y_ext, true);
    if !bars.is_empty() && ya == Axis::Linear {
        // Bars stand on the frame, with the margin kept above them only.
        y0 = y0.max(0.0);
    }
    let frame = Frame { chart, bars: &bars, has_data: x_ext.is_some() };
    match (chart.x_axis, ya) {
        (Axis::Linear, Axis::Linear) => frame.draw(area, x0..x1, y0..y1),
        (Axis::Log10, Axis::Linear) => frame.draw(area, log_axis(x0, x1), y0..y1),
        (Axis::Linear, Axis::Log10) => frame.draw(area, x0..x1, log_axis(y0, y1)),
        (Axis::Log10, Axis::Log10) => frame.draw(area, log_axis(x0, x1), log_axis(y0, y1)),
    }
}

/// What one panel draws, whatever the axes' coordinate types.
struct Frame<'c> {
    chart: &'c Chart,
    bars: &'c [(f64, f64, f64)],
    has_data: bool,
}

impl Frame<'_> {
    fn draw<X, Y>(&self, area: &DrawingArea<BitMapBackend<'_>, Shift>, x: X, y: Y) -> DrawResult<()>
    where
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let chart = self.chart;
        let (w, h) = area.dim_in_pixel();
        // Text grows with the panel so large renders stay readable.
        let s = (w.min(h) as f64 / 500.0).clamp(0.5, 3.0);
        let font = |px: f64| ("sans-serif", px * s).into_font().color(&colour(TEXT));
        let tick_font = font(15.0);
        let mut builder = ChartBuilder::on(area);
        builder
            .margin_top((10.0 * s) as u32)
            .margin_left((8.0 * s) as u32)
            .margin_right((24.0 * s) as u32)
            .margin_bottom((6.0 * s) as u32)
            .x_label_area_size((52.0 * s) as u32)
            .y_label_area_size((74.0 * s) as u32);
        if !chart.title.is_empty() {
            builder.caption(&chart.title, font(20.0));
        }
        let mut ctx = builder.build_cartesian_2d(x, y)?;

        let x_labels = ((w as f64 / (110.0 * s)) as usize).clamp(2, 10);
        let y_labels = ((h as f64 / (60.0 * s)) as usize).clamp(2, 10);
        ctx.configure_mesh()
            .x_desc(chart.x_label.as_str())
            .y_desc(chart.y_label.as_str())
            .x_labels(x_labels)
            .y_labels(y_labels)
            .x_label_formatter(&|v| fmt_tick(*v))
            .y_label_formatter(&|v| fmt_tick(*v))
            .label_style(tick_font.clone())
            .axis_desc_style(font(16.0))
            .bold_line_style(colour(GRID))
            .light_line_style(colour(GRID_MINOR))
            .axis_style(colour(FRAME))
            .draw()?;

        let (bar_fill, bar_edge) = (colour(mix(PALETTE[0], WHITE, 0.45)), colour(PALETTE[0]));
        let base = match chart.y_axis {
            Axis::Linear => ctx.y_range().start.max(0.0),
            Axis::Log10 => ctx.y_range().start,
        };
        for &(l, r, hgt) in self.bars {
            let corners = [(l.min(r), hgt), (l.max(r), base)];
            let width_px = (ctx.backend_coord(&(r, base)).0 - ctx.backend_coord(&(l, base)).0).abs();
            ctx.draw_series(std::iter::once(Rectangle::new(corners, bar_fill.filled())))?;
            // Outline only bars wide enough to stay distinguishable.
            if width_px >= 5 {
                ctx.draw_series(std::iter::once(Rectangle::new(corners, bar_edge.stroke_width(1))))?;
            }
        }

        let stroke = (1.6 * s).round().max(1.0) as u32;
        for (i, series) in chart.series.iter().enumerate() {
            let col = colour(PALETTE[i % PALETTE.len()]);
            // Invalid points break the line rather than being bridged over.
            let runs: Vec<&[(f64, f64)]> =
                series.points.split(|&p| !chart.valid_point(p)).filter(|r| !r.is_empty()).collect();
            let labelled = ctx.draw_series(LineSeries::new(std::iter::empty(), col.stroke_width(stroke)))?;
            if chart.series.len() > 1 {
                let swatch = (16.0 * s) as i32;
                labelled.label(series.name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + swatch, y)], col.stroke_width(stroke + 1))
                });
            }
            for run in runs {
                if let [p] = run {
                    ctx.draw_series(std::iter::once(Circle::new(*p, 2 * stroke, col.filled())))?;
                } else {
                    ctx.draw_series(LineSeries::new(run.iter().copied(), col.stroke_width(stroke)))?;
                }
            }
        }

        if !self.has_data {
            let style = ("sans-serif", 20.0 * s)
                .into_font()
                .color(&colour(FRAME))
                .pos(Pos::new(HPos::Center, VPos::Center));
            let plot = ctx.plotting_area();
            let (px, py) = plot.dim_in_pixel();
            plot.strip_coord_spec().draw(&Text::new("no data", ((px / 2) as i32, (py / 2) as i32), style))?;
        }
        if chart.series.len() > 1 {
            let corner = self.legend_corner(&ctx);
            ctx.configure_series_labels()
                .position(corner)
                .margin((8.0 * s) as u32)
                .label_font(font(15.0))
                .background_style(colour(WHITE))
                .border_style(colour(FRAME))
                .draw()?;
        }
        Ok(())
    }

    /// The inner corner of the plot whose legend-sized box covers the fewest points.
    fn legend_corner<X: Ranged<ValueType = f64>, Y: Ranged<ValueType = f64>>(
        &self,
        ctx: &ChartContext<'_, BitMapBackend<'_>, Cartesian2d<X, Y>>,
    ) -> SeriesLabelPosition {
        let (xr, yr) = ctx.plotting_area().get_pixel_range();
        let (left, right, top, bottom) = (xr.start, xr.end, yr.start, yr.end);
        let (pw, ph) = (right - left, bottom - top);
        // About the legend's size: a third of the width, a line per series.
        let (bw, bh) = (pw / 3, (ph / 12).max(1) * (self.chart.series.len() as i32 + 1));
        let corners = [
            (SeriesLabelPosition::UpperRight, right - bw, top),
            (SeriesLabelPosition::UpperLeft, left, top),
            (SeriesLabelPosition::LowerRight, right - bw, bottom - bh),
            (SeriesLabelPosition::LowerLeft, left, bottom - bh),
        ];
        let covered = |&(_, bx, by): &(SeriesLabelPosition, i32, i32)| {
            let pts = self.chart.valid_points().map(|p| ctx.backend_coord(&p));
            pts.filter(|&(x, y)| (bx..=bx + bw).contains(&x) && (by..=by + bh).contains(&y)).count()
        };
        corners.into_iter().min_by_key(covered).map_or(SeriesLabelPosition::UpperRight, |c| c.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(-1.5), "-1.5");
        assert_eq!(fmt_tick(2e6), "2e6");
        assert_eq!(fmt_tick(2.5e6), "2.5e6");
        assert_eq!(fmt_tick(5e-5), "5e-5");
        assert_eq!(fmt_tick(300.0), "300");
        assert_eq!(fmt_tick(0.30000000000000004), "0.3");
        assert_eq!(fmt_tick(0.0), "0");
        let decades: Vec<_> = [1.0, 10.0, 100.0, 1000.0, 1e4, 0.01, 1e-3].map(fmt_tick).to_vec();
        assert_eq!(decades, ["1", "10", "100", "1000", "1e4", "0.01", "1e-3"]);
        assert_eq!(fmt_tick(9.99996e6), "1e7");
    }

    #[test]
    fn axis_ranges_are_never_empty() {
        assert_eq!(axis_range(Axis::Linear, None, true), (0.0, 1.0));
        assert_eq!(axis_range(Axis::Linear, Some((0.0, 0.0)), true), (-1.0, 1.0));
        assert_eq!(axis_range(Axis::Log10, Some((4.0, 4.0)), true), (2.0, 8.0));
        let (lo, hi) = axis_range(Axis::Log10, Some((1.0, 1e4)), true);
        assert!(lo < 1.0 && hi > 1e4 && lo > 0.5 && hi < 2e4);
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
    fn text_uses_the_embedded_font() {
        // The title's glyphs are the only dark pixels in the middle of the top strip.
        let dark_top =
            |c: &Canvas| (0..25).any(|y| (100..300).any(|x| c.get(x, y).unwrap().iter().all(|&v| v < 120)));
        assert!(dark_top(&render(&Chart::line("Title", "", ""), 400, 300)), "no title text drawn");
        assert!(!dark_top(&render(&Chart::line("", "", ""), 400, 300)));
    }
}

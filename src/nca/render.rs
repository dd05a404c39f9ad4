//! Pictures of NCA trajectories: frames side by side in a PNG, or an animated GIF.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::plot::Canvas;
use crate::util::write_atomic;

/// One colour per state (up to 15 states), chosen to stay distinguishable side by side.
pub const STATE_COLOURS: [[u8; 3]; 15] = [
    [20, 20, 30],
    [240, 240, 235],
    [230, 60, 50],
    [50, 130, 220],
    [250, 190, 40],
    [60, 170, 90],
    [150, 80, 190],
    [250, 130, 30],
    [40, 200, 200],
    [230, 100, 170],
    [140, 100, 60],
    [120, 120, 120],
    [180, 220, 60],
    [20, 70, 120],
    [200, 170, 240],
];

/// Frames in rows of `per_row`, each cell `scale` pixels wide, separated by a 2-pixel gap.
pub fn frames_png(frames: &[Vec<u8>], grid: u32, scale: u32, per_row: usize) -> Canvas {
    let gap = 2;
    let side = grid * scale;
    let cols = per_row.clamp(1, frames.len().max(1)) as u32;
    let rows = (frames.len() as u32).div_ceil(cols).max(1);
    let mut canvas = Canvas::new(cols * (side + gap) + gap, rows * (side + gap) + gap, [255, 255, 255]);
    for (i, frame) in frames.iter().enumerate() {
        let (fx, fy) = ((i as u32 % cols) * (side + gap) + gap, (i as u32 / cols) * (side + gap) + gap);
        for (cell, &s) in frame.iter().enumerate() {
            let (y, x) = (cell as u32 / grid, cell as u32 % grid);
            let colour = STATE_COLOURS[s as usize % STATE_COLOURS.len()];
            canvas.rect(
                i64::from(fx + x * scale),
                i64::from(fy + y * scale),
                i64::from(scale),
                i64::from(scale),
                colour,
            );
        }
    }
    canvas
}

/// An animated GIF, one frame per state, `delay_ms` apart, looping.
pub fn frames_gif(frames: &[Vec<u8>], grid: u32, scale: u32, delay_ms: u16) -> Result<Vec<u8>> {
    let side = grid * scale;
    if side > u32::from(u16::MAX) {
        bail!("a {side}-pixel GIF is too large: lower --scale");
    }
    let palette: Vec<u8> = STATE_COLOURS.iter().flatten().copied().collect();
    let mut bytes = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut bytes, side as u16, side as u16, &palette)?;
        encoder.set_repeat(gif::Repeat::Infinite)?;
        for frame in frames {
            let mut pixels = vec![0u8; (side * side) as usize];
            for (i, px) in pixels.iter_mut().enumerate() {
                let (y, x) = (i as u32 / side / scale, i as u32 % side / scale);
                *px = frame[(y * grid + x) as usize];
            }
            let mut f = gif::Frame::from_indexed_pixels(side as u16, side as u16, pixels, None);
            f.delay = delay_ms / 10;
            encoder.write_frame(&f)?;
        }
    }
    Ok(bytes)
}

/// Writes a trajectory picture; the extension (.png or .gif) picks the format.
pub fn save_trajectory(path: &Path, frames: &[Vec<u8>], grid: u32, scale: u32) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_lowercase);
    let bytes = match ext.as_deref() {
        Some("png") => frames_png(frames, grid, scale, 9).to_png_bytes()?,
        Some("gif") => frames_gif(frames, grid, scale, 150)?,
        _ => bail!("{}: the picture must be a .png or .gif file", path.display()),
    };
    write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_and_gif_have_the_right_size() {
        let frames: Vec<Vec<u8>> = (0..5).map(|f| (0..16).map(|c| ((c + f) % 3) as u8).collect()).collect();
        let c = frames_png(&frames, 4, 3, 2);
        assert_eq!((c.width, c.height), (2 * 14 + 2, 3 * 14 + 2));
        assert_eq!(c.get(2, 2), Some(STATE_COLOURS[0]));
        let gif = frames_gif(&frames, 4, 3, 100).unwrap();
        assert!(gif.starts_with(b"GIF89a"));
        assert!(save_trajectory(Path::new("x.jpg"), &frames, 4, 3).is_err());
    }
}

//! Runs `examples/render.rs` (built by `cargo test`): a host program that draws NCA frames with its own
//! render pipeline from the token buffer ncalm's GPU simulator fills, and writes them to a PNG.

mod common;

use std::fs::File;
use std::process::Command;

#[test]
fn host_application_renders_nca_frames_from_the_token_buffer() {
    let example = common::example("render");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("frames.png");
    let out = Command::new(&example).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "example failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("host device on"), "{stdout}");
    assert!(stdout.contains("rendered exactly as the CPU reference"), "{stdout}");
    assert!(path.exists(), "no PNG at {}:\n{stdout}", path.display());

    // 4 simulations (rows) x 8 frames (columns) of the 12x12 grid, 4 pixels per cell, 2-pixel gaps.
    let decoder = png::Decoder::new(std::io::BufReader::new(File::open(&path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (2 + 8 * (12 * 4 + 2), 2 + 4 * (12 * 4 + 2)));
    assert_eq!(info.color_type, png::ColorType::Rgba);
    let pixels = &buf[..info.buffer_size()];
    let first = &pixels[..4];
    assert!(pixels.chunks(4).any(|p| p != first), "the picture is one flat colour");
    let colours: std::collections::HashSet<&[u8]> = pixels.chunks(4).collect();
    assert!(colours.len() > 2, "only {} colours: the frames are not drawn", colours.len());
}

//! Deterministic synthetic images: the golden set shipped in bundles and the
//! payloads of the load driver. Same inputs, same bytes, on every machine.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, ImageError};

/// PNG bytes of a grayscale image whose pixel (x, y) is `f(x, y)`.
pub fn try_png_gray(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> Result<Vec<u8>, ImageError> {
    let mut data = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            data.push(f(x, y));
        }
    }
    let mut out = Vec::new();
    PngEncoder::new(&mut out).write_image(&data, w, h, ExtendedColorType::L8)?;
    Ok(out)
}

/// PNG bytes of an RGB image whose pixel (x, y) is `f(x, y)`.
pub fn try_png_rgb(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Result<Vec<u8>, ImageError> {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&f(x, y));
        }
    }
    let mut out = Vec::new();
    PngEncoder::new(&mut out).write_image(&data, w, h, ExtendedColorType::Rgb8)?;
    Ok(out)
}

/// JPEG bytes (quality 90) of a grayscale image.
pub fn try_jpeg_gray(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> Result<Vec<u8>, ImageError> {
    let mut data = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            data.push(f(x, y));
        }
    }
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90).write_image(&data, w, h, ExtendedColorType::L8)?;
    Ok(out)
}

/// Like [`try_png_gray`]; encoding a valid in-memory image cannot fail, an
/// impossible failure yields an empty (undecodable) payload.
pub fn png_gray(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    try_png_gray(w, h, f).unwrap_or_default()
}

pub fn png_rgb(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    try_png_rgb(w, h, f).unwrap_or_default()
}

pub fn jpeg_gray(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    try_jpeg_gray(w, h, f).unwrap_or_default()
}

/// A small deterministic pseudo-random generator (64-bit LCG, top bits).
#[derive(Debug, Clone)]
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
    pub fn next_u8(&mut self) -> u8 {
        (self.next_u32() >> 24) as u8
    }
}

/// A high-contrast image that varies with `seed`: random 8×8-pixel blocks
/// of black-ish or white-ish gray, 72×64 pixels (one block per grid cell).
pub fn blocks_png(seed: u64) -> Result<Vec<u8>, ImageError> {
    let mut rng = Lcg::new(seed);
    let cells: Vec<u8> = (0..72)
        .map(|_| {
            if rng.next_u32().is_multiple_of(2) {
                30
            } else {
                220
            }
        })
        .collect();
    try_png_gray(72, 64, |x, y| cells[((y / 8) * 9 + x / 8) as usize])
}

/// A uniform (zero-contrast) image: it hashes with confidence 0.
pub fn uniform_png(level: u8) -> Result<Vec<u8>, ImageError> {
    try_png_gray(64, 64, |_, _| level)
}

/// One image of the golden set.
pub struct Golden {
    pub name: &'static str,
    pub png: Vec<u8>,
}

/// The golden images shipped in every bundle. Their expected hashes are
/// computed by the service's own code when the bundle is built, so a later
/// release that hashes them differently fails the smoke tests.
pub fn golden_set() -> Result<Vec<Golden>, ImageError> {
    let mut rng = Lcg::new(42);
    let noise: Vec<[u8; 3]> = (0..18 * 16)
        .map(|_| {
            if rng.next_u32().is_multiple_of(2) {
                [8, 8, 8]
            } else {
                [250, 240, 230]
            }
        })
        .collect();
    Ok(vec![
        Golden {
            name: "gradient_horizontal",
            png: try_png_gray(128, 64, |x, _| (x * 2) as u8)?,
        },
        Golden {
            name: "gradient_vertical",
            png: try_png_gray(64, 128, |_, y| (y * 2) as u8)?,
        },
        Golden {
            name: "checkerboard",
            png: try_png_gray(
                72,
                64,
                |x, y| if (x / 8 + y / 8) % 2 == 0 { 16 } else { 240 },
            )?,
        },
        Golden {
            name: "rings",
            png: try_png_rgb(96, 96, |x, y| {
                let dx = x as f64 - 40.0;
                let dy = y as f64 - 52.0;
                let d = (dx * dx + dy * dy).sqrt();
                let v = ((d / 6.0).sin() * 110.0 + 128.0) as u8;
                [v, 255 - v, v / 2]
            })?,
        },
        Golden {
            name: "blocks",
            png: blocks_png(7)?,
        },
        Golden {
            name: "noise",
            png: try_png_rgb(18, 16, |x, y| noise[(y * 18 + x) as usize])?,
        },
    ])
}

//! The difference hash (dHash) and its confidence.
//!
//! Convention (the common one, as in Neal Krawetz's write-up and Python's
//! `imagehash.dhash`):
//!
//! 1. Decode the PNG or JPEG bytes (the image crate; no other formats).
//! 2. Convert to 8-bit grayscale with the image crate's luma conversion
//!    (Rec. 709 weights: `(2126 R + 7152 G + 722 B) / 10000`; alpha is dropped).
//! 3. Resize to 9 columns × 8 rows with `FilterType::Triangle` (bilinear).
//!    An image that already is 9×8 is used as it is (the image crate copies
//!    instead of resampling when the size does not change).
//! 4. For each row `r` (top to bottom) and each column `c` in `0..8`
//!    (left to right), the bit is 1 when the pixel is darker than its right
//!    neighbour: `p[r][c] < p[r][c + 1]` (equal pixels give 0).
//! 5. Bits are packed row-major, the first bit (row 0, column 0) being the most
//!    significant: bit index `i = 8 r + c` is `1 << (63 - i)`.
//! 6. The 64-bit value is printed as 16 lowercase hex digits.
//!
//! Confidence: the population standard deviation of the 72 grayscale values of
//! the 9×8 grid divided by 64, clamped to 0..=1 and rounded to 4 decimals. A
//! uniform image scores 0; a black/white pattern scores 1. Below the configured
//! threshold (default [`DEFAULT_LOW_CONFIDENCE`]) a hash joins the
//! low-confidence review queue.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageFormat, ImageReader, Limits};

pub const GRID_WIDTH: u32 = 9;
pub const GRID_HEIGHT: u32 = 8;
/// Hashes whose confidence is below this join the low-confidence queue.
pub const DEFAULT_LOW_CONFIDENCE: f64 = 0.2;
/// Standard deviation (grayscale levels) that counts as full confidence.
pub const FULL_CONFIDENCE_STDDEV: f64 = 64.0;
/// Largest image side the decoder accepts (decompression-bomb guard).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest allocation the decoder may make.
pub const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// The 9×8 grayscale grid a hash is computed from, `grid[row][col]`.
pub type Grid = [[u8; 9]; 8];

/// Why an input could not be hashed (an extraction failure).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ExtractError {
    #[error("empty body: expected PNG or JPEG bytes")]
    Empty,
    #[error("unsupported image format: expected PNG or JPEG")]
    UnknownFormat,
    #[error("cannot decode {format} image: {detail}")]
    Decode {
        format: &'static str,
        detail: String,
    },
}

/// The result of hashing one image.
#[derive(Debug, Clone, PartialEq)]
pub struct HashResult {
    pub hash: u64,
    pub confidence: f64,
    pub width: u32,
    pub height: u32,
    pub format: &'static str,
}

impl HashResult {
    pub fn hex(&self) -> String {
        to_hex(self.hash)
    }
}

pub fn to_hex(hash: u64) -> String {
    format!("{hash:016x}")
}

/// Sniffs the format from the magic bytes: PNG or JPEG only.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else {
        None
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        _ => "image",
    }
}

/// Decodes PNG or JPEG bytes with size limits.
pub fn decode(bytes: &[u8]) -> Result<(DynamicImage, &'static str), ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Empty);
    }
    let format = sniff(bytes).ok_or(ExtractError::UnknownFormat)?;
    let name = format_name(format);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    // A decoder bug must not take a worker thread down with it.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()));
    match decoded {
        Ok(Ok(img)) => Ok((img, name)),
        Ok(Err(e)) => Err(ExtractError::Decode {
            format: name,
            detail: e.to_string(),
        }),
        Err(_) => Err(ExtractError::Decode {
            format: name,
            detail: "decoder panicked".into(),
        }),
    }
}

/// The 9×8 grid of a grayscale image (Triangle filter; identity for 9×8).
pub fn grid_of(gray: &GrayImage) -> Grid {
    let small = image::imageops::resize(gray, GRID_WIDTH, GRID_HEIGHT, FilterType::Triangle);
    let mut grid = [[0u8; 9]; 8];
    for (r, row) in grid.iter_mut().enumerate() {
        for (c, px) in row.iter_mut().enumerate() {
            *px = small.get_pixel(c as u32, r as u32).0[0];
        }
    }
    grid
}

/// The 64 bits of a grid (see the module docs for the convention).
pub fn bits_of(grid: &Grid) -> u64 {
    let mut hash = 0u64;
    for (r, row) in grid.iter().enumerate() {
        for c in 0..8 {
            if row[c] < row[c + 1] {
                hash |= 1u64 << (63 - (r * 8 + c));
            }
        }
    }
    hash
}

/// Contrast-based confidence of a grid, 0..=1.
pub fn confidence_of(grid: &Grid) -> f64 {
    let values: Vec<f64> = grid.iter().flatten().map(|&v| f64::from(v)).collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let c = (var.sqrt() / FULL_CONFIDENCE_STDDEV).clamp(0.0, 1.0);
    (c * 10_000.0).round() / 10_000.0
}

/// Hash of an already decoded image.
pub fn hash_image(img: &DynamicImage) -> (u64, f64) {
    let gray = img.to_luma8();
    let grid = grid_of(&gray);
    (bits_of(&grid), confidence_of(&grid))
}

/// Decodes and hashes PNG/JPEG bytes.
pub fn hash_bytes(bytes: &[u8]) -> Result<HashResult, ExtractError> {
    let (img, format) = decode(bytes)?;
    let (hash, confidence) = hash_image(&img);
    Ok(HashResult {
        hash,
        confidence,
        width: img.width(),
        height: img.height(),
        format,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::images;

    #[test]
    fn increasing_rows_set_every_bit() {
        let mut grid = [[0u8; 9]; 8];
        for row in grid.iter_mut() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (c * 20) as u8;
            }
        }
        assert_eq!(bits_of(&grid), u64::MAX);
        assert_eq!(to_hex(bits_of(&grid)), "ffffffffffffffff");
    }

    #[test]
    fn decreasing_and_equal_pairs_give_zero() {
        let mut grid = [[100u8; 9]; 8];
        assert_eq!(bits_of(&grid), 0);
        for row in grid.iter_mut() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = 200 - (c * 10) as u8;
            }
        }
        assert_eq!(bits_of(&grid), 0);
    }

    #[test]
    fn first_pair_is_the_most_significant_bit() {
        let mut grid = [[50u8; 9]; 8];
        grid[0][1] = 60; // row 0: p0 < p1 → bit 0 (MSB); p1 > p2 → 0
        assert_eq!(bits_of(&grid), 1u64 << 63);
        let mut grid = [[50u8; 9]; 8];
        grid[7][8] = 60; // row 7, pair 7 → bit 63 (LSB)
        assert_eq!(bits_of(&grid), 1);
        let mut grid = [[50u8; 9]; 8];
        grid[1][0] = 10; // row 1, pair 0 → bit 8
        assert_eq!(to_hex(bits_of(&grid)), "0080000000000000");
    }

    #[test]
    fn confidence_scales_with_contrast() {
        assert_eq!(confidence_of(&[[128u8; 9]; 8]), 0.0);
        let mut grid = [[0u8; 9]; 8];
        for (r, row) in grid.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = if (r + c) % 2 == 0 { 0 } else { 255 };
            }
        }
        assert_eq!(confidence_of(&grid), 1.0);
        let mut gentle = [[100u8; 9]; 8];
        gentle[0][0] = 110;
        assert!(confidence_of(&gentle) < DEFAULT_LOW_CONFIDENCE);
    }

    #[test]
    fn nine_by_eight_png_is_hashed_without_resampling() {
        let png = images::png_gray(9, 8, |x, y| ((x * 13 + y * 29) % 256) as u8);
        let r = hash_bytes(&png).unwrap();
        let mut grid = [[0u8; 9]; 8];
        for (y, row) in grid.iter_mut().enumerate() {
            for (x, v) in row.iter_mut().enumerate() {
                *v = ((x * 13 + y * 29) % 256) as u8;
            }
        }
        assert_eq!(r.hash, bits_of(&grid));
        assert_eq!((r.width, r.height, r.format), (9, 8, "PNG"));
    }

    #[test]
    fn rejects_empty_unknown_and_truncated() {
        assert_eq!(hash_bytes(b""), Err(ExtractError::Empty));
        assert_eq!(hash_bytes(b"GIF89a...."), Err(ExtractError::UnknownFormat));
        let png = images::png_gray(64, 64, |x, y| (x ^ y) as u8);
        let err = hash_bytes(&png[..png.len() / 2]).unwrap_err();
        assert!(
            matches!(err, ExtractError::Decode { format: "PNG", .. }),
            "{err}"
        );
    }

    #[test]
    fn jpeg_gradient_hashes_all_ones() {
        let jpg = images::jpeg_gray(90, 80, |x, _| (x * 255 / 89) as u8);
        let r = hash_bytes(&jpg).unwrap();
        assert_eq!(r.hex(), "ffffffffffffffff");
        assert_eq!(r.format, "JPEG");
    }
}

//! The difference hash (dHash) and its confidence.
//!
//! The hash is the one Python's `imagehash.dhash` (hash size 8) gives for the
//! same file, `str(imagehash.dhash(PIL.Image.open(f)))`, because users compare
//! our hashes with hashes that library already stored. imagehash does
//! `image.convert("L").resize((9, 8), LANCZOS)` and compares neighbours, so
//! each step below reproduces what Pillow does, integer rounding included:
//!
//! 1. Decode PNG or JPEG (sniffed from the magic bytes; nothing else). The
//!    declared size is checked before any pixel buffer exists: at most
//!    [`MAX_IMAGE_SIDE`] per side and [`MAX_PIXELS`] in all, else
//!    [`ExtractError::TooLarge`]. A JPEG must reach its end-of-image marker
//!    (Pillow refuses a truncated file too; the image crate would fill the
//!    missing part with grey and answer a hash of it). Decodes share a memory
//!    budget ([`DECODE_BUDGET_BYTES`], or `DHASH_DECODE_BUDGET_BYTES` from
//!    the environment): a decode waits, first come first served, until its
//!    estimated buffers fit.
//! 2. Gray as Pillow's `convert("L")` (ITU-R 601-2 luma in 16-bit fixed point):
//!    `L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16` for 8-bit colour,
//!    palettes expanded to their colours first; alpha and transparency are
//!    ignored. 16-bit samples count by their high byte, except 16-bit
//!    grayscale PNGs without an alpha channel, which Pillow opens as mode
//!    `I;16` and clips: `L = min(v, 255)`. 1/2/4-bit gray scales to 0..255.
//! 3. Resize to 9 columns × 8 rows with Pillow's LANCZOS (imagehash's
//!    `ANTIALIAS`): a separable Lanczos-3 whose support is stretched by the
//!    downscale factor (`3 · max(in/out, 1)` input pixels either side of the
//!    output centre `(i + 0.5) · in/out`), weights normalised per output pixel
//!    and turned into 22-bit fixed point. Each pass rounds to 8 bits (clipped
//!    to 0..=255); the horizontal pass runs first unless the height shrinks by
//!    more than twice what the width does (Pillow 13's order; older Pillow
//!    always went horizontal first, which can move a grid value by one level
//!    for tall images). A dimension that already has its target size is not
//!    resampled (a 9×8 image is used as it is).
//! 4. For each row `r` (top to bottom) and each column `c` in `0..8`
//!    (left to right), the bit is 1 when the pixel is darker than its right
//!    neighbour: `p[r][c] < p[r][c + 1]` (equal pixels give 0).
//! 5. Bits are packed row-major, the first bit (row 0, column 0) being the most
//!    significant: bit index `i = 8 r + c` is `1 << (63 - i)`.
//! 6. The 64-bit value is printed as 16 lowercase hex digits (imagehash's
//!    `str(hash)`).
//!
//! Confidence: the population standard deviation of the 72 grayscale values of
//! the 9×8 grid divided by 64, clamped to 0..=1 and rounded to 4 decimals. A
//! uniform image scores 0; a black/white pattern scores 1. Below the configured
//! threshold (default [`DEFAULT_LOW_CONFIDENCE`]) a hash joins the
//! low-confidence review queue.

use std::io::Cursor;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

pub const GRID_WIDTH: u32 = 9;
pub const GRID_HEIGHT: u32 = 8;
/// Hashes whose confidence is below this join the low-confidence queue.
pub const DEFAULT_LOW_CONFIDENCE: f64 = 0.2;
/// Standard deviation (grayscale levels) that counts as full confidence.
pub const FULL_CONFIDENCE_STDDEV: f64 = 64.0;
/// Largest image side the decoder accepts (decompression-bomb guard).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest image, in pixels, the decoder accepts: 50 megapixels holds an A4
/// page scanned at 600 dpi (35 MP) and a 48 MP camera photo. The declared
/// size is checked before decoding, so a small file declaring 16000×16000
/// costs nothing.
pub const MAX_PIXELS: u64 = 50_000_000;
/// Largest allocation one decode may make (the image crate's own guard).
pub const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;
/// Memory all decodes in the process may hold at once (estimated from the
/// declared size, see [`decode_cost`]); further decodes wait their turn.
/// The largest single decode allowed ([`MAX_PIXELS`] of 16-bit RGBA, or of
/// colour JPEG) fits in it, so every decode can run eventually.
pub const DECODE_BUDGET_BYTES: u64 = 512 * 1024 * 1024;

/// Pillow's fixed-point precision for resampling weights (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 22;
/// Lanczos-3: the filter's support in output pixels.
const LANCZOS_SUPPORT: f64 = 3.0;

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
    /// Refused from the declared size, before decoding.
    #[error(
        "{format} image of {width}x{height} pixels is too large: the limit is \
         {max_pixels} pixels and {max_side} pixels per side"
    )]
    TooLarge {
        format: &'static str,
        width: u32,
        height: u32,
        max_pixels: u64,
        max_side: u32,
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

// ------------------------------------------------------------ decode budget

/// A counting semaphore over bytes: a decode takes its estimated cost before
/// it allocates and gives it back when its buffers are freed. Waiters are
/// served in arrival order, so a big decode is not starved by small ones.
#[derive(Debug)]
pub struct DecodeBudget {
    total: u64,
    state: Mutex<BudgetState>,
    turn: Condvar,
}

#[derive(Debug)]
struct BudgetState {
    free: u64,
    next_ticket: u64,
    serving: u64,
    running: usize,
    peak_running: usize,
    peak_used: u64,
}

/// Figures of a budget, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    pub total: u64,
    pub used: u64,
    /// Decodes waiting for their share.
    pub waiting: u64,
    pub running: usize,
    pub peak_running: usize,
    pub peak_used: u64,
}

/// A share of a [`DecodeBudget`]; returned when dropped.
#[derive(Debug)]
pub struct Permit<'a> {
    budget: &'a DecodeBudget,
    bytes: u64,
}

impl DecodeBudget {
    pub const fn new(total: u64) -> Self {
        DecodeBudget {
            total,
            state: Mutex::new(BudgetState {
                free: total,
                next_ticket: 0,
                serving: 0,
                running: 0,
                peak_running: 0,
                peak_used: 0,
            }),
            turn: Condvar::new(),
        }
    }

    // The state is a few counters updated in one step each: a panic while
    // holding the lock cannot leave them half-changed, so a poisoned lock
    // is still good to use.
    fn lock(&self) -> MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `bytes` (capped at the whole budget, so that any request
    /// can run alone) and takes them.
    pub fn acquire(&self, bytes: u64) -> Permit<'_> {
        let bytes = bytes.min(self.total);
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        while st.serving != ticket || st.free < bytes {
            st = self.turn.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.serving += 1;
        st.free -= bytes;
        st.running += 1;
        st.peak_running = st.peak_running.max(st.running);
        st.peak_used = st.peak_used.max(self.total - st.free);
        drop(st);
        // The next in line may fit too.
        self.turn.notify_all();
        Permit {
            budget: self,
            bytes,
        }
    }

    pub fn stats(&self) -> BudgetStats {
        let st = self.lock();
        BudgetStats {
            total: self.total,
            used: self.total - st.free,
            waiting: st.next_ticket - st.serving,
            running: st.running,
            peak_running: st.peak_running,
            peak_used: st.peak_used,
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut st = self.budget.lock();
        st.free += self.bytes;
        st.running -= 1;
        drop(st);
        self.budget.turn.notify_all();
    }
}

/// Environment variable that overrides [`DECODE_BUDGET_BYTES`] (bytes, at
/// least [`MIN_DECODE_BUDGET_BYTES`]), read once at the first decode.
pub const DECODE_BUDGET_ENV: &str = "DHASH_DECODE_BUDGET_BYTES";
/// Smallest budget the override may set.
pub const MIN_DECODE_BUDGET_BYTES: u64 = 16 * 1024 * 1024;

/// The budget every decode of this process shares.
pub fn decodes() -> &'static DecodeBudget {
    static DECODES: OnceLock<DecodeBudget> = OnceLock::new();
    DECODES.get_or_init(|| {
        let total = match std::env::var(DECODE_BUDGET_ENV) {
            Err(_) => DECODE_BUDGET_BYTES,
            Ok(v) => match parse_budget(&v) {
                Ok(n) => n,
                Err(why) => {
                    // No caller to return this to: say it once, keep the default.
                    eprintln!(
                        "dhash-service: ignoring {DECODE_BUDGET_ENV}={v:?}: {why}; \
                         using {DECODE_BUDGET_BYTES} bytes"
                    );
                    DECODE_BUDGET_BYTES
                }
            },
        };
        DecodeBudget::new(total)
    })
}

/// Parses a budget override: whole bytes, at least the minimum.
pub fn parse_budget(v: &str) -> Result<u64, String> {
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| "expected a whole number of bytes".to_string())?;
    if n < MIN_DECODE_BUDGET_BYTES {
        return Err(format!(
            "below the minimum of {MIN_DECODE_BUDGET_BYTES} bytes"
        ));
    }
    Ok(n)
}

/// Estimated peak memory of decoding and hashing an image: the decoded
/// buffer (`decoded_bytes`) and the resize's accumulators (gray rows are made
/// one at a time, see [`resize_rows`]). A JPEG decoder also keeps
/// per-component planes and, for progressive files, 16-bit coefficients of
/// every sample: counted as twice the output again.
pub fn decode_cost(format: ImageFormat, width: u32, height: u32, decoded_bytes: u64) -> u64 {
    let decoder_extra = if format == ImageFormat::Jpeg {
        decoded_bytes.saturating_mul(2)
    } else {
        0
    };
    let accumulators = 8 * u64::from(GRID_HEIGHT) * u64::from(width);
    decoded_bytes
        .saturating_add(decoder_extra)
        .saturating_add(accumulators)
        .saturating_add(u64::from(GRID_WIDTH) * u64::from(height))
}

// ------------------------------------------------------------------ decode

/// How a 16-bit gray sample becomes 8 bits in Pillow (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gray16 {
    /// Mode `I;16`: `min(v, 255)`.
    Clip,
    /// Every other 16-bit mode: the high byte.
    HighByte,
}

/// Pillow opens a 16-bit grayscale PNG without an alpha channel (colour
/// type 0, with or without tRNS) as `I;16`; the image crate cannot tell it
/// from gray+alpha once tRNS is expanded, so read the IHDR chunk.
fn png_gray16_mode(bytes: &[u8]) -> Gray16 {
    // Signature (8), chunk length (4), "IHDR" (4), width, height, depth, type.
    match bytes.get(12..26) {
        Some(h) if &h[0..4] == b"IHDR" && h[12] == 16 && h[13] == 0 => Gray16::Clip,
        _ => Gray16::HighByte,
    }
}

/// Checks that a JPEG stream reaches its end-of-image marker, walking the
/// marker segments and the entropy-coded scans (where a 0xFF byte is always
/// followed by 0x00 stuffing or a restart marker). Bytes after the marker are
/// ignored, as decoders do.
pub fn jpeg_is_complete(bytes: &[u8]) -> Result<(), String> {
    let truncated = |at: usize| {
        format!(
            "truncated at byte {at} of {}: no end-of-image marker",
            bytes.len()
        )
    };
    let mut i = 2; // after SOI
    loop {
        // Skip anything up to the next marker (libjpeg tolerates extraneous
        // bytes here), then fill bytes.
        while i < bytes.len() && bytes[i] != 0xFF {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return Err(truncated(bytes.len()));
        };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a length.
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let len = match bytes.get(i..i + 2) {
            Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
            None => return Err(truncated(bytes.len())),
        };
        if len < 2 {
            return Err(format!("corrupt segment length {len} at byte {i}"));
        }
        i += len;
        if i > bytes.len() {
            return Err(truncated(bytes.len()));
        }
        if marker == 0xDA {
            // Entropy-coded data until a marker that is not stuffing/restart.
            loop {
                match bytes.get(i..i + 2) {
                    None => return Err(truncated(bytes.len())),
                    Some([0xFF, 0x00]) | Some([0xFF, 0xD0..=0xD7]) => i += 2,
                    Some([0xFF, 0xFF]) => i += 1,
                    Some([0xFF, _]) => break,
                    Some(_) => i += 1,
                }
            }
        }
    }
}

/// A decoded image's declared facts, read before its pixels.
struct Header {
    format: ImageFormat,
    width: u32,
    height: u32,
}

/// Decodes PNG or JPEG bytes, refusing oversized and truncated input before
/// any pixel buffer is allocated. The caller must hold a budget permit for
/// the cost it was told through `admit` (which runs between reading the
/// header and decoding); see [`hash_bytes`].
fn decode_with<'b, T>(
    bytes: &[u8],
    budget: &'b DecodeBudget,
    then: impl FnOnce(DynamicImage, Permit<'b>) -> T,
) -> Result<(T, &'static str), ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Empty);
    }
    let format = sniff(bytes).ok_or(ExtractError::UnknownFormat)?;
    let name = format_name(format);
    let decode_err = |detail: String| ExtractError::Decode {
        format: name,
        detail,
    };
    if format == ImageFormat::Jpeg {
        jpeg_is_complete(bytes).map_err(decode_err)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Sides and pixels are checked below from the header, with one message.
    limits.max_image_width = None;
    limits.max_image_height = None;
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    // A decoder bug must not take a worker thread down with it.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let decoder = reader
            .into_decoder()
            .map_err(|e| decode_err(e.to_string()))?;
        let (width, height) = decoder.dimensions();
        let head = Header {
            format,
            width,
            height,
        };
        check_size(&head, name)?;
        let cost = decode_cost(format, width, height, decoder.total_bytes());
        let permit = budget.acquire(cost);
        let img = DynamicImage::from_decoder(decoder).map_err(|e| decode_err(e.to_string()))?;
        Ok(then(img, permit))
    }));
    match decoded {
        Ok(Ok(v)) => Ok((v, name)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(decode_err("decoder panicked".into())),
    }
}

fn check_size(h: &Header, name: &'static str) -> Result<(), ExtractError> {
    let pixels = u64::from(h.width) * u64::from(h.height);
    if h.width > MAX_IMAGE_SIDE || h.height > MAX_IMAGE_SIDE || pixels > MAX_PIXELS {
        return Err(ExtractError::TooLarge {
            format: name,
            width: h.width,
            height: h.height,
            max_pixels: MAX_PIXELS,
            max_side: MAX_IMAGE_SIDE,
        });
    }
    if pixels == 0 {
        return Err(ExtractError::Decode {
            format: name,
            detail: format!("{:?} image has no pixels", h.format),
        });
    }
    Ok(())
}

/// Decodes PNG or JPEG bytes with the size limits and the shared budget
/// (held only while decoding: the caller gets the image).
pub fn decode(bytes: &[u8]) -> Result<(DynamicImage, &'static str), ExtractError> {
    decode_with(bytes, decodes(), |img, _permit| img)
}

// ------------------------------------------------------------------- gray

/// Pillow's `L24` luma: ITU-R 601-2 in 16-bit fixed point, rounded.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19_595 + u32::from(g) * 38_470 + u32::from(b) * 7_471 + 0x8000) >> 16) as u8
}

/// Row `y` of the 8-bit gray plane Pillow's `convert("L")` gives, written
/// into `out` (the image's width long). Rows are made one at a time so that
/// no full gray copy of a big image is ever held.
fn gray_row(img: &DynamicImage, gray16: Gray16, y: usize, out: &mut [u8]) {
    let w = out.len();
    let g16 = |v: u16| match gray16 {
        Gray16::Clip => v.min(255) as u8,
        Gray16::HighByte => (v >> 8) as u8,
    };
    let hi = |v: u16| (v >> 8) as u8;
    // `n` samples per pixel; a short buffer (impossible for a decoded
    // image) leaves the rest of the row black rather than panicking.
    fn row<T>(raw: &[T], n: usize, w: usize, y: usize) -> &[T] {
        raw.get(y * w * n..(y + 1) * w * n).unwrap_or(&[])
    }
    let fill = |out: &mut [u8], px: &mut dyn Iterator<Item = u8>| {
        for (o, v) in out.iter_mut().zip(px) {
            *o = v;
        }
    };
    match img {
        DynamicImage::ImageLuma8(b) => fill(out, &mut row(b.as_raw(), 1, w, y).iter().copied()),
        DynamicImage::ImageLumaA8(b) => fill(
            out,
            &mut row(b.as_raw(), 2, w, y).chunks_exact(2).map(|p| p[0]),
        ),
        DynamicImage::ImageRgb8(b) => fill(
            out,
            &mut row(b.as_raw(), 3, w, y)
                .chunks_exact(3)
                .map(|p| luma(p[0], p[1], p[2])),
        ),
        DynamicImage::ImageRgba8(b) => fill(
            out,
            &mut row(b.as_raw(), 4, w, y)
                .chunks_exact(4)
                .map(|p| luma(p[0], p[1], p[2])),
        ),
        DynamicImage::ImageLuma16(b) => {
            fill(out, &mut row(b.as_raw(), 1, w, y).iter().map(|&v| g16(v)))
        }
        DynamicImage::ImageLumaA16(b) => fill(
            out,
            &mut row(b.as_raw(), 2, w, y).chunks_exact(2).map(|p| g16(p[0])),
        ),
        DynamicImage::ImageRgb16(b) => fill(
            out,
            &mut row(b.as_raw(), 3, w, y)
                .chunks_exact(3)
                .map(|p| luma(hi(p[0]), hi(p[1]), hi(p[2]))),
        ),
        DynamicImage::ImageRgba16(b) => fill(
            out,
            &mut row(b.as_raw(), 4, w, y)
                .chunks_exact(4)
                .map(|p| luma(hi(p[0]), hi(p[1]), hi(p[2]))),
        ),
        // Float images do not come out of PNG or JPEG; keep them usable.
        other => {
            let rgb = other.crop_imm(0, y as u32, w as u32, 1).to_rgb8();
            fill(
                out,
                &mut rgb.as_raw().chunks_exact(3).map(|p| luma(p[0], p[1], p[2])),
            )
        }
    }
}

// --------------------------------------------------------------- resample

/// Pillow's `lanczos_filter`: sinc(x) · sinc(x / 3) on [-3, 3).
fn lanczos(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    if (-LANCZOS_SUPPORT..LANCZOS_SUPPORT).contains(&x) {
        sinc(x) * sinc(x / LANCZOS_SUPPORT)
    } else {
        0.0
    }
}

/// The input window and fixed-point weights of one output pixel.
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    start: usize,
    weights: Vec<i64>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a box covering
/// the whole input, step for step (same operation order, so the same
/// doubles). Only each window's own weights are stored: Pillow's fixed-width
/// table would take `out · (2 · 3 · in/out)` doubles for a long side.
fn lanczos_taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = LANCZOS_SUPPORT * filterscale;
    let ss = 1.0 / filterscale;
    let one = f64::from(1u32 << PRECISION_BITS);
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // `as i64` truncates toward zero, as C's `(int)` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).max(0) as usize;
            let raw: Vec<f64> = (0..n)
                .map(|x| lanczos(((x as i64 + xmin) as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if ww != 0.0 { w / ww } else { w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i64
                    } else {
                        (0.5 + w * one) as i64
                    }
                })
                .collect();
            Taps {
                start: xmin as usize,
                weights,
            }
        })
        .collect()
}

/// Pillow's `clip8`: drop the fixed-point fraction (rounding was added up
/// front), clamp to a byte.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One output sample: `values` yields the input samples of the window.
fn convolve(taps: &Taps, values: impl Iterator<Item = u8>) -> u8 {
    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
    for (v, &w) in values.zip(&taps.weights) {
        acc += i64::from(v) * w;
    }
    clip8(acc)
}

/// Whether Pillow runs the horizontal pass first: unless the height shrinks
/// by more than twice what the width does (Pillow's `ImagingResampleInner`,
/// "to make the horizontal pass faster"). The order changes the rounding
/// between the passes, so it is part of the result.
fn horizontal_first(width: usize, height: usize) -> bool {
    let dy = height as i64 - i64::from(GRID_HEIGHT);
    let dx = width as i64 - i64::from(GRID_WIDTH);
    !(dy > 0 && dy > dx * 2)
}

/// Pillow's vertical pass, fed one source row at a time: every output row
/// keeps an accumulator per column, and a source row is added, with its
/// weight, to the output rows whose window holds it. Integer sums do not
/// depend on their order, so this equals Pillow's column-wise loop.
struct VerticalPass<'t> {
    taps: &'t [Taps],
    width: usize,
    acc: Vec<i64>,
}

impl<'t> VerticalPass<'t> {
    fn new(taps: &'t [Taps], width: usize) -> Self {
        VerticalPass {
            taps,
            width,
            acc: vec![1 << (PRECISION_BITS - 1); taps.len() * width],
        }
    }
    fn add_row(&mut self, y: usize, row: &[u8]) {
        for (r, t) in self.taps.iter().enumerate() {
            let Some(&w) = y.checked_sub(t.start).and_then(|i| t.weights.get(i)) else {
                continue;
            };
            let acc = &mut self.acc[r * self.width..(r + 1) * self.width];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += i64::from(v) * w;
            }
        }
    }
    fn finish(self) -> Vec<u8> {
        self.acc.into_iter().map(clip8).collect()
    }
}

/// Pillow's horizontal pass over one row.
fn horizontal_row(taps: &[Taps], row: &[u8], out: &mut Vec<u8>) {
    for t in taps {
        out.push(convolve(
            t,
            row.get(t.start..).unwrap_or(&[]).iter().copied(),
        ));
    }
}

/// Pillow's `resize((9, 8), LANCZOS)` of an 8-bit gray image of `width` ×
/// `height` whose row `y` `row(y, buf)` writes into `buf`: two passes, each
/// rounded to 8 bits, in Pillow's order; a dimension already at its target
/// size is not resampled. When the horizontal pass runs first it covers only
/// the rows the vertical pass reads. Rows are asked for in order, once each.
pub fn resize_rows(width: usize, height: usize, mut row: impl FnMut(usize, &mut [u8])) -> Grid {
    let (gw, gh) = (GRID_WIDTH as usize, GRID_HEIGHT as usize);
    let mut grid = [[0u8; 9]; 8];
    if width == 0 || height == 0 {
        return grid;
    }
    let need_h = width != gw;
    let need_v = height != gh;
    let vert = lanczos_taps(height, gh);
    let horiz = lanczos_taps(width, gw);
    let mut buf = vec![0u8; width];
    let mut hrow = Vec::with_capacity(gw);
    // The 9×8 result, row-major.
    let out: Vec<u8> = if horizontal_first(width, height) {
        let (first, last) = if need_v {
            let first = vert.first().map_or(0, |t| t.start);
            let last = vert.last().map_or(height, |t| t.start + t.weights.len());
            (first, last.min(height))
        } else {
            (0, gh)
        };
        let mut pass = VerticalPass::new(&vert, gw);
        let mut rows = Vec::with_capacity(gw * gh);
        for y in first..last {
            row(y, &mut buf);
            let h: &[u8] = if need_h {
                hrow.clear();
                horizontal_row(&horiz, &buf, &mut hrow);
                &hrow
            } else {
                &buf
            };
            if need_v {
                pass.add_row(y, h);
            } else {
                rows.extend_from_slice(h);
            }
        }
        if need_v {
            pass.finish()
        } else {
            rows
        }
    } else {
        // Only chosen when the height shrinks, so the vertical pass runs.
        let mut pass = VerticalPass::new(&vert, width);
        for y in 0..height {
            row(y, &mut buf);
            pass.add_row(y, &buf);
        }
        let v = pass.finish();
        if need_h {
            let mut rows = Vec::with_capacity(gw * gh);
            for r in v.chunks_exact(width) {
                horizontal_row(&horiz, r, &mut rows);
            }
            rows
        } else {
            v
        }
    };
    for (r, g) in grid.iter_mut().enumerate() {
        if let Some(src) = out.get(r * gw..(r + 1) * gw) {
            g.copy_from_slice(src);
        }
    }
    grid
}

/// [`resize_rows`] of a row-major gray plane; a plane shorter than
/// `width` × `height` gives an all-zero grid.
pub fn resize_to_grid(gray: &[u8], width: usize, height: usize) -> Grid {
    if gray.len() < width.saturating_mul(height) {
        return [[0u8; 9]; 8];
    }
    resize_rows(width, height, |y, buf| {
        buf.copy_from_slice(&gray[y * width..(y + 1) * width])
    })
}

// ------------------------------------------------------------------- hash

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

/// The grid of an already decoded image (16-bit gray counts by its high
/// byte here: the file's PNG colour type is not known).
pub fn grid_of_image(img: &DynamicImage) -> Grid {
    grid_of(img, Gray16::HighByte)
}

fn grid_of(img: &DynamicImage, gray16: Gray16) -> Grid {
    let (w, h) = (img.width() as usize, img.height() as usize);
    resize_rows(w, h, |y, buf| gray_row(img, gray16, y, buf))
}

/// Hash of an already decoded image.
pub fn hash_image(img: &DynamicImage) -> (u64, f64) {
    let grid = grid_of_image(img);
    (bits_of(&grid), confidence_of(&grid))
}

/// Decodes and hashes PNG/JPEG bytes, as `imagehash.dhash` would.
pub fn hash_bytes(bytes: &[u8]) -> Result<HashResult, ExtractError> {
    hash_bytes_with(bytes, decodes())
}

/// [`hash_bytes`] drawing on a given decode budget.
pub fn hash_bytes_with(bytes: &[u8], budget: &DecodeBudget) -> Result<HashResult, ExtractError> {
    let gray16 = if sniff(bytes) == Some(ImageFormat::Png) {
        png_gray16_mode(bytes)
    } else {
        Gray16::HighByte
    };
    let ((grid, width, height), format) = decode_with(bytes, budget, |img, permit| {
        let grid = grid_of(&img, gray16);
        let size = (img.width(), img.height());
        // Free the pixels before giving their share of the budget back.
        drop(img);
        drop(permit);
        (grid, size.0, size.1)
    })?;
    Ok(HashResult {
        hash: bits_of(&grid),
        confidence: confidence_of(&grid),
        width,
        height,
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
    fn luma_is_pillows_rounded_601() {
        // Values Pillow's convert("L") gives for these colours.
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(0, 0, 0), 0);
        // 601 with truncation would give 127 here; Pillow rounds to 128.
        assert_eq!(luma(128, 128, 127), 128);
    }

    #[test]
    fn sixteen_bit_gray_is_clipped_only_without_alpha_channel() {
        let gray16 = |ct: u8| {
            let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\x09\0\0\0\x08".to_vec();
            b.extend_from_slice(&[16, ct, 0, 0, 0]);
            b
        };
        assert_eq!(png_gray16_mode(&gray16(0)), Gray16::Clip);
        assert_eq!(png_gray16_mode(&gray16(4)), Gray16::HighByte);
        assert_eq!(png_gray16_mode(&gray16(2)), Gray16::HighByte);
        assert_eq!(png_gray16_mode(b"\x89PNG"), Gray16::HighByte);
        let img = DynamicImage::ImageLuma16(
            image::ImageBuffer::from_raw(3, 1, vec![7, 300, 65535]).unwrap(),
        );
        let mut row = [0u8; 3];
        gray_row(&img, Gray16::Clip, 0, &mut row);
        assert_eq!(row, [7, 255, 255]);
        gray_row(&img, Gray16::HighByte, 0, &mut row);
        assert_eq!(row, [0, 1, 255]);
    }

    #[test]
    fn lanczos_taps_follow_pillow() {
        // Same size: weight 1 on the pixel itself (sinc is 0 at integers).
        for t in lanczos_taps(8, 8).iter().enumerate() {
            let (i, t) = t;
            let on: Vec<_> = t
                .weights
                .iter()
                .enumerate()
                .filter(|(_, &w)| w != 0)
                .collect();
            assert_eq!(on, vec![(i - t.start, &(1 << PRECISION_BITS))]);
        }
        // One input pixel stretched: every output takes it whole.
        for t in lanczos_taps(1, 9) {
            assert_eq!((t.start, t.weights.clone()), (0, vec![1 << PRECISION_BITS]));
        }
        // Downscaling by 100: support 300 either side of each centre, cut
        // at the edges, weights summing to one (within rounding).
        let taps = lanczos_taps(900, 9);
        assert_eq!(taps[0].start, 0);
        assert_eq!(taps[0].weights.len(), 350); // (50 + 300 + 0.5) as int
        assert_eq!(taps[4].start, 150);
        assert_eq!(taps[4].weights.len(), 600);
        assert_eq!(taps[8].start + taps[8].weights.len(), 900);
        for t in &taps {
            let sum: i64 = t.weights.iter().sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i64,
                "{sum}"
            );
        }
    }

    #[test]
    fn pass_order_is_pillows() {
        // Vertical first only when the height shrinks more than twice as
        // much as the width: 37×1000 and 3×500 yes; 1024×768, 500×3 no.
        assert!(!horizontal_first(37, 1000));
        assert!(!horizontal_first(3, 500));
        assert!(!horizontal_first(20, 2000));
        assert!(horizontal_first(1024, 768));
        assert!(horizontal_first(500, 3));
        assert!(horizontal_first(9, 8));
        // The boundary: 8 + 2 * (w - 9) rows shrink exactly twice as much.
        assert!(horizontal_first(20, 8 + 22));
        assert!(!horizontal_first(20, 8 + 23));
    }

    #[test]
    fn resize_of_a_flat_image_is_flat_and_edges_stay_in_range() {
        let flat = vec![77u8; 300 * 200];
        assert_eq!(resize_to_grid(&flat, 300, 200), [[77u8; 9]; 8]);
        // Hard black/white edges make Lanczos ring; results are clipped.
        let bars: Vec<u8> = (0..40 * 30)
            .map(|i| if (i % 40) / 5 % 2 == 0 { 0 } else { 255 })
            .collect();
        let g = resize_to_grid(&bars, 40, 30);
        assert!(g.iter().flatten().any(|&v| v == 0 || v == 255));
        // Short input is not a panic.
        assert_eq!(resize_to_grid(&[1, 2], 40, 30), [[0u8; 9]; 8]);
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
    fn every_truncated_jpeg_is_a_decode_error() {
        let jpg = images::jpeg_gray(120, 90, |x, y| ((x * 7) ^ (y * 3)) as u8);
        assert!(jpeg_is_complete(&jpg).is_ok());
        hash_bytes(&jpg).unwrap();
        for cut in (3..jpg.len())
            .step_by(7)
            .chain([jpg.len() - 1, jpg.len() - 2])
        {
            let err = hash_bytes(&jpg[..cut]).unwrap_err();
            assert!(
                matches!(&err, ExtractError::Decode { format: "JPEG", detail } if detail.contains("truncated")),
                "cut at {cut}: {err}"
            );
        }
        // Bytes after the end-of-image marker are ignored, as decoders do.
        let mut trailing = jpg.clone();
        trailing.extend_from_slice(b"trailing junk");
        assert_eq!(
            hash_bytes(&trailing).unwrap().hash,
            hash_bytes(&jpg).unwrap().hash
        );
        // A bad segment length is named.
        let mut bad = jpg[..2].to_vec();
        bad.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x01]);
        let err = jpeg_is_complete(&bad).unwrap_err();
        assert!(err.contains("segment length 1"), "{err}");
    }

    /// CRC-32 (ISO-HDLC, as PNG chunks use), bit by bit.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A PNG signature, an IHDR declaring `w`×`h` 8-bit gray, and one IDAT
    /// holding a few bytes: enough for a decoder to read the header.
    fn png_declaring(w: u32, h: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            out.extend_from_slice(&body);
            out.extend_from_slice(&crc32(&body).to_be_bytes());
        };
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        chunk(b"IHDR", &ihdr);
        chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0]);
        chunk(b"IEND", &[]);
        out
    }

    #[test]
    fn arbitrary_bytes_after_a_magic_number_are_errors_not_panics() {
        let mut rng = images::Lcg::new(13);
        let jpg = images::jpeg_gray(40, 30, |x, y| (x * y) as u8);
        let png = images::png_gray(40, 30, |x, y| (x + y) as u8);
        for i in 0..400 {
            let mut body: Vec<u8> = match i % 4 {
                0 => vec![0xFF, 0xD8, 0xFF],
                1 => b"\x89PNG\r\n\x1a\n".to_vec(),
                2 => jpg[..jpg.len() / 2].to_vec(),
                _ => png[..png.len() / 2].to_vec(),
            };
            let n = rng.next_u32() % 300;
            body.extend((0..n).map(|_| rng.next_u8()));
            // Either outcome is fine; a panic or a hang is not.
            let _ = hash_bytes(&body);
            let _ = jpeg_is_complete(&body);
        }
        // Whole files with a few bytes flipped inside.
        for i in 0..200 {
            let mut body = if i % 2 == 0 { jpg.clone() } else { png.clone() };
            for _ in 0..3 {
                let at = rng.next_u32() as usize % body.len();
                body[at] = rng.next_u8();
            }
            let _ = hash_bytes(&body);
        }
    }

    #[test]
    fn declared_size_over_the_limit_is_refused_before_decoding() {
        // A PNG declaring 16000×16000 gray whose image data never comes:
        // only the header is read before the refusal.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        let png = png_declaring(16_000, 16_000);
        let t0 = std::time::Instant::now();
        let err = hash_bytes(&png).unwrap_err();
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(
            err,
            ExtractError::TooLarge {
                format: "PNG",
                width: 16_000,
                height: 16_000,
                max_pixels: MAX_PIXELS,
                max_side: MAX_IMAGE_SIDE,
            }
        );
        assert!(err.to_string().contains("16000x16000"), "{err}");
        // A complete JPEG whose frame header is patched to 16000×16000.
        let mut jpg = images::jpeg_gray(16, 16, |x, y| (x * y) as u8);
        let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpg[sof + 5..sof + 9].copy_from_slice(&[0x3E, 0x80, 0x3E, 0x80]);
        assert!(jpeg_is_complete(&jpg).is_ok());
        assert!(
            matches!(
                hash_bytes(&jpg),
                Err(ExtractError::TooLarge {
                    format: "JPEG",
                    width: 16_000,
                    height: 16_000,
                    ..
                })
            ),
            "{:?}",
            hash_bytes(&jpg)
        );
        // Long but thin: over the side limit, under the pixel limit.
        let thin = png_declaring(MAX_IMAGE_SIDE + 1, 1);
        assert!(matches!(
            hash_bytes(&thin),
            Err(ExtractError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_budget_bounds_concurrent_decodes() {
        static BUDGET: DecodeBudget = DecodeBudget::new(1000);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let _p = BUDGET.acquire(400);
                    assert!(BUDGET.stats().used <= 1000);
                    std::thread::sleep(std::time::Duration::from_millis(30));
                });
            }
        });
        let st = BUDGET.stats();
        assert_eq!((st.used, st.running, st.waiting), (0, 0, 0), "{st:?}");
        assert!(st.peak_running <= 2 && st.peak_used <= 800, "{st:?}");
        // More than the whole budget is capped, so it still runs (alone).
        let p = BUDGET.acquire(5000);
        assert_eq!(BUDGET.stats().used, 1000);
        drop(p);
        assert_eq!(BUDGET.stats().used, 0);
    }

    /// Waits until `cond` holds of the budget's figures (at most 10 s).
    fn wait_for(budget: &DecodeBudget, cond: impl Fn(&BudgetStats) -> bool) {
        let t0 = std::time::Instant::now();
        while !cond(&budget.stats()) {
            assert!(t0.elapsed().as_secs() < 10, "{:?}", budget.stats());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn the_budget_serves_in_arrival_order() {
        // A big request waiting is not overtaken by a small one that would
        // fit: otherwise a stream of small decodes could starve it.
        // The big one asks for the whole budget, so once it holds its permit
        // the small one cannot run until it is done: the order of the pushes
        // is then the order of the grants, not a race between two holders.
        let budget = DecodeBudget::new(1000);
        let order = std::sync::Mutex::new(Vec::new());
        let first = budget.acquire(600);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _p = budget.acquire(1000);
                order.lock().unwrap().push("big");
            });
            wait_for(&budget, |st| st.waiting == 1);
            s.spawn(|| {
                let _p = budget.acquire(100);
                order.lock().unwrap().push("small");
            });
            wait_for(&budget, |st| st.waiting == 2);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(order.lock().unwrap().is_empty(), "the small one overtook");
            assert_eq!(budget.stats().used, 600);
            drop(first);
        });
        assert_eq!(*order.lock().unwrap(), ["big", "small"]);
        let st = budget.stats();
        assert_eq!((st.used, st.waiting), (0, 0), "{st:?}");
        // The big one held the whole budget alone; small never ran beside it.
        assert_eq!(st.peak_used, 1000, "{st:?}");
    }

    #[test]
    fn budget_override_is_validated() {
        assert_eq!(parse_budget("67108864"), Ok(64 << 20));
        assert_eq!(parse_budget(" 16777216 "), Ok(16 << 20));
        assert!(parse_budget("1000").unwrap_err().contains("minimum"));
        assert!(parse_budget("64MB").unwrap_err().contains("whole number"));
        assert!(parse_budget("-5").is_err());
        assert!(parse_budget("").is_err());
    }

    #[test]
    fn hashing_holds_its_share_of_the_budget_only_while_decoding() {
        let budget = DecodeBudget::new(DECODE_BUDGET_BYTES);
        let png = images::png_rgb(300, 200, |x, y| [x as u8, y as u8, 9]);
        let r = hash_bytes_with(&png, &budget).unwrap();
        assert_eq!((r.width, r.height), (300, 200));
        let st = budget.stats();
        assert_eq!(st.used, 0);
        assert_eq!(
            st.peak_used,
            decode_cost(ImageFormat::Png, 300, 200, 300 * 200 * 3)
        );
    }

    #[test]
    fn golden_images_hash_to_what_python_imagehash_says() {
        // str(imagehash.dhash(Image.open(f))) of the bundle's golden PNGs,
        // imagehash 4.3.2 with Pillow 13.0.0: a check of the convention that
        // runs without Python (tests/imagehash.rs runs the library itself).
        let want = [
            ("gradient_horizontal", "ffffffffffffffff"),
            ("gradient_vertical", "0000000000000000"),
            ("checkerboard", "aa55aa55aa55aa55"),
            ("rings", "0fe3d99c8c9cd163"),
            ("blocks", "cc8ba89854667169"),
            ("noise", "0c2ea53762a72dd4"),
        ];
        let golden = images::golden_set().unwrap();
        assert_eq!(golden.len(), want.len());
        for (g, (name, hex)) in golden.iter().zip(want) {
            assert_eq!(g.name, name);
            assert_eq!(hash_bytes(&g.png).unwrap().hex(), hex, "{name}");
        }
    }

    #[test]
    fn jpeg_gradient_hashes_all_ones() {
        let jpg = images::jpeg_gray(90, 80, |x, _| (x * 255 / 89) as u8);
        let r = hash_bytes(&jpg).unwrap();
        assert_eq!(r.hex(), "ffffffffffffffff");
        assert_eq!(r.format, "JPEG");
    }
}

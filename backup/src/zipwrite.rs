//! Writing the zip: every item streamed through a bounded buffer, hashed on
//! the way (each entry for the manifest, the whole file for the sidecar),
//! the manifest last. Memory stays flat whatever the size of the data.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use gates_core::fsutil;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use crate::{FileEntry, Manifest, PlanItem, MANIFEST};

/// Read/write buffer for streaming (also the size of the compressibility sample).
const BUF: usize = 256 * 1024;
/// Bytes sampled at the start of a file to decide stored vs deflate.
const SAMPLE: usize = 64 * 1024;
/// Files at least this large get zip64 headers (margin below 4 GiB for growth while reading).
const LARGE: u64 = 1 << 31;
/// Extensions of already-compressed formats: stored, never deflated.
const COMPRESSED_EXT: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "webp", "heic", "zip", "gz", "tgz", "bz2", "xz", "zst", "7z",
    "rar", "mp3", "mp4", "mov", "avi", "mkv", "woff2", "jar", "br", "lz4",
];

/// A finished zip: its entries (as the manifest lists them), SHA-256 and size.
pub(crate) struct Written {
    pub entries: Vec<FileEntry>,
    pub sha256: String,
    pub bytes: u64,
}

/// Writes `items`, then `manifest` (completed with their hashes), into the new
/// file `partial` and syncs it. On error the file is left half written (the
/// caller removes it).
pub(crate) fn write_zip(
    partial: &Path,
    items: &[PlanItem],
    manifest: Manifest,
) -> anyhow::Result<Written> {
    let total: u64 = items.iter().map(|i| i.bytes).sum();
    let progress = gates_core::progress::bytes("backup", total);
    let discard = Arc::new(AtomicBool::new(false));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let hw = HashWriter {
        inner: BufWriter::with_capacity(BUF, file),
        hasher: Sha256::new(),
        bytes: 0,
        discard: discard.clone(),
    };
    let mut zip = zip::ZipWriter::new_stream(hw);
    let written = match write_entries(&mut zip, items, manifest, &progress) {
        Ok(entries) => finish_zip(zip).map(|hw| (entries, hw)),
        Err(e) => {
            // Nothing more may reach the file (dropping a ZipWriter finishes it).
            discard.store(true, Ordering::Relaxed);
            drop(zip);
            Err(e)
        }
    };
    progress.finish();
    let (entries, hw) = match written {
        Ok(x) => x,
        Err(e) => {
            discard.store(true, Ordering::Relaxed);
            return Err(e.context(format!("writing {}", partial.display())));
        }
    };
    Ok(Written {
        entries,
        sha256: hex::encode(hw.hasher.finalize()),
        bytes: hw.bytes,
    })
}

/// A writer that hashes and counts what goes through it. After `discard` is
/// set (an earlier error), writes go nowhere, so dropping a half-written zip
/// does not try to finish it on the real file.
struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
    discard: Arc<AtomicBool>,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.discard.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.discard.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.flush()
    }
}

/// Shannon entropy of a sample in bits per byte (8 = random).
fn entropy(sample: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[b as usize] += 1;
    }
    let n = sample.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Stored for already-compressed formats and random-looking data, deflate
/// (fast level 1) for the rest.
fn choose_method(path: &Path, sample: &[u8]) -> CompressionMethod {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.is_some_and(|e| COMPRESSED_EXT.contains(&e.as_str())) {
        return CompressionMethod::Stored;
    }
    if sample.len() < 64 || (sample.len() >= 4096 && entropy(sample) > 7.5) {
        return CompressionMethod::Stored;
    }
    CompressionMethod::Deflated
}

fn zip_time(meta: &fs::Metadata) -> zip::DateTime {
    meta.modified()
        .map(|m| to_zip_time(m.into()))
        .unwrap_or_default()
}

fn now_zip_time() -> zip::DateTime {
    to_zip_time(chrono::Utc::now())
}

fn to_zip_time(t: chrono::DateTime<chrono::Utc>) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    zip::DateTime::from_date_and_time(
        u16::try_from(t.year()).unwrap_or(1980),
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
    )
    .unwrap_or_default()
}

/// Fills `buf` as far as the file allows (short only at end of file).
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

type Zip = zip::ZipWriter<zip::write::StreamWriter<HashWriter<BufWriter<File>>>>;

/// Streams one file into the zip, hashing it on the way (bounded memory):
/// the first block also decides the compression.
fn add_file(
    zip: &mut Zip,
    item: &PlanItem,
    buf: &mut [u8],
    progress: &gates_core::progress::Bar,
) -> anyhow::Result<FileEntry> {
    let source = &item.source;
    let mut f = fsutil::open_regular(source, "the file to back up")?;
    let meta = f
        .metadata()
        .with_context(|| format!("reading {}", source.display()))?;
    let sample_len = SAMPLE.min(buf.len());
    let n = read_full(&mut f, &mut buf[..sample_len])
        .with_context(|| format!("reading {}", source.display()))?;
    let method = choose_method(source, &buf[..n]);
    let mut opts = SimpleFileOptions::default()
        .compression_method(method)
        .unix_permissions(item.mode)
        .large_file(meta.len() >= LARGE)
        .last_modified_time(zip_time(&meta));
    if method == CompressionMethod::Deflated {
        opts = opts.compression_level(Some(1));
    }
    zip.start_file(item.zip_path.as_str(), opts)
        .with_context(|| format!("adding {} to the zip", item.zip_path))?;
    let mut hasher = Sha256::new();
    let mut bytes = n as u64;
    hasher.update(&buf[..n]);
    zip.write_all(&buf[..n]).context("writing the zip")?;
    progress.inc(n as u64);
    loop {
        let k = match f.read(buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", source.display())),
        };
        hasher.update(&buf[..k]);
        zip.write_all(&buf[..k]).context("writing the zip")?;
        bytes += k as u64;
        progress.inc(k as u64);
    }
    Ok(FileEntry {
        path: item.zip_path.clone(),
        bytes,
        sha256: hex::encode(hasher.finalize()),
        mode: Some(item.mode),
    })
}

/// Streams every item, then the manifest (last: it holds their hashes).
fn write_entries(
    zip: &mut Zip,
    items: &[PlanItem],
    mut manifest: Manifest,
    progress: &gates_core::progress::Bar,
) -> anyhow::Result<Vec<FileEntry>> {
    let mut buf = vec![0u8; BUF];
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        progress.set_message(item.zip_path.clone());
        entries.push(add_file(zip, item, &mut buf, progress)?);
    }
    manifest.created_at = gates_core::event::now_rfc3339();
    manifest.files = entries.clone();
    let text = serde_json::to_vec_pretty(&manifest)?;
    zip.start_file(
        MANIFEST,
        SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .unix_permissions(0o644)
            .last_modified_time(now_zip_time()),
    )?;
    zip.write_all(&text).context("writing the zip")?;
    Ok(entries)
}

fn finish_zip(zip: Zip) -> anyhow::Result<HashWriter<BufWriter<File>>> {
    let stream = zip.finish().context("finishing the zip")?;
    let mut hw = stream.into_inner();
    hw.flush().context("writing the zip")?;
    hw.inner.get_ref().sync_all().context("syncing the zip")?;
    Ok(hw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_choice() {
        let text = b"hello world, the quick brown fox ".repeat(200);
        assert_eq!(
            choose_method(Path::new("a.txt"), &text),
            CompressionMethod::Deflated
        );
        assert_eq!(
            choose_method(Path::new("a.PNG"), &text),
            CompressionMethod::Stored
        );
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let random: Vec<u8> = (0..SAMPLE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(entropy(&random) > 7.9);
        assert_eq!(
            choose_method(Path::new("blob.bin"), &random),
            CompressionMethod::Stored
        );
    }
}

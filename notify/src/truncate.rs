//! Truncation to a channel's limits, with a visible marker, never rejection.

/// Appended to anything cut to fit a channel's limit.
pub const MARKER: &str = "… [truncated]";

/// Cuts `text` to at most `max` Unicode scalar values (chars), marker included.
pub fn chars(text: &str, max: usize) -> String {
    cut(text, max, |_| 1)
}

/// Cuts `text` to at most `max` UTF-16 code units, marker included. Discord
/// counts lengths the way JavaScript does; for text outside the Basic
/// Multilingual Plane that is more than the char count.
pub fn utf16(text: &str, max: usize) -> String {
    cut(text, max, char::len_utf16)
}

/// The length [`utf16`] measures.
pub fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

fn cut(text: &str, max: usize, len: impl Fn(char) -> usize) -> String {
    let total: usize = text.chars().map(&len).sum();
    if total <= max {
        return text.to_string();
    }
    let marker_len: usize = MARKER.chars().map(&len).sum();
    if max <= marker_len {
        // No room for the marker: a hard cut is all that fits.
        return take(text, max, &len);
    }
    let mut out = take(text, max - marker_len, &len);
    out.push_str(MARKER);
    out
}

fn take(text: &str, budget: usize, len: &impl Fn(char) -> usize) -> String {
    let mut used = 0;
    let mut out = String::new();
    for c in text.chars() {
        let l = len(c);
        if used + l > budget {
            break;
        }
        used += l;
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_untouched_long_text_marked() {
        assert_eq!(chars("hello", 5), "hello");
        let long = "x".repeat(5000);
        let t = chars(&long, 4096);
        assert_eq!(t.chars().count(), 4096);
        assert!(t.ends_with(MARKER));
    }

    #[test]
    fn utf16_counts_surrogate_pairs() {
        let emoji = "😀".repeat(100); // 200 UTF-16 units, 100 chars
        let t = utf16(&emoji, 50);
        assert!(utf16_len(&t) <= 50, "{}", utf16_len(&t));
        assert!(t.ends_with(MARKER));
        assert_eq!(chars(&emoji, 100), emoji);
    }

    #[test]
    fn tiny_limit_hard_cut() {
        assert_eq!(chars("abcdefghijklmnopqrstuvwxyz", 3), "abc");
    }
}

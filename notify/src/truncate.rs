//! Truncation to a channel's limits, with a visible marker, never rejection.

/// Appended to anything cut to fit a channel's limit.
pub const MARKER: &str = "… [truncated]";

/// The longest message (in chars) any channel carries: the email body and the
/// generic webhook. Chat channels cut further to their own limits (Slack 3000,
/// Teams 12000, Discord 4096). The full text is kept once, in the audit copy
/// in `notifications.out_dir`.
pub const MESSAGE_MAX: usize = 65_536;
/// The message as written on each line of the fallback file (one line per
/// channel): enough to read, with `full_text` naming the audit copy.
pub const FALLBACK_MESSAGE_MAX: usize = 8_192;
/// A title (the chat channels cut it further).
pub const TITLE_MAX: usize = 1_000;
/// One field's value as text (the chat channels cut it further).
pub const FIELD_MAX: usize = 4_096;
/// At most this many fields travel with a notification.
pub const FIELDS_MAX: usize = 50;

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
    // Find where `max` units end without measuring the whole text: a message
    // of megabytes is scanned only as far as the limit.
    let mut used = 0;
    let mut fits_all = true;
    for c in text.chars() {
        used += len(c);
        if used > max {
            fits_all = false;
            break;
        }
    }
    if fits_all {
        return text.to_string();
    }
    let marker_len: usize = MARKER.chars().map(&len).sum();
    if max <= marker_len {
        // No room for the marker: a hard cut is all that fits.
        return take(text, max, &len).to_string();
    }
    let mut out = take(text, max - marker_len, &len).to_string();
    out.push_str(MARKER);
    out
}

/// The longest prefix of `text` within `budget` units.
fn take<'a>(text: &'a str, budget: usize, len: &impl Fn(char) -> usize) -> &'a str {
    let mut used = 0;
    for (i, c) in text.char_indices() {
        let l = len(c);
        if used + l > budget {
            return &text[..i];
        }
        used += l;
    }
    text
}

/// Whether [`chars`] would cut `text` at `max`.
pub fn exceeds(text: &str, max: usize) -> bool {
    text.len() > max && text.chars().nth(max).is_some()
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
    fn exceeds_agrees_with_chars() {
        for (text, max) in [("abc", 3), ("abcd", 3), ("ééé", 3), ("éééé", 3), ("", 0)] {
            assert_eq!(
                exceeds(text, max),
                chars(text, max) != text,
                "{text:?} {max}"
            );
        }
    }

    #[test]
    fn tiny_limit_hard_cut() {
        assert_eq!(chars("abcdefghijklmnopqrstuvwxyz", 3), "abc");
    }
}

//! Text for people (the CLI's log and status, the stderr log, the site
//! check): what chargers and peers send may hold control characters and
//! bidirectional overrides that would move the cursor, clear the screen,
//! retitle the window or forge a log line. They are shown escaped.

use std::borrow::Cow;

/// Whether `c` could change what a terminal or a log viewer shows beyond
/// printing itself.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// `s` with every control character and bidirectional override written
/// as `\u{..}`; borrowed unchanged when there is none (the usual case).
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_forged_lines_are_shown_not_obeyed() {
        assert!(matches!(printable("CP-1 Charging"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\u{1b}]0;pwned\u{7}b"),
            "a\\u{1b}]0;pwned\\u{7}b"
        );
        assert_eq!(
            printable("ok\n2030-01-01 WARN forged"),
            "ok\\u{a}2030-01-01 WARN forged"
        );
        assert_eq!(printable("abc\u{202E}gpj.exe"), "abc\\u{202e}gpj.exe");
        assert_eq!(printable("Café ⚡"), "Café ⚡", "ordinary Unicode stays");
    }
}

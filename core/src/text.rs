//! The one sanitiser for text that came from outside (a router's HTTP reason or message, a gateway's
//! error payload, a ticket's unknown field name, a parser's complaint about peer input) on its way to a
//! terminal or a log.
//!
//! Why one function: a hostile router or gateway controls these strings. Printed raw, an escape
//! sequence can rewrite the user's screen, a carriage return can overwrite the line before it, and an
//! embedded newline can forge a line ("pam-lite: session ended normally"). Every error `Display` that
//! carries outside text, and the CLI's last line, go through [`sanitize`], so a new error type cannot
//! forget a case that the others handle.

/// Longest sanitised text, in characters (before the `…` marker). Long enough for any real router
/// message, short enough that a 1 MiB body cannot flood the terminal.
pub const MAX_CHARS: usize = 400;

/// `s` made safe for one terminal line: every control character (C0, DEL, C1, including `\n`, `\r`,
/// `\t` and ESC) is shown as a `\u{..}`-style escape (`\n`, `\r`, `\t` as themselves, escaped), bidi
/// overrides too, and the result is cut to [`MAX_CHARS`] characters with a trailing `…`.
pub fn sanitize(s: &str) -> String {
    sanitize_max(s, MAX_CHARS)
}

/// [`sanitize`] with an explicit cap (the CLI's final line allows a longer, composed message).
pub fn sanitize_max(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 2));
    for (shown, c) in s.chars().enumerate() {
        if shown >= max_chars {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Control characters and the Unicode format characters that reorder or hide text on screen.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' // zero-width and directional marks
            | '\u{2028}' | '\u{2029}' // line / paragraph separators (a "newline" for some terminals)
            | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_run() {
        let s = sanitize("\u{1b}[2J\u{1b}]0;owned\u{7}red");
        assert!(!s.contains('\u{1b}'));
        assert!(!s.contains('\u{7}'));
        assert_eq!(s, "\\u{1b}[2J\\u{1b}]0;owned\\u{7}red");
    }

    #[test]
    fn carriage_returns_and_fake_lines_stay_on_one_line() {
        let s = sanitize("bad\rpam-lite: ok\nsession ended normally\u{2028}x\u{85}y");
        assert!(!s.contains(['\r', '\n', '\u{2028}', '\u{85}']));
        assert_eq!(
            s,
            "bad\\rpam-lite: ok\\nsession ended normally\\u{2028}x\\u{85}y"
        );
    }

    #[test]
    fn bidi_overrides_are_escaped() {
        assert_eq!(sanitize("a\u{202e}b"), "a\\u{202e}b");
    }

    #[test]
    fn length_is_capped() {
        let long = "x".repeat(1 << 20);
        let s = sanitize(&long);
        assert_eq!(s.chars().count(), MAX_CHARS + 1);
        assert!(s.ends_with('…'));
        assert_eq!(sanitize_max("abcdef", 3), "abc…");
        assert_eq!(sanitize_max("abc", 3), "abc");
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        let s = "429: error: Too Many Requests, message: slow down — ünïcode ok";
        assert_eq!(sanitize(s), s);
    }
}

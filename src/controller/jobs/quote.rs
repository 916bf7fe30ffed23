//! Text from outside the controller as its status quotes it: a site's log, kubelet's and the Job
//! controller's messages (which carry image names, a registry's answer, an admission webhook's
//! words). On one line, without terminal escape sequences (Deno colours its errors) and with other
//! control characters as spaces, so that `kubectl describe` prints the quote as text.

/// `text` on one line: escape sequences left out, control characters and runs of whitespace
/// as one space.
pub fn one_line(text: &str) -> String {
    let printable: String = without_escapes(text)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    printable.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The last `max` bytes of `line` (whole characters), after `…` when some were left out.
pub fn tail(line: &str, max: usize) -> String {
    let mut start = line.len().saturating_sub(max);
    while !line.is_char_boundary(start) {
        start += 1;
    }
    match start {
        0 => line.to_owned(),
        _ => format!("…{}", &line[start..]),
    }
}

/// `text` without its escape sequences: CSI (`ESC [` parameters, intermediates, a final byte:
/// colours, cursor moves), OSC and the other string sequences (`ESC ]` … `BEL` or `ESC \`), and
/// two-character ones. An unfinished sequence at the end is dropped.
fn without_escapes(text: &str) -> impl Iterator<Item = char> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || {
        loop {
            let c = chars.next()?;
            if c != '\u{1b}' {
                return Some(c);
            }
            match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, up to the final byte.
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_of_text_without_escapes() {
        assert_eq!(
            one_line("\u{1b}]0;owned\u{7}\u{1b}[2Jgone\r\n  \u{1b}[31mred\u{1b}[0m\tdone\u{1b}[3"),
            "gone red done"
        );
        assert_eq!(one_line("\u{1b}P+q\u{1b}\\a\u{1b}=b"), "ab");
        assert_eq!(one_line(" \n "), "");
    }

    #[test]
    fn the_tail_keeps_whole_characters() {
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("abcdef", 3), "…def");
        assert_eq!(tail("aé", 1), "…");
        assert_eq!(tail("aé", 2), "…é");
    }
}

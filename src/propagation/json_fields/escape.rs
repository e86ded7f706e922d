//! JSON string escaping (for the members the codec writes) and unescaping (for the names and
//! values it reads).

/// The length of `value` as a JSON string, quotes included.
pub(super) fn escaped_len(value: &str) -> Option<usize> {
    value.bytes().try_fold(2usize, |len, byte| {
        len.checked_add(match byte {
            b'"' | b'\\' | 0x08 | 0x0C | b'\n' | b'\r' | b'\t' => 2,
            0x00..=0x1F => 6,
            _ => 1,
        })
    })
}

/// Writes `value` as a JSON string: `"` and `\` and control characters escaped, everything else
/// (`/` and non-ASCII included) as is.
pub(super) fn write_string(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut run = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let short = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0C => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x00..=0x1F => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..at]);
        run = at + 1;
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(&[
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xF)],
            ]);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// The characters of the raw text of a validated JSON string, unescaped.
pub(super) struct Unescape<'a> {
    raw: &'a str,
}

impl<'a> Unescape<'a> {
    pub(super) fn new(raw: &'a str) -> Self {
        Self { raw }
    }
}

impl Iterator for Unescape<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        let first = self.raw.chars().next()?;
        let (c, used) = if first != '\\' {
            (first, first.len_utf8())
        } else {
            let bytes = self.raw.as_bytes();
            match bytes.get(1) {
                Some(b'"') => ('"', 2),
                Some(b'\\') => ('\\', 2),
                Some(b'/') => ('/', 2),
                Some(b'b') => ('\u{8}', 2),
                Some(b'f') => ('\u{C}', 2),
                Some(b'n') => ('\n', 2),
                Some(b'r') => ('\r', 2),
                Some(b't') => ('\t', 2),
                Some(b'u') => match hex4(bytes, 2) {
                    Ok(high @ 0xD800..=0xDBFF) if bytes.get(6..8) == Some(b"\\u") => {
                        match hex4(bytes, 8) {
                            Ok(low @ 0xDC00..=0xDFFF) => {
                                let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                                (char::from_u32(code).unwrap_or('\u{FFFD}'), 12)
                            }
                            _ => ('\u{FFFD}', 6),
                        }
                    }
                    Ok(code) => (char::from_u32(code).unwrap_or('\u{FFFD}'), 6),
                    Err(_) => ('\u{FFFD}', 2),
                },
                // Unreachable for validated strings.
                _ => ('\u{FFFD}', 1),
            }
        };
        self.raw = self.raw.get(used..).unwrap_or("");
        Some(c)
    }
}

/// The four hex digits at `at`, or the offset of the first byte that is not one.
pub(super) fn hex4(buf: &[u8], at: usize) -> Result<u32, usize> {
    let mut value = 0;
    for offset in at..at + 4 {
        let digit = buf
            .get(offset)
            .and_then(|&byte| char::from(byte).to_digit(16))
            .ok_or(offset)?;
        value = value << 4 | digit;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescape(raw: &str) -> String {
        Unescape::new(raw).collect()
    }

    #[test]
    fn unescapes_every_escape() {
        assert_eq!(unescape(r#"a\"b\\c\/d"#), "a\"b\\c/d");
        assert_eq!(unescape(r"\b\f\n\r\t"), "\u{8}\u{C}\n\r\t");
        assert_eq!(unescape(r"trace\u0070arent"), "traceparent");
        assert_eq!(unescape(r"\u00e9\u4E2D"), "é中");
        assert_eq!(unescape(r"x\ud83d\ude00y"), "x😀y");
        assert_eq!(unescape("plain é"), "plain é");
    }

    #[test]
    fn escapes_what_json_requires() {
        let mut out = Vec::new();
        write_string(&mut out, "a\"b\\c/d\u{0}\u{1f}\n\té\u{7f}");
        assert_eq!(out, br#""a\"b\\c/d\u0000\u001f\n\t"#.iter().chain("é\u{7f}\"".as_bytes()).copied().collect::<Vec<_>>());
        let value = "q\"\\\u{1}\u{8}x";
        let mut out = Vec::new();
        write_string(&mut out, value);
        assert_eq!(escaped_len(value), Some(out.len()));
    }
}

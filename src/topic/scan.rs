//! Byte scans used by matching and validation, eight bytes at a time (SWAR: SIMD within a
//! register, in safe code).
//!
//! The bytes of interest (`/`, `+`, `#`, U+0000) are ASCII, and ASCII bytes never occur inside a
//! multi-byte UTF-8 sequence, so scanning bytes of a `&str` is exact.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `v` that is zero.
///
/// Bytes above the first zero byte may be reported falsely (borrows), but the lowest set bit is
/// always exact, which is all the callers use.
#[inline]
const fn zero_bytes(v: u64) -> u64 {
    v.wrapping_sub(LO) & !v & HI
}

/// Lowest-bit-exact mask of the bytes that are U+0000, `+` or `#`.
///
/// `#` is 0x23 and `+` is 0x2B: they differ only in bit 3, and no other byte becomes 0x2B once
/// bit 3 is set.
#[inline]
const fn special_bytes(v: u64) -> u64 {
    zero_bytes(v) | zero_bytes((v | (LO * 0x08)) ^ (LO * 0x2B))
}

/// Like [`special_bytes`], also marking `/`.
#[inline]
const fn special_or_slash_bytes(v: u64) -> u64 {
    special_bytes(v) | zero_bytes(v ^ (LO * b'/' as u64))
}

/// Index of the first byte (in memory order) marked in `mask`.
#[inline]
fn first_marked(mask: u64) -> usize {
    (mask.trailing_zeros() / 8) as usize
}

/// Loads eight bytes little-endian (first byte in memory lowest). `chunk` has length 8.
#[inline]
fn load(chunk: &[u8]) -> u64 {
    let mut word = [0_u8; 8];
    word.copy_from_slice(chunk);
    u64::from_le_bytes(word)
}

/// Whether `b` is U+0000, `+` or `#`: a byte a topic name may not contain.
#[inline]
pub(super) const fn is_special(b: u8) -> bool {
    matches!(b, 0 | b'+' | b'#')
}

/// Index of the first byte of `bytes` marked by `marks`, eight bytes at a time.
///
/// When the length is not a multiple of eight, the last word is loaded so that it ends at the end
/// of `bytes`, overlapping bytes already known to be unmarked; shorter inputs go byte by byte.
#[inline]
fn find_marked(bytes: &[u8], marks: fn(u64) -> u64, is_marked: fn(u8) -> bool) -> Option<usize> {
    let len = bytes.len();
    if len < 8 {
        return bytes.iter().position(|&b| is_marked(b));
    }
    let mut i = 0;
    while i + 8 <= len {
        let mask = marks(load(&bytes[i..i + 8]));
        if mask != 0 {
            return Some(i + first_marked(mask));
        }
        i += 8;
    }
    if i < len {
        let start = len - 8;
        let mask = marks(load(&bytes[start..]));
        if mask != 0 {
            return Some(start + first_marked(mask));
        }
    }
    None
}

/// Index of the first U+0000, `+` or `#` in `bytes`.
#[inline]
pub(super) fn find_special(bytes: &[u8]) -> Option<usize> {
    find_marked(bytes, special_bytes, is_special)
}

/// Index of the first `/`, U+0000, `+` or `#` in `bytes`.
#[inline]
pub(super) fn find_special_or_slash(bytes: &[u8]) -> Option<usize> {
    find_marked(bytes, special_or_slash_bytes, |b| {
        b == b'/' || is_special(b)
    })
}

/// Length of the common prefix of `a` and `b`, or `None` if that prefix contains U+0000, `+` or
/// `#`.
#[inline]
pub(super) fn common_prefix_without_special(a: &[u8], b: &[u8]) -> Option<usize> {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    if n < 8 {
        let mut i = 0;
        while i < n && a[i] == b[i] {
            if is_special(a[i]) {
                return None;
            }
            i += 1;
        }
        return Some(i);
    }
    // Compares the words at `start`; `Err(result)` when the prefix ends (or fails) in them.
    let word = |start: usize| -> Result<(), Option<usize>> {
        let x = load(&a[start..start + 8]);
        let equal_len = first_marked(x ^ load(&b[start..start + 8])); // 8 when equal
        let special = special_bytes(x);
        if special != 0 && first_marked(special) < equal_len {
            return Err(None);
        }
        if equal_len < 8 {
            return Err(Some(start + equal_len));
        }
        Ok(())
    };
    let mut i = 0;
    while i + 8 <= n {
        if let Err(result) = word(i) {
            return result;
        }
        i += 8;
    }
    if i < n {
        // Overlapping last word: its first bytes are known equal and not special.
        if let Err(result) = word(n - 8) {
            return result;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_special(bytes: &[u8]) -> Option<usize> {
        bytes.iter().position(|&b| is_special(b))
    }

    #[test]
    fn scans_agree_with_naive_loops() {
        let alphabet = [
            b'a',
            b'/',
            b'+',
            b'#',
            0,
            0x23 ^ 0x08,
            0x80,
            0xFF,
            0x01,
            b'$',
        ];
        // every position for every interesting byte, in strings of several lengths
        for len in 0..20 {
            for pos in 0..len {
                for &b in &alphabet {
                    let mut v = vec![b'x'; len];
                    v[pos] = b;
                    assert_eq!(find_special(&v), naive_special(&v), "{v:?}");
                    assert_eq!(
                        find_special_or_slash(&v),
                        v.iter().position(|&c| c == b'/' || is_special(c)),
                        "{v:?}"
                    );
                    let mut w = v.clone();
                    for cut in 0..=len {
                        w.truncate(cut);
                        let naive = {
                            let p = v.iter().zip(&w).take_while(|(x, y)| x == y).count();
                            if naive_special(&v[..p]).is_some() {
                                None
                            } else {
                                Some(p)
                            }
                        };
                        assert_eq!(common_prefix_without_special(&v, &w), naive);
                    }
                    let mut z = vec![b'x'; len];
                    z[len - 1] = b'y';
                    let p = v.iter().zip(&z).take_while(|(x, y)| x == y).count();
                    let naive = naive_special(&v[..p]).map_or(Some(p), |_| None);
                    assert_eq!(common_prefix_without_special(&v, &z), naive, "{v:?} {z:?}");
                }
            }
        }
    }
}

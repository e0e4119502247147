//! GPT-2's byte ↔ unicode map: byte-level BPE vocabularies spell every byte as one printable
//! character. Bytes `!`..=`~`, `¡`..=`¬` and `®`..=`ÿ` stand for themselves; the other 68 bytes
//! (controls, space, DEL, NBSP, soft hyphen, ...) map in byte order to U+0100, U+0101, ...

/// The character that spells `byte` in a byte-level vocabulary.
pub(crate) const fn byte_to_char(byte: u8) -> char {
    let b = byte as u32;
    if is_self_mapped(byte) {
        return byte as char;
    }
    // Count the non-self-mapped bytes below `byte`: that is its offset from U+0100.
    let mut offset = 0u32;
    let mut i = 0u32;
    while i < b {
        if !is_self_mapped(i as u8) {
            offset += 1;
        }
        i += 1;
    }
    // 0x100 + offset stays below U+0144: always a valid scalar value.
    match char::from_u32(0x100 + offset) {
        Some(c) => c,
        None => '\u{FFFD}',
    }
}

const fn is_self_mapped(byte: u8) -> bool {
    matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Lookup table from code point (below U+0144) back to the byte it spells.
const REVERSE: [i16; 0x144] = {
    let mut table = [-1i16; 0x144];
    let mut b = 0usize;
    while b < 256 {
        let c = byte_to_char(b as u8) as usize;
        table[c] = b as i16;
        b += 1;
    }
    table
};

/// The byte that `c` spells, if it is one of the 256 byte characters.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as usize;
    if cp < REVERSE.len() && REVERSE[cp] >= 0 {
        Some(REVERSE[cp] as u8)
    } else {
        None
    }
}

/// Appends the raw bytes a byte-level token spells. A character outside the map (never seen in
/// real byte-level vocabularies) is kept as its own UTF-8.
pub(crate) fn decode_token_text(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_points_of_the_map() {
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(b' '), 'Ġ'); // U+0120
        assert_eq!(byte_to_char(b'\n'), 'Ċ'); // U+010A
        assert_eq!(byte_to_char(b'\t'), 'ĉ'); // U+0109
        assert_eq!(byte_to_char(0), '\u{100}');
        assert_eq!(byte_to_char(0x7F), '\u{121}');
        assert_eq!(byte_to_char(0xA0), '\u{142}');
        assert_eq!(byte_to_char(0xAD), '\u{143}');
        assert_eq!(byte_to_char(0xE9), 'é');
    }

    #[test]
    fn map_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c), "byte {b} maps to a duplicate {c:?}");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn decodes_token_text() {
        let mut out = Vec::new();
        decode_token_text("ĠhelloĊ", &mut out);
        assert_eq!(out, b" hello\n");
        out.clear();
        // "é" in UTF-8 is C3 A9, spelled "Ã©" in byte-level form.
        decode_token_text("Ã©", &mut out);
        assert_eq!(out, "é".as_bytes());
    }
}

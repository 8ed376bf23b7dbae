//! lib0 primitives (the encoding Yjs uses): variable-length unsigned integers and byte arrays.
//!
//! A reader distinguishes input that ended early ([`Short`]) from input that can never be valid.

/// The input ended before the value did; `needed` more bytes were expected at least.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short {
    /// How many more bytes the reader needs, at least.
    pub needed: usize,
}

/// Errors of the lib0 reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The input ended early.
    #[error("input ends {} bytes early", .0.needed)]
    Short(Short),
    /// A variable-length integer does not fit in 64 bits.
    #[error("variable-length integer overflows 64 bits")]
    VarIntOverflow,
    /// A string is not UTF-8.
    #[error("string is not valid UTF-8")]
    NotUtf8,
}

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads an unsigned LEB128 integer of at most 64 bits.
    pub fn read_var_u64(&mut self) -> Result<u64, ReadError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(ReadError::Short(Short { needed: 1 }));
            };
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(ReadError::VarIntOverflow);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
            if shift > 63 {
                return Err(ReadError::VarIntOverflow);
            }
        }
    }

    /// Reads a length-prefixed byte array, borrowing it from the input.
    pub fn read_var_bytes(&mut self) -> Result<&'a [u8], ReadError> {
        let len = self.read_var_u64()?;
        let rest = self.remaining();
        match usize::try_from(len) {
            Ok(len) if len <= rest => {
                let start = self.pos;
                self.pos += len;
                Ok(&self.buf[start..start + len])
            }
            _ => Err(ReadError::Short(Short {
                needed: usize::try_from(len)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(rest),
            })),
        }
    }

    /// Reads a length-prefixed UTF-8 string.
    pub fn read_var_str(&mut self) -> Result<&'a str, ReadError> {
        let bytes = self.read_var_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
    }
}

/// Appends `value` as an unsigned LEB128 integer.
pub fn write_var_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-prefixed byte array.
pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Number of bytes `value` takes as LEB128.
pub fn var_u64_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn var_u64_round_trips(v in any::<u64>()) {
            let mut out = Vec::new();
            write_var_u64(&mut out, v);
            prop_assert_eq!(out.len(), var_u64_len(v));
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.read_var_u64(), Ok(v));
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn var_bytes_round_trip(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            write_var_bytes(&mut out, &b);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.read_var_bytes(), Ok(&b[..]));
        }

        #[test]
        fn truncation_is_short_never_invalid(b in proptest::collection::vec(any::<u8>(), 1..300), cut in any::<prop::sample::Index>()) {
            let mut out = Vec::new();
            write_var_bytes(&mut out, &b);
            let cut = cut.index(out.len());
            let mut r = Reader::new(&out[..cut]);
            prop_assert!(matches!(r.read_var_bytes(), Err(ReadError::Short(_))));
        }
    }

    #[test]
    fn overlong_varints_are_invalid() {
        let mut r = Reader::new(&[0xff; 11]);
        assert_eq!(r.read_var_u64(), Err(ReadError::VarIntOverflow));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert_eq!(r.read_var_u64(), Err(ReadError::VarIntOverflow));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(r.read_var_u64(), Ok(u64::MAX));
    }

    #[test]
    fn absurd_lengths_are_short_without_allocating() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]);
        assert_eq!(
            r.read_var_bytes(),
            Err(ReadError::Short(Short {
                needed: 0xffff_ffff - 2
            }))
        );
    }
}

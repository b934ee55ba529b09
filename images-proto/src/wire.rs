//! Protobuf wire format primitives over byte slices (bounds-checked; never
//! panics on hostile input).

pub const WT_VARINT: u8 = 0;
pub const WT_I64: u8 = 1;
pub const WT_LEN: u8 = 2;
pub const WT_I32: u8 = 5;

/// Error of the raw wire reader; the caller adds the location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    VarintTooLong,
    BadWireType(u8),
    ZeroFieldNumber,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated => write!(f, "truncated protobuf data"),
            WireError::VarintTooLong => write!(f, "varint longer than 10 bytes"),
            WireError::BadWireType(t) => write!(f, "unsupported wire type {t}"),
            WireError::ZeroFieldNumber => write!(f, "field number 0"),
        }
    }
}

/// A cursor over one message's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// One field occurrence as read off the wire.
#[derive(Debug, Clone, Copy)]
pub enum Raw<'a> {
    Varint(u64),
    I64(u64),
    I32(u32),
    Len(&'a [u8]),
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::VarintTooLong)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    pub fn fixed32(&mut self) -> Result<u32, WireError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub fn fixed64(&mut self) -> Result<u64, WireError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }

    /// Next (field number, value), or None at the end.
    pub fn field(&mut self) -> Result<Option<(u32, Raw<'a>)>, WireError> {
        if self.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wt = (key & 7) as u8;
        let num = u32::try_from(key >> 3).map_err(|_| WireError::BadWireType(wt))?;
        if num == 0 {
            return Err(WireError::ZeroFieldNumber);
        }
        let raw = match wt {
            WT_VARINT => Raw::Varint(self.varint()?),
            WT_I64 => Raw::I64(self.fixed64()?),
            WT_I32 => Raw::I32(self.fixed32()?),
            WT_LEN => {
                let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                Raw::Len(self.take(len)?)
            }
            other => return Err(WireError::BadWireType(other)),
        };
        Ok(Some((num, raw)))
    }
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_key(out: &mut Vec<u8>, num: u32, wt: u8) {
    put_varint(out, (u64::from(num) << 3) | u64::from(wt));
}

pub fn put_len(out: &mut Vec<u8>, num: u32, data: &[u8]) {
    put_key(out, num, WT_LEN);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

pub fn zigzag_decode(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub fn zigzag_encode(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(Reader::new(&b).varint().unwrap(), v);
        }
        assert_eq!(Reader::new(&[0x80]).varint(), Err(WireError::Truncated));
        assert_eq!(Reader::new(&[0xff; 11]).varint(), Err(WireError::VarintTooLong));
    }

    #[test]
    fn zigzag() {
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(zigzag_decode(zigzag_encode(v)), v);
        }
    }

    #[test]
    fn hostile_length() {
        // field 1, wire type 2, length 2^60
        let mut b = vec![0x0a];
        put_varint(&mut b, 1 << 60);
        assert_eq!(Reader::new(&b).field().unwrap_err(), WireError::Truncated);
    }
}

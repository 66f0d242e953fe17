//! A read cursor over untrusted bytes: every read either succeeds within the slice or returns
//! `None`, never panics and never reads out of bounds. The container reader (`codec`) and the
//! envelope reader (`buffers`) parse files and frames from outside through it, so a short or
//! lying input becomes an error value, whatever its bytes say.

/// Reads little-endian integers and byte runs from the front of a slice.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The next `n` bytes, or None (and nothing consumed) if fewer remain.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[byte]| byte)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// A count of items of `item_len` bytes each that must still fit in the input: a declared
    /// count can then size an allocation, since the input itself bounds it.
    pub fn count(&mut self, item_len: usize) -> Option<usize> {
        let count = usize::try_from(self.u32()?).ok()?;
        let needed = count.checked_mul(item_len)?;
        (needed <= self.bytes.len()).then_some(count)
    }

    /// Bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_without_consuming() {
        let mut cursor = Cursor::new(&[1, 0, 0, 0, 2]);
        assert_eq!(cursor.u32(), Some(1));
        assert_eq!(cursor.u32(), None);
        assert_eq!(cursor.u8(), Some(2));
        assert!(cursor.is_empty());
        assert_eq!(cursor.u64(), None);
    }

    #[test]
    fn counts_are_bounded_by_the_input() {
        let mut cursor = Cursor::new(&[2, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9]);
        assert_eq!(cursor.clone().count(4), Some(2));
        assert_eq!(cursor.clone().count(5), None);
        let mut huge = Cursor::new(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(huge.count(usize::MAX), None);
        assert_eq!(cursor.count(8), None);
    }
}

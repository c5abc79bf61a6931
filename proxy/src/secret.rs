//! Comparing a presented secret (the admin token, a header secret) with the
//! expected one without the answer's timing telling how much of it matched.

use subtle::ConstantTimeEq;

/// Whether `presented` equals `expected`, in time that depends on their
/// lengths only, not on where they first differ. The length is not secret:
/// a different length is refused at once.
pub fn matches(expected: &[u8], presented: &[u8]) -> bool {
    expected.len() == presented.len() && bool::from(expected.ct_eq(presented))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_bytes_match() {
        assert!(matches(b"s3cret", b"s3cret"));
        assert!(!matches(b"s3cret", b"s3creT"), "last byte differs");
        assert!(!matches(b"s3cret", b"X3cret"), "first byte differs");
        assert!(!matches(b"s3cret", b"s3cre"), "a prefix");
        assert!(!matches(b"s3cret", b"s3crets"), "an extension");
        assert!(!matches(b"s3cret", b""));
        assert!(matches(b"", b""));
    }
}

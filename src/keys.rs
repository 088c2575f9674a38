//! Object keys from untrusted input: the rules that keep every write inside the store root.

use std::fmt;

use object_store::path::Path;
use percent_encoding::percent_decode_str;

/// The longest key accepted, in bytes; S3's own limit.
pub const MAX_KEY_BYTES: usize = 1024;

/// A key that passed every rule in [`ObjectKey::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey(Path);

/// Why a key was refused. The text is shown to the client as-is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} bytes long; at most {MAX_KEY_BYTES} are allowed")]
    TooLong(usize),
    #[error("must not start with '/'")]
    Absolute,
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must not contain a backslash")]
    Backslash,
    #[error("must not contain a '.' or '..' segment, also not percent-encoded")]
    DotSegment,
    #[error("is not a valid object path: {0}")]
    Invalid(String),
}

impl ObjectKey {
    /// Validates a client-supplied key.
    ///
    /// The rules are stricter than `Path::parse` on purpose: a key is also refused when
    /// its percent-decoded form would be unsafe, because some stores and tools decode
    /// keys before touching a file system, and a key that means `..` to any of them
    /// must never reach one.
    pub fn parse(raw: &str) -> Result<Self, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        if raw.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong(raw.len()));
        }
        let decoded = percent_decode_str(raw).decode_utf8_lossy();
        for form in [raw, decoded.as_ref()] {
            if form.starts_with('/') {
                return Err(KeyError::Absolute);
            }
            if form.chars().any(char::is_control) {
                return Err(KeyError::ControlCharacter);
            }
            if form.contains('\\') {
                return Err(KeyError::Backslash);
            }
            if form.split('/').any(|segment| segment == "." || segment == "..") {
                return Err(KeyError::DotSegment);
            }
        }
        let path = Path::parse(raw).map_err(|error| KeyError::Invalid(error.to_string()))?;
        // `Path::parse` strips one trailing slash; a key that names a directory is not a key.
        if path.as_ref() != raw {
            return Err(KeyError::Invalid("must not end with '/'".to_owned()));
        }
        Ok(Self(path))
    }

    /// The validated path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_are_accepted() {
        for key in ["a", "a/b/c.json", "reports/2026/11/x y.json", "ünïcödé/ok"] {
            assert_eq!(ObjectKey::parse(key).map(|k| k.to_string()), Ok(key.to_owned()));
        }
    }

    #[test]
    fn escaping_keys_are_refused() {
        let cases = [
            ("", KeyError::Empty),
            ("../x", KeyError::DotSegment),
            ("a/../../x", KeyError::DotSegment),
            ("./x", KeyError::DotSegment),
            ("/etc/x", KeyError::Absolute),
            ("%2e%2e/x", KeyError::DotSegment),
            ("a/%2E%2E/%2e%2e/x", KeyError::DotSegment),
            ("%2fetc/x", KeyError::Absolute),
            ("..\\x", KeyError::Backslash),
            ("a%5c..%5cx", KeyError::Backslash),
            ("a\u{0}b", KeyError::ControlCharacter),
            ("a%0ab", KeyError::ControlCharacter),
        ];
        for (key, expected) in cases {
            assert_eq!(ObjectKey::parse(key), Err(expected), "key {key:?}");
        }
        assert!(matches!(ObjectKey::parse("a//b"), Err(KeyError::Invalid(_))));
        assert!(matches!(ObjectKey::parse("a/"), Err(KeyError::Invalid(_))));
        assert_eq!(ObjectKey::parse(&"k".repeat(MAX_KEY_BYTES + 1)), Err(KeyError::TooLong(MAX_KEY_BYTES + 1)));
    }
}

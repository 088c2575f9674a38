//! An upload's user metadata: read into a bounded map, and checked against the rules S3
//! applies to `x-amz-meta-*` headers.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::kinds::{FieldProblem, field_problem};

/// The most user metadata entries an upload may carry.
const MAX_METADATA_ENTRIES: usize = 32;
/// The most bytes of user metadata, keys and values together: S3's limit is 2 KiB.
const MAX_METADATA_BYTES: usize = 2048;

/// An upload's `metadata` as it is read: a map that stops at the first entry past
/// [`MAX_METADATA_ENTRIES`], so that a body of many tiny entries is refused at about its
/// own size instead of first becoming a map of a million strings.
#[derive(Debug, Default)]
pub(super) struct Metadata(pub(super) std::collections::BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoundedMap;
        impl<'de> Visitor<'de> for BoundedMap {
            type Value = Metadata;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "an object of at most {MAX_METADATA_ENTRIES} string entries")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut entries = std::collections::BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if entries.len() == MAX_METADATA_ENTRIES {
                        return Err(de::Error::custom(format!("has more than {MAX_METADATA_ENTRIES} entries")));
                    }
                    let value = map.next_value::<String>()?;
                    entries.insert(name, value);
                }
                Ok(Metadata(entries))
            }
        }
        deserializer.deserialize_map(BoundedMap)
    }
}

/// User metadata rules: few short entries of header-safe names and printable values, as
/// S3 accepts them.
pub(super) fn check_metadata(metadata: &std::collections::BTreeMap<String, String>) -> Result<(), FieldProblem> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(field_problem("metadata", format!("has more than {MAX_METADATA_ENTRIES} entries")));
    }
    let total: usize = metadata.iter().map(|(name, value)| name.len() + value.len()).sum();
    if total > MAX_METADATA_BYTES {
        return Err(field_problem("metadata", format!("is larger than {MAX_METADATA_BYTES} bytes")));
    }
    for (name, value) in metadata {
        let valid_name = !name.is_empty()
            && name.len() <= 128
            && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !valid_name {
            return Err(field_problem(&format!("metadata.{name}"), "names are 1-128 letters, digits, '-' or '_'"));
        }
        if !value.bytes().all(|byte| (0x20..0x7f).contains(&byte)) {
            return Err(field_problem(&format!("metadata.{name}"), "values are printable ASCII"));
        }
    }
    Ok(())
}

//! Encodings of binary fields in the JSON wire format.
//!
//! Binary fields are written as base64 (standard alphabet, padded) and read from base64 or from
//! the original API's arrays of byte values (`[72, 101, ...]`). Hex fields (the original API's
//! `pq`, `fingerprint`, `g_b`) are written and read as hex.

use std::fmt;

use base64::Engine as _;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Encodes bytes as standard padded base64.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes standard base64, accepting missing padding and the URL-safe alphabet too.
///
/// # Errors
/// `None` when the text is not base64.
pub fn from_b64(text: &str) -> Option<Vec<u8>> {
    let t = text.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
        .ok()
}

/// A binary field: base64 on output; base64 or an array of byte values on input.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string or an array of byte values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                from_b64(v).map(Bytes).ok_or_else(|| E::custom("invalid base64"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Bytes(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A binary field written and read as hex (upper or lower case on input).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Hex(pub Vec<u8>);

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hex({})", hex::encode(&self.0))
    }
}

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(s.as_ref())
            .map(Hex)
            .map_err(|_| de::Error::custom("invalid hex"))
    }
}

/// Serde helpers for a public 32-byte value (a public key) as base64:
/// `#[serde(with = "crate::wire::b64_32")]`.
pub(crate) mod b64_32 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::b64(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::from_b64(&text)
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| de::Error::custom("32 bytes of base64"))
    }
}

/// Serde helpers for a 64-byte signature as base64.
pub(crate) mod b64_64 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::b64(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::from_b64(&text)
            .and_then(|v| <[u8; 64]>::try_from(v).ok())
            .ok_or_else(|| de::Error::custom("64 bytes of base64"))
    }
}

/// Fixed-length conversion of a decoded field.
///
/// # Errors
/// [`crate::Malformed`] naming `field` when the length is wrong.
pub fn fixed<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], crate::Malformed> {
    bytes.try_into().map_err(|_| crate::Malformed {
        field,
        reason: "wrong length",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_accept_arrays_and_base64() {
        let a: Bytes = serde_json::from_str("[72, 101, 108]").unwrap();
        let b: Bytes = serde_json::from_str("\"SGVs\"").unwrap();
        assert_eq!(a, b);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"SGVs\"");
        assert!(serde_json::from_str::<Bytes>("[256]").is_err());
        assert!(serde_json::from_str::<Bytes>("\"***\"").is_err());
        assert!(serde_json::from_str::<Bytes>("12").is_err());
        let h: Hex = serde_json::from_str("\"0A0b\"").unwrap();
        assert_eq!(h.0, vec![10, 11]);
        assert!(serde_json::from_str::<Hex>("\"0g\"").is_err());
    }
}

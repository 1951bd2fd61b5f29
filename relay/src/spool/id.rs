//! Message ids: 128 bits, time-ordered, shown as 26 characters of Crockford base32 (like a ULID).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Identifies a queued message; also the `queued as` id clients see.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(u128);

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl MessageId {
    /// A new id: 48 bits of Unix milliseconds, 16 bits of a process-wide sequence, 64 random bits.
    pub fn generate() -> MessageId {
        let ms = u128::from(super::now_ms()) & ((1 << 48) - 1);
        let seq = u128::from(SEQUENCE.fetch_add(1, Ordering::Relaxed) & 0xffff);
        let random = u128::from(rand::random::<u64>());
        MessageId(ms << 80 | seq << 64 | random)
    }

    /// The 16-byte big-endian key used in the spool.
    pub fn key(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Reads a spool key back.
    pub fn from_key(key: &[u8]) -> Option<MessageId> {
        Some(MessageId(u128::from_be_bytes(key.try_into().ok()?)))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 125 - 5 * i as i32;
            let bits = if shift >= 0 {
                (self.0 >> shift) & 31
            } else {
                (self.0 << -shift) & 31
            };
            *slot = ALPHABET[bits as usize];
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MessageId {
    type Err = String;

    fn from_str(s: &str) -> Result<MessageId, String> {
        if s.len() != 26 {
            return Err(format!("\"{s}\" is not a message id (26 characters)"));
        }
        let mut value: u128 = 0;
        for (i, c) in s.bytes().enumerate() {
            let digit = ALPHABET
                .iter()
                .position(|a| *a == c.to_ascii_uppercase())
                .ok_or_else(|| format!("\"{s}\" is not a message id"))?
                as u128;
            let shift = 125 - 5 * i as i32;
            value |= if shift >= 0 {
                digit << shift
            } else {
                digit >> -shift
            };
        }
        Ok(MessageId(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text_and_key() {
        for _ in 0..100 {
            let id = MessageId::generate();
            let text = id.to_string();
            assert_eq!(text.len(), 26);
            assert_eq!(text.parse::<MessageId>(), Ok(id));
            assert_eq!(MessageId::from_key(&id.key()), Some(id));
        }
    }

    #[test]
    fn ids_are_unique_and_sort_by_time() {
        let a = MessageId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = MessageId::generate();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }
}

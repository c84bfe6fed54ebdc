//! Key bytes as a type: a [`Secret`] prints nothing of itself (`Debug` shows only that it is
//! one), so deriving `Debug` over a holder never puts a key in a log line or a panic message.
//! Its bytes are reached by [`Secret::expose`], named so a reader sees where they leave.

/// Secret bytes: a signing key, a password read from the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// The key bytes themselves, for the code that signs, verifies or masks with them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
}

impl From<&[u8]> for Secret {
    fn from(bytes: &[u8]) -> Self {
        Secret(bytes.to_vec())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_none_of_the_bytes_not_even_their_length() {
        let secret = Secret::new(b"hunter2-hunter2-hunter2-hunter2-0".to_vec());
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert_eq!(format!("{:?}", Secret::default()), "Secret(..)");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            keys: Vec<Secret>,
        }
        let shown = format!(
            "{:#?}",
            Holder {
                keys: vec![secret.clone()]
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("104"), "no byte values either: {shown}");
    }

    #[test]
    fn the_bytes_are_there_for_whoever_asks_by_name() {
        let secret = Secret::from(&b"abc"[..]);
        assert_eq!(secret.expose(), b"abc");
        assert_eq!(secret.len(), 3);
        assert!(!secret.is_empty());
        assert_eq!(secret, Secret::from(b"abc".to_vec()));
    }
}

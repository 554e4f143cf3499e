//! A wrapper for values that must never reach a terminal or a log: session tokens, seeds, passwords.
//!
//! Why a type and not discipline: `#[derive(Debug)]` on a struct that holds a token is one `{:?}` away
//! from printing it. [`Secret`] has no `Display`, its `Debug` says only how big the value is, and the only
//! way to the bytes is the explicit [`Secret::expose`].

use std::fmt;

/// A secret value. `Debug` prints `<redacted N bytes>`; there is no `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

/// How big a secret is, for redacted output ("a 32-byte seed" helps debugging, the bytes never do).
pub trait SecretLen {
    fn secret_len(&self) -> usize;
}

impl SecretLen for Vec<u8> {
    fn secret_len(&self) -> usize {
        self.len()
    }
}

impl SecretLen for String {
    fn secret_len(&self) -> usize {
        self.len()
    }
}

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret itself. Every call site is a place where the value leaves this wrapper on purpose.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: SecretLen> Secret<T> {
    /// `<redacted, N bytes>`: what user-facing output shows instead of the value.
    pub fn redacted(&self) -> String {
        format!("<redacted, {} bytes>", self.0.secret_len())
    }
}

impl<T: SecretLen> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new(b"hunter2-token".to_vec());
        let shown = format!("{s:?}");
        assert_eq!(shown, "<redacted, 13 bytes>");
        assert!(!shown.contains("hunter2"));
        let p = Secret::new("p4ssw0rd".to_string());
        assert!(!format!("{p:?}").contains("p4ssw0rd"));
        assert_eq!(p.expose(), "p4ssw0rd");
    }
}

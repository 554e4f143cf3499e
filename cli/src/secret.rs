//! A wrapper for values that must never reach a terminal or a log: session tokens, seeds, passwords.
//!
//! Why a type and not discipline: `#[derive(Debug)]` on a struct that holds a token is one `{:?}` away
//! from printing it. [`Secret`] has no `Display`, its `Debug` says only how big the value is, and the only
//! way to the bytes is the explicit [`Secret::expose`]. Its memory is wiped when it is dropped
//! ([`zeroize`]), so a freed ticket secret does not linger in the heap for a later dump or read.

use std::fmt;

/// A secret value. `Debug` prints `<redacted N bytes>`; there is no `Display`; dropped = zeroed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T: zeroize::Zeroize>(T);

impl<T: zeroize::Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

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

impl<T: zeroize::Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret itself. Every call site is a place where the value leaves this wrapper on purpose.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: SecretLen + zeroize::Zeroize> Secret<T> {
    /// `<redacted, N bytes>`: what user-facing output shows instead of the value.
    pub fn redacted(&self) -> String {
        format!("<redacted, {} bytes>", self.0.secret_len())
    }
}

impl<T: SecretLen + zeroize::Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Forbid core dumps for the whole process (`RLIMIT_CORE` 0) and make it non-dumpable
/// (`PR_SET_DUMPABLE` 0: no core, and other processes of the same user cannot ptrace or read
/// `/proc/<pid>/mem`). The CLI holds the session token, seed and target passwords for its whole life, so
/// this is done first thing in `main`. Best effort: a failure is logged at debug level, never fatal.
pub fn disable_core_dumps() {
    #[cfg(unix)]
    {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit reads a valid, initialised rlimit struct.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
        if rc != 0 {
            tracing::debug!("setrlimit(RLIMIT_CORE, 0) failed");
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: prctl with PR_SET_DUMPABLE takes plain integer arguments.
            let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
            if rc != 0 {
                tracing::debug!("prctl(PR_SET_DUMPABLE, 0) failed");
            }
        }
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

    #[test]
    fn core_dumps_are_off_after_disabling() {
        disable_core_dumps();
        #[cfg(unix)]
        {
            let mut lim = libc::rlimit {
                rlim_cur: 1,
                rlim_max: 1,
            };
            // SAFETY: getrlimit writes into a valid rlimit struct.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }, 0);
            assert_eq!((lim.rlim_cur, lim.rlim_max), (0, 0));
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: PR_GET_DUMPABLE takes no pointer.
            assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
        }
    }
}

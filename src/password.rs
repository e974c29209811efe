//! Charger passwords (OCPP Security Profiles 1 and 2): the rules they must
//! follow, how the config may hold them hashed, and a comparison that
//! takes the same time whatever is wrong.

use base64::Engine;

/// Prefix of a hashed password in the config.
pub const HASH_PREFIX: &str = "pbkdf2-sha256$";
const ITERATIONS: u32 = 100_000;

/// OCPP's rules: 1.6's AuthorizationKey is 16 to 20 bytes (set as up to 40
/// hex digits), 2.0.1's BasicAuthPassword 16 to 40 characters of
/// `a-z A-Z 0-9 * - _ = : + | @ .`. Both are accepted; anything shorter,
/// longer, outside that set or with fewer than 6 different characters is
/// refused.
pub fn check_strength(pw: &str) -> Result<(), WeakPassword> {
    let n = pw.len();
    if !(16..=40).contains(&n) {
        return Err(WeakPassword::Length(n));
    }
    if let Some(c) = pw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "*-_=:+|@.".contains(*c)))
    {
        return Err(WeakPassword::Character(c));
    }
    let distinct = pw.chars().collect::<std::collections::BTreeSet<_>>().len();
    if distinct < 6 {
        return Err(WeakPassword::Distinct(distinct));
    }
    Ok(())
}

/// Why a charger password is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    #[error("expected 16 to 40 characters (OCPP), found {0}")]
    Length(usize),
    #[error("expected only a-z A-Z 0-9 * - _ = : + | @ . (OCPP 2.0.1's set), found {0:?}")]
    Character(char),
    #[error("too weak: only {0} different characters")]
    Distinct(usize),
}

/// The operating system's random generator failed (it does not on Linux
/// with a seeded kernel; a secret is never made from a weaker source).
#[derive(Debug, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct RandomError;

/// `N` bytes from the operating system's cryptographic generator, for
/// secrets (salts, tokens).
pub fn random<const N: usize>() -> Result<[u8; N], RandomError> {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| RandomError)?;
    Ok(out)
}

/// Hash a password for the config (`chargegate hash-password`).
pub fn hash(pw: &str) -> Result<String, RandomError> {
    let salt: [u8; 16] = random()?;
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(ITERATIONS).expect("non-zero"),
        &salt,
        pw.as_bytes(),
        &mut out,
    );
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    Ok(format!(
        "{HASH_PREFIX}{ITERATIONS}${}${}",
        b64.encode(salt),
        b64.encode(out)
    ))
}

/// Whether a stored password (plain or hashed) is well formed.
pub fn parse_hash(stored: &str) -> Option<(u32, Vec<u8>, Vec<u8>)> {
    let rest = stored.strip_prefix(HASH_PREFIX)?;
    let mut parts = rest.split('$');
    let iterations: u32 = parts.next()?.parse().ok().filter(|n| *n >= 1000)?;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let salt = b64.decode(parts.next()?).ok()?;
    let hash = b64.decode(parts.next()?).ok().filter(|h| h.len() == 32)?;
    parts.next().is_none().then_some((iterations, salt, hash))
}

/// Compare what a charger sent with what the config holds.
pub fn verify(stored: &str, given: &[u8]) -> bool {
    match parse_hash(stored) {
        Some((iterations, salt, hash)) => ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations).expect("checked above"),
            &salt,
            given,
            &hash,
        )
        .is_ok(),
        None if stored.starts_with(HASH_PREFIX) => false,
        None => constant_time_eq(given, stored.as_bytes()),
    }
}

/// Compare without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(check_strength("0123456789abcdef").is_ok());
        assert!(
            check_strength("A1b2C3d4E5f6G7h8i9J0A1b2C3d4E5f6G7h8i9J0").is_ok(),
            "40 hex digits"
        );
        assert!(check_strength("short").is_err());
        assert!(
            check_strength("aaaaaaaaaaaaaaaaaaaa").is_err(),
            "one character repeated"
        );
        assert!(
            check_strength("abcabcabcabcabcabcab").is_err(),
            "three characters"
        );
        assert!(check_strength("with space 0123456789").is_err());
        assert!(check_strength(&"x1".repeat(21)).is_err(), "42 characters");
    }

    #[test]
    fn hashed_passwords_verify() {
        let h = hash("correct-horse-battery").unwrap();
        assert!(h.starts_with(HASH_PREFIX) && parse_hash(&h).is_some());
        assert!(verify(&h, b"correct-horse-battery"));
        assert!(!verify(&h, b"correct-horse-batterY"));
        assert_ne!(hash("correct-horse-battery").unwrap(), h, "salted");
        assert!(verify("plain-password-16", b"plain-password-16"));
        assert!(!verify("plain-password-16", b"plain-password-17"));
        assert!(
            !verify("pbkdf2-sha256$broken", b"pbkdf2-sha256$broken"),
            "a broken hash matches nothing"
        );
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"\xff"));
    }
}

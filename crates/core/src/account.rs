//! Account rules: what an email address and a password must look like. Pure functions, so the
//! server and the client SDK refuse the same inputs with the same words.

use std::fmt;
use thiserror::Error;

/// Passwords shorter than this many characters are refused.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longer passwords are refused so that hashing cost stays bounded.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Frequently leaked passwords of at least [`MIN_PASSWORD_CHARS`] characters (shorter ones are
/// refused by length already). Compared case-insensitively.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// A syntactically valid email address, trimmed and lower-cased: the form stored and compared,
/// so `Ann@Example.org` and `ann@example.org` are one account.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EmailError {
    #[error("email address is empty")]
    Empty,
    #[error("email address is longer than 254 characters")]
    TooLong,
    #[error("email address must look like name@example.org")]
    Malformed,
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(EmailError::Empty);
        }
        if email.len() > 254 {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = email.rsplit_once('@').ok_or(EmailError::Malformed)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.contains('@')
            && local.chars().all(|c| !c.is_whitespace() && !c.is_control());
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if local_ok && domain_ok {
            Ok(Self(email))
        } else {
            Err(EmailError::Malformed)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds an email already validated when it was stored.
    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters long")]
    TooShort,
    #[error("password must be at most {MAX_PASSWORD_BYTES} bytes long")]
    TooLong,
    #[error("password is on a list of commonly used passwords; choose another")]
    Common,
    #[error("password must not be the email address")]
    SameAsEmail,
}

/// Checks a new password against the policy: long enough, not absurdly long, not a well-known
/// password, not the account's own email address.
pub fn check_new_password(password: &str, email: Option<&Email>) -> Result<(), PasswordError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    let lowered = password.to_lowercase();
    if is_common(&lowered) {
        return Err(PasswordError::Common);
    }
    if let Some(email) = email {
        let local = email.as_str().split('@').next().unwrap_or_default();
        if lowered == email.as_str() || lowered == local {
            return Err(PasswordError::SameAsEmail);
        }
    }
    Ok(())
}

fn is_common(lowered: &str) -> bool {
    // One character repeated is as weak as anything on the list.
    let mut chars = lowered.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return true;
    }
    COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .any(|line| !line.is_empty() && !line.starts_with('#') && line == lowered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised_to_lower_case() {
        let email = Email::parse("  Ann.Lee+chat@Example.ORG ").expect("valid");
        assert_eq!(email.as_str(), "ann.lee+chat@example.org");
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.org",
            "ann@example",
            "ann@.org",
            "a b@example.org",
            "ann@exa mple.org",
            "ann@-x.org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn short_and_common_passwords_are_refused() {
        assert_eq!(check_new_password("short", None), Err(PasswordError::TooShort));
        assert_eq!(check_new_password("1234567890", None), Err(PasswordError::Common));
        assert_eq!(check_new_password("QwertyUiop", None), Err(PasswordError::Common));
        assert_eq!(
            check_new_password("zzzzzzzzzzzz", None),
            Err(PasswordError::Common)
        );
        assert_eq!(
            check_new_password(&"x".repeat(2000), None),
            Err(PasswordError::TooLong)
        );
    }

    #[test]
    fn password_equal_to_the_email_is_refused() {
        let email = Email::parse("longname.person@example.org").expect("valid");
        assert_eq!(
            check_new_password("LongName.Person", Some(&email)),
            Err(PasswordError::SameAsEmail)
        );
    }

    #[test]
    fn a_reasonable_password_passes() {
        assert_eq!(check_new_password("correct horse battery", None), Ok(()));
        // Length counts characters, not bytes.
        assert_eq!(check_new_password("пароль-очень", None), Ok(()));
    }
}

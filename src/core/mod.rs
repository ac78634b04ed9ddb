//! Core data shared with the platform: tenants, API keys and their roles.
//!
//! Where it sits: beside the message flow. Domain values are parsed once at the edge ("parse,
//! don't validate") and carried as these types afterwards.

use std::fmt;

/// What an API key may do. `widget` keys are public (embedded in pages) and open only the widget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Creator,
    Moderator,
    Widget,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Creator => "creator",
            Role::Moderator => "moderator",
            Role::Widget => "widget",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Admin, Role::Creator, Role::Moderator, Role::Widget]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's slug: 2–63 characters of `a-z`, `0-9` and `-`, starting with a letter, not ending
/// with `-`. It appears in URLs and commands, so it is kept boring.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(s: &str) -> Result<TenantSlug, String> {
        let ok_len = (2..=63).contains(&s.len());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_ends = s.starts_with(|c: char| c.is_ascii_lowercase()) && !s.ends_with('-');
        if ok_len && ok_chars && ok_ends {
            Ok(TenantSlug(s.to_owned()))
        } else {
            Err(format!(
                "invalid tenant slug {s:?}: use 2-63 characters a-z, 0-9 and '-', starting with a letter"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_parsed_not_trusted() {
        for good in ["demo", "acme-coaching", "t2", "a-b-c"] {
            assert!(TenantSlug::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a",
            "Demo",
            "9lives",
            "trailing-",
            "sp ace",
            "ü-ber",
            &"x".repeat(64),
        ] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::Admin, Role::Creator, Role::Moderator, Role::Widget] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}

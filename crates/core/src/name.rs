//! Names and addresses: what a service name, an instance id, a tag and an
//! instance address may be.

use std::net::IpAddr;

/// Service names: 1–63 characters of `a-z0-9-._`, starting with a letter or
/// digit, so every name is a valid DNS label.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "service name must be 1-63 characters, got {}",
            name.len()
        ));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "service name {name:?} must start with a lowercase letter or digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!(
            "service name {name:?} contains {c:?}; use a-z, 0-9, '-', '.', '_'"
        ));
    }
    Ok(())
}

/// Instance ids: 1–128 characters of `A-Za-z0-9-._:`, starting with a
/// letter or digit (safe in URL paths and storage keys).
pub fn validate_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!(
            "instance id must be 1-128 characters, got {}",
            id.len()
        ));
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "instance id {id:?} must start with a letter or digit"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
    {
        return Err(format!(
            "instance id {id:?} contains {c:?}; use A-Z, a-z, 0-9, '-', '.', '_', ':'"
        ));
    }
    Ok(())
}

/// An instance address: an IPv4/IPv6 literal or an RFC 1123 host name.
pub fn validate_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("address must not be empty".into());
    }
    if addr.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    validate_hostname(addr)
        .map_err(|m| format!("address {addr:?} is neither an IP address nor a host name: {m}"))
}

/// RFC 1123 host name: dot-separated labels of 1–63 `A-Za-z0-9-`, not
/// starting or ending with '-', 253 characters at most; a trailing dot is allowed.
pub fn validate_hostname(host: &str) -> Result<(), String> {
    let h = host.strip_suffix('.').unwrap_or(host);
    if h.is_empty() || h.len() > 253 {
        return Err("a host name must be 1-253 characters".into());
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label must be 1-63 characters".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} must not start or end with '-'"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "label {label:?} may hold only letters, digits and '-'"
            ));
        }
    }
    // An all-numeric dotted name would be mistaken for a (bad) IPv4 address.
    if h.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err("looks like an IPv4 address but is not a valid one".into());
    }
    Ok(())
}

/// Tags: 1–255 printable characters without whitespace or ',' (they appear in
/// query strings and DNS names).
pub fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.len() > 255 {
        return Err("a tag must be 1-255 characters".into());
    }
    if tag
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err(format!(
            "tag {tag:?} must not contain whitespace, control characters or ','"
        ));
    }
    Ok(())
}

/// Meta keys: 1–128 characters of `A-Za-z0-9-_.`; values at most 4 KiB.
pub fn validate_meta_entry(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 128 {
        return Err("meta keys must be 1-128 characters".into());
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "meta key {key:?} may hold only A-Z, a-z, 0-9, '-', '_', '.'"
        ));
    }
    if value.len() > 4096 {
        return Err(format!("meta value of {key:?} is longer than 4096 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for ok in ["a", "payments", "web-1", "a.b_c", "9lives", &"a".repeat(63)] {
            assert!(validate_service_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "A",
            "web app",
            "wéb",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(validate_service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_ids() {
        for ok in ["a", "web-10.0.0.5-80", "X_1:2", "fe80--1"] {
            assert!(validate_instance_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ":a", "a/b", "a b", "a%2f", &"a".repeat(129)] {
            assert!(validate_instance_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "10.0.0.5",
            "::1",
            "2001:db8::1",
            "goliatodromo.local",
            "localhost",
            "a-b.example.com.",
        ] {
            assert!(validate_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "256.1.1.1",
            "1.2.3",
            "-a.com",
            "a..b",
            "a_b.com",
            "http://x",
            "a b",
            "[::1]",
        ] {
            assert!(validate_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_and_meta() {
        assert!(validate_tag("v2").is_ok());
        assert!(validate_tag("").is_err());
        assert!(validate_tag("a b").is_err());
        assert!(validate_tag("a,b").is_err());
        assert!(validate_meta_entry("version", "2.1.0").is_ok());
        assert!(validate_meta_entry("", "x").is_err());
        assert!(validate_meta_entry("a b", "x").is_err());
        assert!(validate_meta_entry("k", &"x".repeat(4097)).is_err());
    }
}

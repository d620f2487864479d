//! Reproducible instance ids: the same service, address and port always give
//! the same id, so a restarted instance replaces its old record.

/// `{service}-{address}-{port}`, with the address lower-cased and a trailing
/// dot dropped; when that exceeds the 128-character id limit, the address part
/// becomes a 64-bit FNV-1a hash in hex.
pub fn derive_instance_id(service: &str, address: &str, port: u16) -> String {
    let addr = address.trim_end_matches('.').to_ascii_lowercase();
    let readable = format!("{service}-{addr}-{port}");
    if readable.len() <= 128 {
        return readable;
    }
    format!("{service}-{:016x}-{port}", fnv1a(addr.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::validate_instance_id;

    #[test]
    fn same_inputs_same_id() {
        assert_eq!(derive_instance_id("web", "10.0.0.5", 80), "web-10.0.0.5-80");
        assert_eq!(
            derive_instance_id("web", "Host.Local.", 80),
            derive_instance_id("web", "host.local", 80)
        );
        assert_ne!(
            derive_instance_id("web", "10.0.0.5", 80),
            derive_instance_id("web", "10.0.0.5", 81)
        );
        assert_eq!(derive_instance_id("web", "::1", 80), "web-::1-80");
    }

    #[test]
    fn derived_ids_are_always_valid_ids() {
        let long_host = format!(
            "{}.example.com",
            ["a".repeat(63), "b".repeat(63), "c".repeat(63)].join(".")
        );
        for (svc, addr) in [
            ("web", "10.0.0.5"),
            ("a".repeat(63).as_str(), long_host.as_str()),
            ("x", "2001:db8::1"),
        ] {
            let id = derive_instance_id(svc, addr, 65535);
            assert!(validate_instance_id(&id).is_ok(), "{id}");
        }
    }
}

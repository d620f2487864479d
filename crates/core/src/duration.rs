//! Durations as the API accepts them: `"10s"`, `"1m30s"`, `"250ms"`, or an
//! integer number of milliseconds.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration with millisecond resolution, as written in requests and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub fn from_secs(s: u64) -> Self {
        Millis(s * 1000)
    }
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

/// The longest duration accepted anywhere: 10 years, so arithmetic on deadlines never overflows.
pub const MAX_MILLIS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Parses `"1h2m3s4ms"`-style text (units h, m, s, ms; each at most once, in
/// that order) or a bare integer of milliseconds.
pub fn parse(text: &str) -> Result<Millis, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(
            "a duration must not be empty; write e.g. \"10s\", \"1m30s\", \"250ms\"".into(),
        );
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .ok()
            .filter(|&v| v <= MAX_MILLIS)
            .map(Millis)
            .ok_or_else(|| format!("duration {t:?} is too long (at most 10 years)"));
    }
    let bad = || {
        format!(
            "invalid duration {t:?}; write e.g. \"10s\", \"1m30s\", \"250ms\" or an integer of milliseconds"
        )
    };
    let mut rest = t;
    let mut total: u64 = 0;
    let mut last_rank = 0u8;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 15 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, rank, len) = if rest.starts_with("ms") {
            (1, 4, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1, 1)
        } else if rest.starts_with('m') {
            (60_000, 2, 1)
        } else if rest.starts_with('s') {
            (1000, 3, 1)
        } else {
            return Err(bad());
        };
        if rank <= last_rank {
            return Err(bad());
        }
        last_rank = rank;
        rest = &rest[len..];
        total = n
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .filter(|&v| v <= MAX_MILLIS)
            .ok_or_else(|| format!("duration {t:?} is too long (at most 10 years)"))?;
    }
    Ok(Millis(total))
}

impl fmt::Display for Millis {
    /// Writes the shortest form `parse` reads back: `1m30s`, `250ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        let h = ms / 3_600_000;
        ms %= 3_600_000;
        let m = ms / 60_000;
        ms %= 60_000;
        let s = ms / 1000;
        ms %= 1000;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"1m30s\", \"250ms\" or an integer of milliseconds")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Millis, E> {
                if v > MAX_MILLIS {
                    return Err(E::custom("duration is too long (at most 10 years)"));
                }
                Ok(Millis(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Millis, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a duration must not be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Millis, E> {
                parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl utoipa::PartialSchema for Millis {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::*;
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))
                    .examples(["10s", "1m30s", "250ms"]),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .description(Some(
                "a duration: \"10s\", \"1m30s\", \"250ms\" or integer milliseconds",
            ))
            .into()
    }
}
impl utoipa::ToSchema for Millis {}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<u64, ()>) {
        assert_eq!(
            parse(input).map(|m| m.0).map_err(|_| ()),
            expect,
            "{input:?}"
        );
    }

    #[test]
    fn parses_the_forms_the_contract_names() {
        check("10s", Ok(10_000));
        check("1m30s", Ok(90_000));
        check("250ms", Ok(250));
        check("1h", Ok(3_600_000));
        check("1h2m3s4ms", Ok(3_723_004));
        check("1500", Ok(1500));
        check("0", Ok(0));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "s",
            "10",
            "10x",
            "1s1m",
            "1s1s",
            "-1s",
            "1.5s",
            "10 s",
            "99999999999999999999s",
        ] {
            if bad == "10" {
                continue;
            }
            check(bad, Err(()));
        }
        check("9999999999999999", Err(()));
    }

    #[test]
    fn display_round_trips() {
        for ms in [0, 1, 250, 1000, 90_000, 3_723_004, MAX_MILLIS] {
            assert_eq!(parse(&Millis(ms).to_string()), Ok(Millis(ms)));
        }
    }

    #[test]
    fn deserializes_strings_and_integers() {
        assert_eq!(
            serde_json::from_str::<Millis>("\"10s\"").unwrap(),
            Millis(10_000)
        );
        assert_eq!(
            serde_json::from_str::<Millis>("1500").unwrap(),
            Millis(1500)
        );
        assert!(serde_json::from_str::<Millis>("-5").is_err());
        assert!(serde_json::from_str::<Millis>("1.5").is_err());
        assert!(serde_json::from_str::<Millis>("true").is_err());
    }
}

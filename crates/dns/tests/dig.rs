//! The DNS server as `dig` (Debian's bind9-dnsutils) sees it: the resolver
//! people reach for first, with its own parser and its own TCP fallback.

mod common;

use common::{Dns, config, many, seeded, serve};
use std::net::SocketAddr;

/// What one `dig` run printed, sorted out.
#[derive(Debug)]
struct Dig {
    status: String,
    /// `qr aa rd ...`
    flags: Vec<String>,
    /// `(name, type, data)` of each section, in the order printed.
    answer: Vec<(String, String, String)>,
    additional: Vec<(String, String, String)>,
    text: String,
}

impl Dig {
    fn data(&self) -> Vec<String> {
        let mut d: Vec<String> = self.answer.iter().map(|a| a.2.clone()).collect();
        d.sort();
        d
    }

    fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
}

async fn dig(addr: SocketAddr, args: &[&str]) -> Dig {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+tries=1", "+time=5"])
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `dig` ({e}): install Debian's bind9-dnsutils (apt-get install bind9-dnsutils); scripts/test does"
            )
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dig {args:?} failed:\n{text}");
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in:\n{text}"))
        .to_string();
    let flags = text
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let section = |title: &str| -> Vec<(String, String, String)> {
        let Some(start) = text.find(&format!(";; {title} SECTION:")) else {
            return Vec::new();
        };
        text[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter(|l| !l.starts_with(';'))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].to_string(), f[3].to_string(), f[4..].join(" "))
            })
            .collect()
    };
    Dig {
        status,
        flags,
        answer: section("ANSWER"),
        additional: section("ADDITIONAL"),
        text,
    }
}

async fn started() -> Dns {
    serve(Some(seeded().await), config()).await
}

#[tokio::test]
async fn dig_reads_a_aaaa_and_srv() {
    let dns = started().await;
    let d = dig(dns.addr, &["web.service.muster.", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(d.flag("aa"), "{}", d.text);
    assert_eq!(d.data(), ["10.0.0.1", "10.0.0.2"]);
    assert!(d.answer.iter().all(|a| a.1 == "A"));

    let d = dig(dns.addr, &["web.service.muster.", "AAAA"]).await;
    assert_eq!(d.data(), ["2001:db8::5"]);

    let d = dig(dns.addr, &["web.service.muster.", "SRV"]).await;
    assert_eq!(
        d.data(),
        [
            "1 1 81 0a000002.addr.muster.",
            "1 1 9000 db.example.org.",
            "1 10 80 0a000001.addr.muster.",
            "1 3 8080 20010db8000000000000000000000005.addr.muster.",
        ]
    );
    let mut extra: Vec<String> = d
        .additional
        .iter()
        .map(|a| format!("{} {} {}", a.0, a.1, a.2))
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        [
            "0a000001.addr.muster. A 10.0.0.1",
            "0a000002.addr.muster. A 10.0.0.2",
            "20010db8000000000000000000000005.addr.muster. AAAA 2001:db8::5",
        ]
    );
    // Over TCP the same.
    let d = dig(dns.addr, &["+tcp", "web.service.muster.", "A"]).await;
    assert_eq!(d.data(), ["10.0.0.1", "10.0.0.2"]);
}

#[tokio::test]
async fn dig_reads_tags_rfc2782_and_the_consul_domain() {
    let dns = started().await;
    let d = dig(dns.addr, &["v2.web.service.muster.", "A"]).await;
    assert_eq!(d.data(), ["10.0.0.2"]);
    let d = dig(dns.addr, &["_web._tcp.service.muster.", "SRV"]).await;
    assert_eq!(d.answer.len(), 4, "{}", d.text);
    let d = dig(dns.addr, &["WEB.Service.CONSUL.", "A"]).await;
    assert_eq!(d.data(), ["10.0.0.1", "10.0.0.2"]);
    // The answer keeps the asker's case (resolvers randomizing case check it).
    assert!(
        d.answer.iter().all(|a| a.0 == "WEB.Service.CONSUL."),
        "{}",
        d.text
    );
    let d = dig(dns.addr, &["_web._tcp.service.consul.", "SRV"]).await;
    assert!(
        d.data()
            .iter()
            .any(|s| s.ends_with(" 0a000001.addr.consul.")),
        "{}",
        d.text
    );
}

#[tokio::test]
async fn dig_sees_nxdomain_and_empty_noerror() {
    let dns = started().await;
    let d = dig(dns.addr, &["nope.service.muster.", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    assert!(d.text.contains("SOA"), "{}", d.text);
    let d = dig(dns.addr, &["down.service.muster.", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(d.answer.is_empty(), "{}", d.text);
    let d = dig(dns.addr, &["empty.service.muster.", "SRV"]).await;
    assert_eq!((d.status.as_str(), d.answer.len()), ("NOERROR", 0));
}

#[tokio::test]
async fn dig_gets_tc_over_udp_and_everything_over_tcp() {
    let reg = seeded().await;
    many(&reg, "big", 60).await;
    let dns = serve(Some(reg), config()).await;
    // +ignore: show the truncated answer instead of retrying over TCP.
    let d = dig(
        dns.addr,
        &["+ignore", "+noedns", "big.service.muster.", "A"],
    )
    .await;
    assert!(d.flag("tc"), "{}", d.text);
    assert!(d.answer.len() < 60);
    // dig's own fallback: told TC, it asks again over TCP.
    let d = dig(dns.addr, &["+noedns", "big.service.muster.", "A"]).await;
    assert!(!d.flag("tc"));
    assert_eq!(d.answer.len(), 60, "{}", d.text);
    let d = dig(dns.addr, &["+tcp", "big.service.muster.", "A"]).await;
    assert_eq!(d.answer.len(), 60);
    // dig advertises 1232 bytes by default: 60 A records fit that.
    let d = dig(dns.addr, &["+ignore", "big.service.muster.", "A"]).await;
    assert!(!d.flag("tc"), "{}", d.text);
    assert_eq!(d.answer.len(), 60);
}

#[tokio::test]
async fn dig_answers_come_shuffled() {
    let reg = seeded().await;
    many(&reg, "big", 20).await;
    let dns = serve(Some(reg), config()).await;
    let order = |d: Dig| d.answer.into_iter().map(|a| a.2).collect::<Vec<_>>();
    let first = order(dig(dns.addr, &["big.service.muster.", "A"]).await);
    let mut differed = false;
    for _ in 0..10 {
        if order(dig(dns.addr, &["big.service.muster.", "A"]).await) != first {
            differed = true;
            break;
        }
    }
    assert!(differed, "ten answers came back in the same order");
}

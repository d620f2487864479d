//! TLS for the HTTP listener (rustls): a certificate and key, and with
//! `client_ca_file` mutual TLS — only clients presenting a certificate that
//! CA signed get past the handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// `[tls]` as written.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
}

fn certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "tls.{key}: cannot read certificates from {}: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls.{key}: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds the server side of TLS from `[tls]`; `Ok(None)` when the section
/// is absent. Every file is read and checked here, at startup.
pub fn server_config(raw: &RawTls) -> Result<Option<Arc<ServerConfig>>, String> {
    let (cert_file, key_file) = match (&raw.cert_file, &raw.key_file) {
        (None, None) if raw.client_ca_file.is_none() => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err("tls: needs both cert_file and key_file".to_string()),
    };
    let chain = certs("cert_file", cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "tls.key_file: cannot read a private key from {}: {e}",
            key_file.display()
        )
    })?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &raw.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("client_ca_file", ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls.client_ca_file: {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls: the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// A throwaway PKI for tests: a CA, a server certificate for `localhost`
/// and 127.0.0.1, a client certificate it signed, and a client certificate
/// from another CA. Every file is PEM, written into `dir`.
#[cfg(feature = "test-pki")]
pub mod test_pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use std::path::{Path, PathBuf};

    pub struct Pki {
        pub ca: PathBuf,
        pub server_cert: PathBuf,
        pub server_key: PathBuf,
        pub client_cert: PathBuf,
        pub client_key: PathBuf,
        pub rogue_cert: PathBuf,
        pub rogue_key: PathBuf,
    }

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(
        dir: &Path,
        name: &str,
        sans: &[&str],
        issuer: &CertifiedIssuer<'static, KeyPair>,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    pub fn create(dir: &Path) -> Pki {
        let authority = ca("muster test CA");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, authority.pem()).unwrap();
        let (server_cert, server_key) =
            leaf(dir, "server", &["localhost", "127.0.0.1"], &authority);
        let (client_cert, client_key) = leaf(dir, "client", &["client.test"], &authority);
        let (rogue_cert, rogue_key) = leaf(dir, "rogue", &["rogue.test"], &self::ca("rogue CA"));
        Pki {
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
            rogue_cert,
            rogue_key,
        }
    }
}

//! Throw-away certificates for the TLS tests, made at test time with the `openssl` command-line
//! tool (nothing is committed): certificate authorities and server certificates signed by them,
//! ECDSA P-256, valid for two days, in a fresh temporary directory that is removed on drop.
//! Include with `#[path = "common/tls/pki.rs"] mod pki;`.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Our own minimal OpenSSL config, so the system `openssl.cnf` (and its default extensions)
/// plays no part.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
";

/// A directory of generated keys and certificates, removed on drop.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
}

/// A self-signed certificate authority.
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
    name: String,
}

/// A server certificate and its private key (PEM files).
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Runs `openssl ARGS...` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): install it with `apt-get install -y openssl`")
        });
    assert!(
        output.status.success(),
        "openssl {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

impl Pki {
    /// A fresh, unique temporary directory (pid + counter + time) with the OpenSSL config.
    pub fn new() -> Pki {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "rumqttc-otel-pki-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG).expect("write openssl.cnf");
        Pki { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new self-signed CA; `name` (letters, digits, `-`) names its files and its subject CN.
    pub fn ca(&self, name: &str) -> Ca {
        let cert = self.dir.join(format!("{name}.crt"));
        let key = self.dir.join(format!("{name}.key"));
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-config",
                "openssl.cnf",
                "-extensions",
                "ca_ext",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-sha256",
                "-days",
                "2",
                "-subj",
                &format!("/CN=rumqttc-opentelemetry test CA {name}"),
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&cert),
            ],
        );
        Ca {
            cert,
            key,
            dir: self.dir.clone(),
            name: name.to_string(),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Ca {
    /// The CA certificate, PEM.
    pub fn pem(&self) -> Vec<u8> {
        fs::read(&self.cert).expect("read CA certificate")
    }

    /// A server certificate signed by this CA, for the `subjectAltName` entries `san`
    /// (e.g. `"DNS:localhost,IP:127.0.0.1"`); `name` names its files and its subject CN.
    pub fn issue_server(&self, name: &str, san: &str) -> ServerCert {
        let cert = self.dir.join(format!("{name}.crt"));
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        fs::write(
            &ext,
            format!(
                "basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = serverAuth\n\
                 subjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid\n\
                 subjectAltName = {san}\n"
            ),
        )
        .expect("write extensions file");
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-config",
                "openssl.cnf",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&csr),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-sha256",
                "-days",
                "2",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&self.cert),
                "-CAkey",
                path_str(&self.key),
                "-CAcreateserial",
                "-CAserial",
                path_str(&self.dir.join(format!("{}.srl", self.name))),
                "-extfile",
                path_str(&ext),
                "-out",
                path_str(&cert),
            ],
        );
        ServerCert { cert, key }
    }
}

impl ServerCert {
    /// mosquitto config lines for a TLS listener on `127.0.0.1:port` presenting this
    /// certificate (clients are not asked for one). TLS settings are per listener in mosquitto,
    /// so this can follow the fixture's plain listener.
    pub fn mosquitto_listener(&self, port: u16, ca: &Ca) -> String {
        format!(
            "listener {port} 127.0.0.1\n\
             cafile {}\n\
             certfile {}\n\
             keyfile {}\n\
             require_certificate false\n",
            ca.cert.display(),
            self.cert.display(),
            self.key.display()
        )
    }
}

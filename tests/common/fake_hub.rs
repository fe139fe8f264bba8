//! A stand-in for the Hub's HTTP API on loopback: `GET /api/models/{id}/revision/{rev}` and
//! `GET /{id}/resolve/{rev}/{file}` with Range support, as `hf-hub` uses them; over plain HTTP,
//! or over TLS with a certificate from a test CA (made with the `openssl` command line); and,
//! when asked, flaky the way a real Hub or mirror is now and then (503s, a body cut short).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

pub struct FakeHub {
    pub port: u16,
    /// Each request's head, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    scheme: &'static str,
}

#[derive(Clone)]
pub enum HubMode {
    /// Serve these files of `repo`, only to requests with `Authorization: Bearer <token>`.
    Serve {
        repo: String,
        files: HashMap<String, Vec<u8>>,
        token: String,
    },
    /// Answer every request with this status and `x-error-code`.
    Refuse(u16, &'static str),
    /// Accept connections and never answer (a Hub that hangs); closed when the hub is dropped.
    Hang,
}

/// How the hub misbehaves, on top of its mode.
#[derive(Clone, Default)]
pub struct Faults {
    /// The first request for each path is answered 503.
    pub first_try_503: bool,
    /// The first whole-file body (`Range: bytes=0-`) of this file stops halfway through, the
    /// connection closed under it.
    pub cut_first_body_of: Option<String>,
}

impl FakeHub {
    pub fn start(mode: HubMode) -> FakeHub {
        FakeHub::start_with(mode, Faults::default(), None)
    }

    /// With faults, and over TLS when `tls` is given.
    pub fn start_with(mode: HubMode, faults: Faults, tls: Option<&TestCa>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let tls = tls.map(TestCa::server_config);
        let scheme = if tls.is_some() { "https" } else { "http" };
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut seen = HashSet::new();
            let mut cut_done = false;
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                if matches!(mode, HubMode::Hang) {
                    held.push(stream);
                    continue;
                }
                let mut stream: Box<dyn ReadWrite> = match &tls {
                    Some(config) => {
                        let connection = rustls::ServerConnection::new(config.clone()).unwrap();
                        Box::new(rustls::StreamOwned::new(connection, stream))
                    }
                    None => Box::new(stream),
                };
                let head = read_head(&mut stream);
                if head.is_empty() {
                    continue; // (a client that refused our certificate)
                }
                log.lock().unwrap().push(head.clone());
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let mut bytes = if faults.first_try_503 && seen.insert(path.clone()) {
                    reply(503, vec![], b"{}")
                } else {
                    answer(&mode, &head)
                };
                let whole_body = head.to_ascii_lowercase().contains("range: bytes=0-\r\n");
                let cut = faults.cut_first_body_of.as_ref().is_some_and(|name| {
                    path.ends_with(&format!("/{name}")) && whole_body && !cut_done
                });
                if cut && bytes.starts_with(b"HTTP/1.1 206") {
                    let body_at = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    bytes.truncate(body_at + (bytes.len() - body_at) / 2);
                    cut_done = true;
                }
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
            }
        });
        FakeHub {
            port,
            requests,
            scheme,
        }
    }

    /// What `HF_ENDPOINT` is set to.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn read_head(stream: &mut dyn ReadWrite) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_string()
}

fn reply(status: u16, headers: Vec<(String, String)>, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn answer(mode: &HubMode, head: &str) -> Vec<u8> {
    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    match mode {
        HubMode::Hang => unreachable!(),
        HubMode::Refuse(status, code) => reply(
            *status,
            vec![("x-error-code".into(), code.to_string())],
            b"{}",
        ),
        HubMode::Serve { repo, files, token } => {
            if header("authorization").as_deref() != Some(&format!("Bearer {token}")) {
                return reply(
                    401,
                    vec![("x-error-code".into(), "RepoNotFound".into())],
                    b"{}",
                );
            }
            let commit = "a".repeat(40);
            if path == format!("/api/models/{repo}/revision/main") {
                let siblings: Vec<_> = files
                    .keys()
                    .map(|f| serde_json::json!({"rfilename": f}))
                    .collect();
                let body = serde_json::json!({"sha": commit, "siblings": siblings}).to_string();
                return reply(200, vec![], body.as_bytes());
            }
            let not_found = || {
                reply(
                    404,
                    vec![("x-error-code".into(), "EntryNotFound".into())],
                    b"{}",
                )
            };
            let Some(file) = path.strip_prefix(&format!("/{repo}/resolve/main/")) else {
                return not_found();
            };
            let Some(bytes) = files.get(file) else {
                return not_found();
            };
            let range = header("range").unwrap_or_else(|| "bytes=0-".into());
            let (start, end) = range.trim_start_matches("bytes=").split_once('-').unwrap();
            let start: usize = start.parse().unwrap();
            let end: usize = if end.is_empty() {
                bytes.len().saturating_sub(1)
            } else {
                end.parse().unwrap()
            };
            let slice = &bytes[start.min(bytes.len())..(end + 1).min(bytes.len())];
            let etag = format!("\"etag-{}-{}\"", file.replace('/', "_"), bytes.len());
            reply(
                206,
                vec![
                    ("etag".into(), etag),
                    ("x-repo-commit".into(), commit),
                    (
                        "content-range".into(),
                        format!("bytes {start}-{end}/{}", bytes.len()),
                    ),
                ],
                slice,
            )
        }
    }
}

/// A model folder's files by name (sub-folders' as `sub/name`), as a stand-in Hub repository
/// serves them.
pub fn folder_files(dir: &Path) -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            for (inner, bytes) in folder_files(&path) {
                files.insert(format!("{name}/{inner}"), bytes);
            }
        } else {
            files.insert(name, std::fs::read(&path).unwrap());
        }
    }
    files
}

/// A certificate authority made for one test (as a company's own CA is), and a server
/// certificate for 127.0.0.1 that it signed; PEM files in `dir`.
pub struct TestCa {
    /// The CA certificate: what a client must trust.
    pub ca_pem: PathBuf,
    leaf_pem: PathBuf,
    leaf_key: PathBuf,
}

impl TestCa {
    pub fn create(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("the openssl command line (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"],
            &ec[..],
            &["-days", "2", "-subj", "/CN=Test Corporate CA"],
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat());
        run(&[
            &["req"],
            &ec[..],
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat());
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ]);
        TestCa {
            ca_pem: dir.join("ca.pem"),
            leaf_pem: dir.join("leaf.pem"),
            leaf_key: dir.join("leaf.key"),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(&self.leaf_pem)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.leaf_key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        Arc::new(config)
    }
}

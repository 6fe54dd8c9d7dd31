//! The listening socket: plain TCP (loopback, or `insecure`) or TLS 1.3 with
//! rustls, with mutual TLS when `server.tls_client_ca` names a CA bundle.
//! The certificate, key and CA files are read again when they change (polled)
//! or on SIGHUP, without a restart; connections already open keep the
//! configuration they started with. Handshakes run on tasks of their own, so
//! a slow or hostile client never holds up the accept loop.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn all(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        v.extend(self.client_ca.as_deref());
        v
    }
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// rustls refused the certificate, key or CA.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA bundle is unusable.
    #[error("client CA: {0}")]
    ClientCa(String),
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: message.to_string() }
}

/// A rustls server configuration from `files`: TLS 1.3 only, HTTP/2 by ALPN.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&files.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(&files.cert, "no PEM certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    #[expect(
        deprecated,
        reason = "ring, as tonic's tls-ring uses: aws-lc-rs (post-quantum key exchange) would add a C build"
    )]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_error(ca, e))? {
                roots.add(cert.map_err(|e| file_error(ca, e))?)?;
            }
            if roots.is_empty() {
                return Err(file_error(ca, "no PEM certificate in the CA bundle"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier).with_single_cert(certs, key)?
        }
        None => builder.with_no_client_auth().with_single_cert(certs, key)?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS acceptor whose files are read again when they change.
pub struct ReloadingAcceptor {
    files: TlsFiles,
    acceptor: RwLock<TlsAcceptor>,
    seen: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl std::fmt::Debug for ReloadingAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingAcceptor").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ReloadingAcceptor {
    /// Reads the files now; fails if they do not make a configuration.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&files)?));
        let seen = stamps(&files);
        Ok(Self { files, acceptor: RwLock::new(acceptor), seen: Mutex::new(seen) })
    }

    /// Whether client certificates are required (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Reads the files again if any changed (or always, with `force`). A
    /// set that does not make a configuration (say, a certificate written
    /// before its key) keeps the last good one in force, with a warning.
    pub fn reload(&self, force: bool) {
        let now = stamps(&self.files);
        let changed = self.seen.lock().map(|s| *s != now).unwrap_or(true);
        if !(force || changed) {
            return;
        }
        match server_config(&self.files) {
            Ok(config) => {
                if let Ok(mut a) = self.acceptor.write() {
                    *a = TlsAcceptor::from(Arc::new(config));
                }
                if let Ok(mut s) = self.seen.lock() {
                    *s = now;
                }
                info!(cert = %self.files.cert.display(), "TLS certificate, key and CA read again");
            }
            Err(e) => warn!(error = %e, "TLS files changed but do not make a configuration; the previous one stays"),
        }
    }

    fn current(&self) -> Option<TlsAcceptor> {
        self.acceptor.read().ok().map(|a| a.clone())
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    files
        .all()
        .into_iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())))
        .collect()
}

/// Who is at the other end of a connection, as the handlers see it.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Remote address.
    pub addr: Option<SocketAddr>,
    /// The verified client certificate's common name (or first DNS name).
    pub certificate_name: Option<String>,
}

/// An accepted connection, plain or TLS.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, with the peer's verified identity.
    Tls(Box<TlsStream<TcpStream>>, Peer),
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Conn::Plain(s) => Peer { addr: s.peer_addr().ok(), certificate_name: None },
            Conn::Tls(_, peer) => peer.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// A refused TLS handshake, for the audit log.
#[derive(Debug, Clone)]
pub struct HandshakeRefusal {
    /// Remote address.
    pub addr: SocketAddr,
    /// What rustls said.
    pub error: String,
}

/// The stream of accepted connections `serve` hands to tonic, and the
/// accept loop's task (aborted at shutdown). Refused handshakes go to
/// `refused` (the audit log), never to tonic.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ReloadingAcceptor>>,
    refused: mpsc::UnboundedSender<HandshakeRefusal>,
) -> (ReceiverStream<io::Result<Conn>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(64);
    let task = tokio::spawn(async move {
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Some(acceptor) = tls.as_ref().and_then(|t| t.current()) else {
                if tx.send(Ok(Conn::Plain(stream))).await.is_err() {
                    return;
                }
                continue;
            };
            let (tx, refused) = (tx.clone(), refused.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let certificate_name =
                            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| common_name(c));
                        let peer = Peer { addr: Some(addr), certificate_name };
                        let _ = tx.send(Ok(Conn::Tls(Box::new(tls), peer))).await;
                    }
                    Ok(Err(e)) => {
                        debug!(%addr, error = %e, "TLS handshake refused");
                        let _ = refused.send(HandshakeRefusal { addr, error: e.to_string() });
                    }
                    Err(_) => {
                        debug!(%addr, "TLS handshake timed out");
                        let _ = refused.send(HandshakeRefusal { addr, error: "handshake timed out".into() });
                    }
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

/// The subject's common name of a DER certificate, or its first DNS name.
fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    cn.or_else(|| {
        let san = cert.subject_alternative_name().ok().flatten()?;
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
    })
}

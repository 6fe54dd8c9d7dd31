//! The client side of the connection: plain HTTP/2 for `http://` servers,
//! TLS (rustls through tonic) for `https://` ones, with a CA to trust, a
//! client certificate for mutual TLS, and a bearer token on every call.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

/// How to reach and authenticate to a server.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Server URL (`http://` or `https://`).
    pub server: String,
    /// PEM CA bundle that the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    pub cert: Option<PathBuf>,
    /// PEM key of `cert`.
    pub key: Option<PathBuf>,
    /// Bearer token.
    pub token: Option<String>,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel with the caller's token on every call.
pub type Conn = InterceptedService<Channel, Bearer>;

impl Connection {
    /// Connects (TLS for `https://`).
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let server = &self.server;
        let mut endpoint =
            Channel::from_shared(server.clone()).with_context(|| format!("invalid server URL {server:?}"))?;
        let https = server.starts_with("https://");
        if !https && (self.ca.is_some() || self.cert.is_some()) {
            bail!("--ca and --cert need an https:// server URL");
        }
        if https {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca {
                let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            match (&self.cert, &self.key) {
                (Some(c), Some(k)) => {
                    let cert = std::fs::read(c).with_context(|| format!("cannot read {}", c.display()))?;
                    let key = std::fs::read(k).with_context(|| format!("cannot read {}", k.display()))?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => bail!("--cert and --key go together"),
            }
            endpoint = endpoint.tls_config(tls).context("TLS settings")?;
        }
        let channel = endpoint.connect().await.with_context(|| format!("cannot connect to {server}"))?;
        let bearer = match &self.token {
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| anyhow::anyhow!("the token is not printable ASCII"))?,
            ),
            None => None,
        };
        Ok(InterceptedService::new(channel, Bearer(bearer)))
    }
}

//! HTTP backends (WebDAV, CalDAV, CardDAV servers): a pooled hyper client per backend.
//!
//! Request bodies stream from the client to the backend and response bodies back without
//! being gathered (hyper's flow control carries back-pressure both ways), so a multi-GiB PUT
//! costs the gateway a few buffers.

use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{BackendConfig, BackendLogin, read_secret_file};
use crate::credentials::{Login, Secret};

/// Why a backend request failed; decides 502 or 504.
#[derive(Debug, thiserror::Error)]
pub enum HttpBackendError {
    /// Connection refused, reset, TLS failure, protocol error.
    #[error("backend {0} failed: {1}")]
    Failed(String, String),
    /// No response head within the backend timeout.
    #[error("backend {0} did not answer in time")]
    Timeout(String),
}

/// A configured HTTP backend.
pub struct HttpBackend {
    pub name: String,
    pub config: BackendConfig,
    /// `scheme://authority` of the backend.
    origin: String,
    /// Path of the backend URL (`/` or `/dav/`).
    base_path: String,
    authority: http::uri::Authority,
    scheme: http::uri::Scheme,
    client: Client<HttpsConnector<HttpConnector>, Progressing>,
    /// Requests in flight to the backend; see `max_connections`.
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// `Basic …` for `login = "basic"`.
    basic: Option<Secret>,
}

impl HttpBackend {
    pub fn new(name: &str, config: &BackendConfig) -> Result<Self, String> {
        let url = config.url.as_deref().unwrap_or_default();
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("[backend.{name}] url {url:?}: {e}"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(format!(
                "[backend.{name}] url {url:?} needs a scheme and a host"
            ));
        };
        let tls = crate::tls::backend_client_config(config.ca_file.as_deref())
            .map_err(|e| format!("[backend.{name}]: {e}"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout()));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(config.max_connections)
            .build(connector);
        let basic = match config.login {
            BackendLogin::Basic => {
                let user = config.master_user.as_deref().unwrap_or_default();
                let path = config
                    .master_password_file
                    .as_deref()
                    .ok_or_else(|| format!("[backend.{name}] needs master_password_file"))?;
                let password =
                    read_secret_file(path).map_err(|e| format!("[backend.{name}]: {e}"))?;
                Some(crate::protocol::http::basic_header(user, &password))
            }
            _ => None,
        };
        Ok(Self {
            name: name.to_owned(),
            origin: format!("{scheme}://{authority}"),
            base_path: uri.path().to_owned(),
            authority,
            scheme,
            config: config.clone(),
            client,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            basic,
        })
    }

    /// `scheme://authority` of the backend.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The path the backend URL points at.
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// A URI on the backend for `path_and_query` (already mapped to the backend's paths).
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// The user name the backend knows the account by.
    pub fn user_for(&self, login: &Login) -> String {
        if self.config.strip_domain {
            login.local_part().to_owned()
        } else {
            login.as_str().to_owned()
        }
    }

    /// The `Authorization` value for `login = "basic"`.
    pub fn basic_authorization(&self) -> Option<&Secret> {
        self.basic.as_ref()
    }

    /// Sends a request. The backend must keep taking the request body (no pause longer than
    /// the backend timeout) and answer with the response head within the timeout after the
    /// body's end; the response body then streams for as long as it takes. A deadline from
    /// the start instead would cut every upload slower than the timeout (a 1 GiB PUT over a
    /// home line) with a 504.
    pub async fn send(
        &self,
        request: http::Request<Incoming>,
    ) -> Result<http::Response<Permitted>, HttpBackendError> {
        let progress = std::sync::Arc::new(Progress::new());
        let request = request.map(|inner| Progressing {
            inner,
            progress: progress.clone(),
        });
        // Waiting for a turn counts against the same deadline as the backend's answer; the
        // turn lasts until the response body has been read, when the connection is free again.
        let work = async {
            let permit = self.permits.clone().acquire_owned().await;
            (self.client.request(request).await, permit)
        };
        let timeout = self.config.timeout();
        let stalled = async {
            loop {
                let seen = progress.last();
                tokio::time::sleep_until(seen + timeout).await;
                if progress.last() <= seen {
                    return;
                }
            }
        };
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = stalled => return Err(HttpBackendError::Timeout(self.origin.clone())),
        };
        match outcome {
            (Ok(response), Ok(permit)) => Ok(response.map(|body| Permitted {
                inner: body,
                _permit: permit,
            })),
            (_, Err(_)) => Err(HttpBackendError::Failed(
                self.origin.clone(),
                "closed".into(),
            )),
            (Err(e), _) => Err(HttpBackendError::Failed(
                self.origin.clone(),
                error_chain(&e),
            )),
        }
    }
}

/// When a request body last moved towards the backend.
struct Progress {
    start: tokio::time::Instant,
    /// Nanoseconds after `start`.
    last: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn moved(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_nanos(self.last.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// A client's request body on its way to the backend, marking each frame the backend takes.
pub struct Progressing {
    inner: Incoming,
    progress: std::sync::Arc<Progress>,
}

impl hyper::body::Body for Progressing {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_ready() {
            self.progress.moved();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A backend response body that holds its request's turn until it is read to the end.
pub struct Permitted {
    inner: Incoming,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl hyper::body::Body for Permitted {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

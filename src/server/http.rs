//! The HTTPS listener for WebDAV, CalDAV and CardDAV.
//!
//! One TLS connection is served by hyper (HTTP/1.1, or HTTP/2 when ALPN picks `h2`). Every
//! request is routed by host and path, its Basic credentials are checked for the route's
//! service through the credential index (a cache hit on nearly every request: WebDAV clients
//! send Basic each time), and it is forwarded with the backend's trusted header in place of the
//! client's credentials. The connection driver closes the connection when a credential used on
//! it dies, when it idles, when a request head trickles in too slowly, and on shutdown.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Shared;
use super::admission::Admitted;
use super::gate::Gate;
use crate::config::ListenerConfig;
use crate::credentials::index::Credential;
use crate::credentials::{AuthError, Credentials, Grant, Protocol};
use crate::protocol::http::{
    FramingSniffer, Route, Router, forwarded_value, normalize_path, parse_basic, rewrite_prefix,
    strip_hop_by_hop,
};
use crate::upstream::http::{HttpBackend, HttpBackendError};

type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// One HTTP listener: its routes and their backends.
pub struct HttpListener {
    pub config: ListenerConfig,
    pub router: Router,
    pub backends: Vec<Arc<HttpBackend>>,
    pub shared: Arc<Shared>,
    /// The server TLS configuration with ALPN `h2` and `http/1.1`.
    pub tls: TlsAcceptor,
    /// `Basic realm="…"` for 401 replies.
    pub realm: HeaderValue,
}

/// What the requests of one connection share.
struct Connection {
    peer: SocketAddr,
    /// The connection's place in the limits: pre-login until a request authenticates.
    admitted: Arc<Admitted>,
    /// Verdicts on HTTP/1 request heads, in order (`None` on HTTP/2, which has no such
    /// framing ambiguity).
    sniffer: Option<Arc<Mutex<FramingSniffer>>>,
    /// Credentials used on this connection (login and credential), each watched once.
    watched: Mutex<HashSet<(String, Credential)>>,
    /// Watchers that cancel `revoked` when their credential dies; aborted with the connection.
    watchers: Mutex<JoinSet<()>>,
    revoked: CancellationToken,
    activity: Arc<Activity>,
}

/// Requests in flight (until their response body ends) and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

/// One request in flight; dropping it records the end.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut last) = self.0.last.lock() {
            *last = Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked {
    inner: ResponseBody,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The client's bytes pass through the sniffer on their way to hyper.
struct Sniffed<T> {
    inner: T,
    sniffer: Arc<Mutex<FramingSniffer>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && let Ok(mut sniffer) = self.sniffer.lock()
        {
            sniffer.observe(&buf.filled()[before..]);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves one accepted connection.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Arc<HttpListener>,
    admitted: Arc<Admitted>,
) {
    let limits = &listener.shared.limits;
    let tls = match tokio::time::timeout(limits.handshake_timeout(), listener.tls.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        _ => {
            tracing::debug!("TLS handshake failed or timed out");
            return;
        }
    };
    crate::telemetry::tls_handshake(tls.get_ref().1);
    let _live = crate::telemetry::SessionGauge::new("http");
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let sniffer = (!h2).then(|| {
        Arc::new(Mutex::new(FramingSniffer::new(
            limits.http_max_header_bytes,
        )))
    });
    let conn = Arc::new(Connection {
        peer,
        admitted,
        sniffer: sniffer.clone(),
        watched: Mutex::new(HashSet::new()),
        watchers: Mutex::new(JoinSet::new()),
        revoked: CancellationToken::new(),
        activity: Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }),
    });
    let service = {
        let conn = conn.clone();
        let listener = listener.clone();
        // HTTP/2 streams run as tasks of their own: carry the connection's span (session id,
        // client address) into each request's log lines.
        let span = tracing::Span::current();
        service_fn(move |request| {
            handle(request, conn.clone(), listener.clone()).instrument(span.clone())
        })
    };
    let idle = Duration::from_secs(limits.http_idle_timeout_secs);
    let shutdown = listener.shared.shutdown.clone();
    let grace = Duration::from_secs(limits.shutdown_grace_secs);

    // Both connection types have the same shape; a macro keeps one driver for them.
    macro_rules! drive {
        ($connection:expr) => {{
            let connection = $connection;
            tokio::pin!(connection);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = conn.revoked.cancelled() => {
                        tracing::info!("a credential used on this connection died; closing it");
                        break;
                    }
                    () = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(grace, connection.as_mut()).await;
                        break;
                    }
                    _ = tick.tick() => {
                        let quiet = conn.activity.in_flight.load(Ordering::SeqCst) == 0
                            && conn.activity.last.lock().map_or(false, |last| last.elapsed() >= idle);
                        if quiet {
                            tracing::debug!("idle connection closed");
                            break;
                        }
                    }
                }
            }
        }};
    }

    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http_max_streams)
            .max_header_list_size(u32::try_from(limits.http_max_header_bytes).unwrap_or(u32::MAX));
        drive!(builder.serve_connection(TokioIo::new(tls), service));
    } else {
        let io = Sniffed {
            inner: tls,
            sniffer: sniffer.unwrap_or_else(|| Arc::new(Mutex::new(FramingSniffer::new(0)))),
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Counted from when the connection starts waiting for a request head: bounds a
            // slow head (slowloris) and an idle keep-alive alike.
            .header_read_timeout(Duration::from_secs(limits.http_header_timeout_secs))
            .max_buf_size(limits.http_max_header_bytes.max(8192));
        drive!(builder.serve_connection(TokioIo::new(io), service));
    }
    if let Ok(mut watchers) = conn.watchers.lock() {
        watchers.abort_all();
    }
}

async fn handle(
    request: Request<Incoming>,
    conn: Arc<Connection>,
    listener: Arc<HttpListener>,
) -> Result<Response<ResponseBody>, Infallible> {
    let in_flight = InFlight::start(&conn.activity);
    let head = request.method() == http::Method::HEAD;
    let response = route(request, &conn, &listener).await;
    let (parts, mut body) = response.into_parts();
    if head {
        // A HEAD response has no body; HTTP/2 treats one as a protocol error.
        body = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed();
    }
    let body = Tracked {
        inner: body,
        _in_flight: in_flight,
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

async fn route(
    request: Request<Incoming>,
    conn: &Connection,
    listener: &HttpListener,
) -> Response<ResponseBody> {
    if let Some(sniffer) = &conn.sniffer {
        let verdict = sniffer.lock().ok().and_then(|mut s| s.next_verdict());
        if let Some(verdict) = verdict
            && !verdict.is_clean()
        {
            tracing::info!(?verdict, "ambiguous request framing refused");
            return close(simple(
                StatusCode::BAD_REQUEST,
                "Ambiguous message framing\n",
            ));
        }
    }
    let limits = &listener.shared.limits;
    if request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len())
        > limits.http_max_uri_bytes
    {
        return simple(StatusCode::URI_TOO_LONG, "URI too long\n");
    }
    let host = request_host(&request);
    // Routed and forwarded by one spelling of the path: `..` or an escape cannot lead a
    // request out of the route it was authorised for.
    let path = match normalize_path(request.uri().path()) {
        Ok(path) => path,
        Err(e) => {
            tracing::info!(error = %e, "request path refused");
            return simple(StatusCode::BAD_REQUEST, "Bad request path\n");
        }
    };

    if let Some(route) = listener.router.well_known(host.as_deref(), &path) {
        // RFC 6764 section 5: redirect to the context path of the service, on the scheme, host
        // and port the client used (clients compare the origin of the redirect).
        let context = if route.prefix == "/" {
            "/".to_owned()
        } else {
            format!("{}/", route.prefix)
        };
        let location = match host
            .as_deref()
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
        {
            Some(authority) => format!("https://{authority}{context}"),
            None => context,
        };
        let mut response = simple(StatusCode::MOVED_PERMANENTLY, "");
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        return response;
    }
    let Some(route) = listener.router.find(host.as_deref(), &path) else {
        return simple(StatusCode::NOT_FOUND, "No such service here\n");
    };
    let Some(backend) = listener.backends.get(route.backend) else {
        return simple(StatusCode::INTERNAL_SERVER_ERROR, "Misconfigured route\n");
    };

    let grant = match authenticate(&request, route, conn, listener).await {
        Ok(grant) => grant,
        Err(response) => return response,
    };
    conn.admitted.logged_in();
    watch(conn, &grant);
    let target = Target {
        path: &path,
        host: host.as_deref(),
    };
    forward(request, route, listener, backend, &grant, conn, target).await
}

/// The Host header (HTTP/1.1) or the URI authority (HTTP/2).
fn request_host<B>(request: &Request<B>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

async fn authenticate(
    request: &Request<Incoming>,
    route: &Route,
    conn: &Connection,
    listener: &HttpListener,
) -> Result<Grant, Response<ResponseBody>> {
    let shared = &listener.shared;
    let challenge = || {
        let mut response = simple(StatusCode::UNAUTHORIZED, "Authentication required\n");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, listener.realm.clone());
        response
    };
    let Some(authorization) = request.headers().get(header::AUTHORIZATION) else {
        // The first request of most clients: they send credentials once challenged.
        return Err(challenge());
    };
    let gate = Gate::arrived(shared, conn.peer.ip().into());
    let protocol = Protocol::over_http(route.service).unwrap_or(Protocol::WebDav);
    let Some(credentials) = parse_basic(authorization.as_bytes())
        .map(|(login, secret)| Credentials::new(login, secret))
    else {
        gate.refuse("", route.service, protocol, "malformed").await;
        return Err(challenge());
    };
    match gate.check(route.service, protocol, &credentials).await {
        Ok(grant) => Ok(grant),
        Err(AuthError::Rejected) => Err(challenge()),
        Err(AuthError::Unavailable(_)) => {
            let mut response = simple(StatusCode::SERVICE_UNAVAILABLE, "Try again later\n");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            Err(response)
        }
    }
}

/// Watches each credential used on the connection once; when one dies, the connection closes.
fn watch(conn: &Connection, grant: &Grant) {
    let key = (grant.login.as_str().to_owned(), grant.credential);
    let new = conn
        .watched
        .lock()
        .is_ok_and(|mut watched| watched.insert(key));
    if !new {
        return;
    }
    let grant = grant.clone();
    let revoked = conn.revoked.clone();
    if let Ok(mut watchers) = conn.watchers.lock() {
        watchers.spawn(async move {
            grant.dead().await;
            revoked.cancel();
        });
    }
}

/// Where a request was routed: its normalised path and the host it named.
struct Target<'a> {
    path: &'a str,
    host: Option<&'a str>,
}

/// Why a WebDAV `Destination` was refused.
enum DestinationError {
    /// Not a URI, or a path that does not normalise (400).
    Malformed,
    /// Another host, or another route on this one (502, RFC 4918 section 9.8.5: the destination
    /// is in another namespace).
    Elsewhere,
}

/// The backend URL for a `Destination` (RFC 4918 section 10.3): an absolute URI on the host the
/// request named, or an absolute path, whose normalised path lies in the request's own route.
fn backend_destination(
    value: &str,
    route: &Route,
    listener: &HttpListener,
    backend: &HttpBackend,
    host: Option<&str>,
) -> Result<String, DestinationError> {
    let uri: http::Uri = value.parse().map_err(|_| DestinationError::Malformed)?;
    if let Some(authority) = uri.authority() {
        let same_host = host.is_some_and(|h| {
            crate::protocol::http::host_without_port(h)
                == crate::protocol::http::host_without_port(authority.as_str())
        });
        if !same_host || uri.scheme_str().is_some_and(|s| s != "https") {
            return Err(DestinationError::Elsewhere);
        }
    }
    let path = normalize_path(uri.path()).map_err(|_| DestinationError::Malformed)?;
    match listener.router.find(host, &path) {
        Some(found) if found == route => Ok(join(
            backend.origin(),
            &route.map_path(&path, backend.base_path()),
        )),
        _ => Err(DestinationError::Elsewhere),
    }
}

async fn forward(
    request: Request<Incoming>,
    route: &Route,
    listener: &HttpListener,
    backend: &HttpBackend,
    grant: &Grant,
    conn: &Connection,
    target: Target<'_>,
) -> Response<ResponseBody> {
    let host = target.host;
    let (mut parts, body) = request.into_parts();
    let public_origin = host.map(|h| format!("https://{h}"));
    let public_base = public_origin.as_deref().map(|o| join(o, &route.prefix));
    let backend_base = join(backend.origin(), backend.base_path());

    let path = route.map_path(target.path, backend.base_path());
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let Ok(uri) = backend.uri(&path_and_query) else {
        return simple(StatusCode::BAD_REQUEST, "Bad request target\n");
    };

    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    // Forwarding headers and the user header from the client are not believed: ours replace
    // them. Names are compared with `_` folded to `-`, since WSGI and CGI backends read
    // `X_Remote_User` and `X-Remote-User` as one variable (and join the two values).
    let user_header = HeaderName::from_bytes(backend.config.header.as_bytes()).ok();
    let mut ours: Vec<&str> = vec![
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        // The prefix the backend builds its links under is the route's, never the client's.
        "x-script-name",
    ];
    if let Some(name) = &user_header {
        ours.push(name.as_str());
    }
    strip_spoofable(headers, &ours);
    let destination = HeaderName::from_static("destination");
    if let Some(value) = headers.get(&destination) {
        let rewritten = value
            .to_str()
            .map_err(|_| DestinationError::Malformed)
            .and_then(|text| backend_destination(text, route, listener, backend, host))
            .and_then(|url| HeaderValue::from_str(&url).map_err(|_| DestinationError::Malformed));
        match rewritten {
            Ok(value) => {
                headers.insert(destination, value);
            }
            Err(DestinationError::Malformed) => {
                return simple(StatusCode::BAD_REQUEST, "Bad Destination\n");
            }
            Err(DestinationError::Elsewhere) => {
                tracing::info!(login = %grant.login, "Destination outside the route refused");
                return simple(
                    StatusCode::BAD_GATEWAY,
                    "The Destination is outside this service\n",
                );
            }
        }
    }
    let ip = conn.peer.ip().to_string();
    insert(headers, "x-forwarded-for", &ip);
    insert(headers, "x-forwarded-proto", "https");
    let for_ip = if conn.peer.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    let mut forwarded = format!("for={};proto=https", forwarded_value(&for_ip));
    if let Some(host) = host {
        insert(headers, "x-forwarded-host", host);
        forwarded.push_str(&format!(";host={}", forwarded_value(host)));
    }
    insert(headers, "forwarded", &forwarded);
    if route.prefix != "/" {
        // Radicale and WSGI servers build their links under this prefix.
        insert(headers, "x-script-name", &route.prefix);
    }
    if let Some(name) = user_header
        && let Ok(value) = HeaderValue::from_str(&backend.user_for(&grant.login))
    {
        headers.insert(name, value);
    }
    if let Some(basic) = backend.basic_authorization()
        && let Ok(value) = HeaderValue::from_bytes(basic.expose())
    {
        let mut value = value;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(backend.authority().as_str()) {
        headers.insert(header::HOST, value);
    }
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;

    let method = parts.method.clone();
    let response = match backend.send(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(HttpBackendError::Timeout(origin)) => {
            tracing::warn!(backend = %backend.name, %origin, "backend timed out");
            return simple(
                StatusCode::GATEWAY_TIMEOUT,
                "The server behind the gateway did not answer in time\n",
            );
        }
        Err(e @ HttpBackendError::Failed(..)) => {
            tracing::warn!(backend = %backend.name, error = %e, "backend request failed");
            return simple(
                StatusCode::BAD_GATEWAY,
                "The server behind the gateway is unavailable\n",
            );
        }
    };
    tracing::debug!(%method, status = %response.status(), login = %grant.login, "forwarded");

    let (mut parts, body) = response.into_parts();
    // The backend's HTTP version is its own business (wsgiref answers HTTP/1.0); the client
    // gets the version of its own connection.
    parts.version = http::Version::default();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(public) = public_base.as_deref() {
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(value) = parts.headers.get(&name)
                && let Ok(text) = value.to_str()
                && let Some(rewritten) = rewrite_prefix(text, &backend_base, public)
                && let Ok(value) = HeaderValue::from_str(&rewritten)
            {
                parts.headers.insert(name, value);
            }
        }
    }
    Response::from_parts(parts, body.boxed())
}

/// Removes every header that a backend could read as one of `names` (lower-case): the same
/// name with `_` for `-`, in any case.
fn strip_spoofable(headers: &mut http::HeaderMap, names: &[&str]) {
    let folded = |name: &str| name.replace('_', "-");
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|key| {
            names
                .iter()
                .any(|name| folded(name) == folded(key.as_str()))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

fn join(origin: &str, path: &str) -> String {
    crate::protocol::http::join_path(origin, path)
}

fn insert(headers: &mut http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// A short plain-text response made by the gateway itself.
fn simple(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Asks hyper to close the connection after this response.
fn close(mut response: Response<ResponseBody>) -> Response<ResponseBody> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

//! The `[auth_http]` listener: portcullis as the auth server of nginx's mail proxy.
//!
//! Each request is one login nginx's proxy received ([`protocol::nginx_auth`](crate::protocol::nginx_auth)
//! reads it). It goes through the same login gate as a login to portcullis's own listeners
//! (throttle by the client's address, the credential index with its generation and scope
//! checks, last use, the failure delay, the fail2ban line), and a success is answered with the
//! backend and the master credentials nginx logs in there with. nginx owns the session after
//! that: unlike portcullis's own listeners, a revoked password cannot cut a session already
//! proxied by nginx; its next login is refused.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::gate::Gate;
use super::{Shared, StartError};
use crate::config::AuthHttpConfig;
use crate::credentials::{AuthError, Origin, Service};
use crate::protocol::nginx_auth::{Answer, Field, MailProtocol, Request};
use crate::upstream::Backend;

/// Time nginx has to send its request's headers.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// What every request of the listener needs.
struct Context {
    shared: Arc<Shared>,
    /// The backend of each protocol, with its address as nginx wants it.
    backends: HashMap<MailProtocol, (Arc<Backend>, SocketAddr)>,
    max_attempts: u32,
}

/// Binds every `listen` address and spawns its accept loop. `backends` holds every mail
/// backend the configuration names, built once.
pub async fn start(
    config: &AuthHttpConfig,
    shared: &Arc<Shared>,
    backends: &HashMap<String, Arc<Backend>>,
    tracker: &TaskTracker,
) -> Result<(), StartError> {
    let mut by_protocol = HashMap::new();
    for protocol in [MailProtocol::Imap, MailProtocol::Pop3, MailProtocol::Smtp] {
        let Some(name) = config.backend_for(protocol.name()) else {
            continue;
        };
        let backend = backends
            .get(name)
            .ok_or_else(|| StartError::Backend(format!("[auth_http]: no backend {name:?}")))?;
        // Checked by the configuration's validation; nginx wants an IP address.
        let address: SocketAddr = backend.config.address().parse().map_err(|_| {
            StartError::Backend(format!(
                "[auth_http]: [backend.{name}] address is not IP:PORT"
            ))
        })?;
        by_protocol.insert(protocol, (backend.clone(), address));
    }
    let context = Arc::new(Context {
        shared: shared.clone(),
        backends: by_protocol,
        max_attempts: config.max_attempts,
    });
    let requests = Arc::new(Semaphore::new(config.max_connections));
    for &address in &config.listen {
        let socket = TcpListener::bind(address)
            .await
            .map_err(|source| StartError::Bind { address, source })?;
        tracing::info!(%address, "auth_http listening for nginx");
        let (context, requests, inner) = (context.clone(), requests.clone(), tracker.clone());
        tracker.spawn(async move {
            let shutdown = context.shared.shutdown.clone();
            loop {
                // A place first: past the limit, connections wait in the kernel's backlog.
                let permit = tokio::select! {
                    () = shutdown.cancelled() => return,
                    permit = requests.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = socket.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        super::accept_failed(&e).await;
                        continue;
                    }
                };
                let context = context.clone();
                inner.spawn(async move {
                    let _permit = permit;
                    serve(stream, peer, context).await;
                });
            }
        });
    }
    Ok(())
}

async fn serve(stream: tokio::net::TcpStream, peer: SocketAddr, context: Arc<Context>) {
    let shutdown = context.shared.shutdown.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
        let context = context.clone();
        async move { Ok::<_, Infallible>(respond(&request, peer, &context).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE)
        .max_buf_size(16 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = connection => {}
    }
}

async fn respond<B>(
    request: &hyper::Request<B>,
    peer: SocketAddr,
    context: &Context,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "nginx asks with GET\n");
    }
    let headers = request.headers();
    let answer = match Request::parse(|name| headers.get(name).map(HeaderValue::as_bytes)) {
        Ok(login) => decide(login, peer.ip(), context).await,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "nginx asked what portcullis cannot decide");
            let smtp = headers
                .get("Auth-Protocol")
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"smtp"));
            Answer::Unsupported {
                protocol: smtp.then_some(MailProtocol::Smtp),
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    for field in answer.fields() {
        let (name, value) = match field {
            Field::Text(name, text) => (name, HeaderValue::from_str(&text)),
            Field::Secret(name, secret) => (
                name,
                HeaderValue::from_bytes(secret.expose()).map(|mut v| {
                    v.set_sensitive(true);
                    v
                }),
            ),
        };
        match value {
            Ok(value) => {
                response.headers_mut().insert(name, value);
            }
            Err(_) => {
                // A login or master password with a line break cannot go in a header.
                tracing::error!(header = name, "cannot put a value in an auth_http answer");
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "");
            }
        }
    }
    response
}

/// Checks one login through the gate and says where nginx goes with it.
async fn decide(request: Request, daemon: IpAddr, context: &Context) -> Answer {
    let protocol = request.protocol;
    let Some((backend, address)) = context.backends.get(&protocol) else {
        tracing::warn!(
            protocol = protocol.name(),
            "nginx proxies a protocol [auth_http] names no backend for"
        );
        return Answer::Unsupported {
            protocol: Some(protocol),
        };
    };
    // nginx names the end user's address (Client-IP): the throttle keys on it, and the record
    // says whose word it is. Without it the address is nginx's own, shared by all its users.
    let origin = Origin {
        ip: request.client_ip.unwrap_or(daemon),
        reported_by: Some(format!("nginx auth_http {daemon}")),
        ip_known: request.client_ip.is_some(),
    };
    let gate = Gate::arrived(&context.shared, origin);
    let gate = if request.client_ip.is_some() {
        gate
    } else {
        gate.client_unknown()
    };
    match gate
        .check(Service::Mail, protocol.protocol(), &request.credentials)
        .await
    {
        Ok(grant) => {
            let user = backend.user_for(&grant.login);
            match protocol {
                // nginx names the user to the SMTP backend with XCLIENT LOGIN=.
                MailProtocol::Smtp => Answer::Proxy {
                    backend: *address,
                    user,
                    password: None,
                },
                MailProtocol::Imap | MailProtocol::Pop3 => match backend.master_login(&user) {
                    Some((user, password)) => Answer::Proxy {
                        backend: *address,
                        user,
                        password: Some(password.clone()),
                    },
                    None => {
                        tracing::error!(backend = %backend.name, "no master credentials for nginx");
                        Answer::Unavailable { protocol }
                    }
                },
            }
        }
        Err(AuthError::Rejected) => Answer::Refused {
            protocol,
            retry: request.attempt < context.max_attempts,
        },
        Err(AuthError::Unavailable(reason)) => {
            tracing::warn!(%reason, "login could not be checked for nginx");
            Answer::Unavailable { protocol }
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

//! HTTP for WebDAV, CalDAV and CardDAV: the parts that need no I/O.
//!
//! Routing by host and path prefix, HTTP Basic credentials (RFC 7617), the header rules of a
//! reverse proxy (hop-by-hop headers, RFC 9110 section 7.6.1; forwarding headers; origin
//! rewriting for `Destination` and `Location`), and [`FramingSniffer`], which spots request
//! smuggling that hyper would otherwise quietly repair.

pub mod sniffer;

pub use sniffer::FramingSniffer;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::{self, HeaderName};

use crate::config::RouteConfig;
use crate::credentials::{Secret, Service};

/// One route: requests for `host` (any host when `None`) under `prefix` go to `backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub host: Option<String>,
    /// Without a trailing slash, except the root `/`.
    pub prefix: String,
    pub service: Service,
    /// Index into the listener's backends.
    pub backend: usize,
}

impl Route {
    /// Whether `path` is under this route's prefix (at a segment boundary).
    fn covers(&self, path: &str) -> bool {
        self.prefix == "/"
            || path == self.prefix
            || path
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The request path with this route's prefix replaced by `base` (a backend URL path).
    pub fn map_path(&self, path: &str, base: &str) -> String {
        let rest = if self.prefix == "/" {
            path
        } else {
            path.strip_prefix(self.prefix.as_str()).unwrap_or(path)
        };
        join_path(base, rest)
    }
}

/// Why a request path was refused (400) instead of routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("the path has an encoded slash")]
    EncodedSlash,
    #[error("the path has an encoded dot segment")]
    EncodedDotSegment,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path has a NUL byte")]
    Nul,
    #[error("the path has a malformed percent-encoding")]
    BadEscape,
}

/// The path a request is routed by and forwarded with: one spelling for every way of writing
/// it, so no trick of the path leads out of a route.
///
/// Dot segments are removed (RFC 3986 section 5.2.4; `..` at the root stays there),
/// percent-encoded unreserved characters decoded and other escapes upper-cased (section 6.2.2),
/// and empty segments (`//`) dropped. What backends would not all read the same way is refused:
/// an encoded `/` (one segment or two?), an encoded dot segment (`%2e%2e`: a backend that
/// decodes after routing would climb), a backslash (a separator on some servers) and NUL.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = raw.ends_with('/');
    for raw_segment in rest.split('/') {
        let (segment, had_encoded_dot) = decode_segment(raw_segment)?;
        match segment.as_str() {
            "." | ".." if had_encoded_dot => return Err(PathError::EncodedDotSegment),
            "" => {}
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => {
                segments.push(segment);
                trailing_slash = raw.ends_with('/');
            }
        }
    }
    let mut path = format!("/{}", segments.join("/"));
    if trailing_slash && !segments.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// One path segment with unreserved characters decoded and other escapes upper-cased; also
/// whether a `.` in it was encoded.
fn decode_segment(raw: &str) -> Result<(String, bool), PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let text = std::str::from_utf8(hex).map_err(|_| PathError::BadEscape)?;
                if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(PathError::BadEscape);
                }
                let byte = u8::from_str_radix(text, 16).map_err(|_| PathError::BadEscape)?;
                match byte {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0 => return Err(PathError::Nul),
                    b'.' => {
                        encoded_dot = true;
                        out.push('.');
                    }
                    b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') => {
                        out.push(char::from(b));
                    }
                    b => out.push_str(&format!("%{b:02X}")),
                }
                i += 3;
            }
            _ => {
                // Not an escape: copy the character whole (the path is a str).
                let c = raw[i..].chars().next().ok_or(PathError::BadEscape)?;
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    Ok((out, encoded_dot))
}

/// `base` and `rest` joined with exactly one slash between them.
pub fn join_path(base: &str, rest: &str) -> String {
    let base = base.trim_end_matches('/');
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() && !base.is_empty() {
        return format!("{base}/");
    }
    format!("{base}/{rest}")
}

/// The routes of one listener, most specific first.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the router; `backend_index` turns a backend name into its index.
    pub fn new(configs: &[RouteConfig], backend_index: impl Fn(&str) -> usize) -> Self {
        let mut routes: Vec<Route> = configs
            .iter()
            .map(|c| Route {
                host: c.host.as_deref().map(str::to_ascii_lowercase),
                prefix: normalize_prefix(&c.path_prefix),
                service: c.service,
                backend: backend_index(&c.backend),
            })
            .collect();
        // A route naming the host beats one that does not; a longer prefix beats a shorter one.
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        Self { routes }
    }

    /// The route for a request, if any. `host` is the Host header or `:authority`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(host_without_port);
        self.routes.iter().find(|r| {
            let host_ok = match (&r.host, &host) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
            };
            host_ok && r.covers(path)
        })
    }

    /// For `/.well-known/caldav` and `/.well-known/carddav` (RFC 6764 section 5): the route
    /// serving that service on this host, whose prefix is the context path to redirect to.
    pub fn well_known(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let service = match path.trim_end_matches('/') {
            "/.well-known/caldav" => Service::Calendar,
            "/.well-known/carddav" => Service::Contacts,
            _ => return None,
        };
        let host = host.map(host_without_port);
        self.routes.iter().find(|r| {
            r.service == service
                && match (&r.host, &host) {
                    (None, _) => true,
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                }
        })
    }
}

fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// `Host` without its port, lower-cased (`[::1]:8443` → `[::1]`).
pub fn host_without_port(host: &str) -> String {
    let host = host.trim();
    let bare = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    bare.to_ascii_lowercase()
}

/// Longest user-id or password accepted in Basic credentials.
const MAX_BASIC_FIELD: usize = 1024;

/// Parses `Authorization: Basic …` (RFC 7617): the scheme case-insensitively, a base64 token,
/// UTF-8 `user-id:password` with no colon in the user-id and no control characters.
pub fn parse_basic(value: &[u8]) -> Option<(String, Secret)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let token = token.trim();
    if token.len() > 4 * MAX_BASIC_FIELD {
        return None;
    }
    let decoded = STANDARD.decode(token).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    if user.is_empty()
        || password.is_empty()
        || user.len() > MAX_BASIC_FIELD
        || password.len() > MAX_BASIC_FIELD
        || user.chars().chain(password.chars()).any(char::is_control)
    {
        return None;
    }
    Some((user.to_owned(), Secret::from(password)))
}

/// `Basic` credentials for a backend.
pub fn basic_header(user: &str, password: &Secret) -> Secret {
    let mut raw = user.as_bytes().to_vec();
    raw.push(b':');
    raw.extend_from_slice(password.expose());
    Secret::new(format!("Basic {}", STANDARD.encode(&raw)).into_bytes())
}

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), plus
/// `Proxy-Connection` and `Keep-Alive`, which old clients still send.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A value for a `Forwarded` parameter (RFC 7239 section 4): a token as it is, anything else
/// as a quoted-string (a host with a port has a `:`, which a token cannot hold).
pub fn forwarded_value(value: &str) -> String {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !value.is_empty() && value.chars().all(tchar) {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// If `uri` starts with `from` (an origin plus path prefix), the same URI under `to`.
/// Used for `Destination` (public → backend) and `Location` (backend → public).
pub fn rewrite_prefix(uri: &str, from: &str, to: &str) -> Option<String> {
    let from_trimmed = from.trim_end_matches('/');
    let rest = uri.strip_prefix(from_trimmed)?;
    if rest.starts_with('?') {
        return Some(format!("{}{rest}", to.trim_end_matches('/')));
    }
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some(join_path(to, rest))
}

#[cfg(test)]
mod tests;

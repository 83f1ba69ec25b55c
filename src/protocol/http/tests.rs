use super::*;

fn route(host: Option<&str>, prefix: &str, service: Service, backend: &str) -> RouteConfig {
    RouteConfig {
        host: host.map(str::to_owned),
        path_prefix: prefix.to_owned(),
        service,
        backend: backend.to_owned(),
    }
}

fn router() -> Router {
    let configs = [
        route(Some("webdav.localhost"), "/", Service::Disk, "dav"),
        route(Some("caldav.localhost"), "/", Service::Calendar, "rad"),
        route(Some("carddav.localhost"), "/", Service::Contacts, "rad"),
        route(None, "/files", Service::Disk, "dav"),
        route(None, "/cal/", Service::Calendar, "rad"),
    ];
    Router::new(&configs, |name| usize::from(name == "rad"))
}

#[test]
fn routes_match_host_then_longest_prefix() {
    let r = router();
    assert_eq!(
        r.find(Some("WebDAV.localhost:8443"), "/a/b")
            .unwrap()
            .service,
        Service::Disk
    );
    assert_eq!(
        r.find(Some("caldav.localhost"), "/").unwrap().service,
        Service::Calendar
    );
    assert_eq!(
        r.find(Some("other"), "/files/x").unwrap().service,
        Service::Disk
    );
    assert_eq!(
        r.find(Some("other"), "/files").unwrap().service,
        Service::Disk
    );
    assert_eq!(
        r.find(None, "/cal/alice/").unwrap().service,
        Service::Calendar
    );
    assert!(
        r.find(Some("other"), "/filesx").is_none(),
        "prefixes match whole segments"
    );
    assert!(r.find(Some("other"), "/").is_none(), "no default service");
    assert_eq!(r.find(Some("caldav.localhost"), "/x").unwrap().backend, 1);
}

#[test]
fn well_known_finds_the_context_path() {
    let r = router();
    let cal = r
        .well_known(Some("caldav.localhost"), "/.well-known/caldav")
        .unwrap();
    assert_eq!((cal.service, cal.prefix.as_str()), (Service::Calendar, "/"));
    let any = r.well_known(Some("other"), "/.well-known/caldav").unwrap();
    assert_eq!(any.prefix, "/cal");
    assert!(
        r.well_known(Some("other"), "/.well-known/carddav")
            .is_none()
    );
    assert!(r.well_known(Some("x"), "/.well-known/other").is_none());
}

#[test]
fn path_mapping_and_joining() {
    let r = router();
    let files = r.find(None, "/files/a b/c").unwrap();
    assert_eq!(files.map_path("/files/a%20b/c", "/dav/"), "/dav/a%20b/c");
    assert_eq!(files.map_path("/files", "/"), "/");
    let root = r.find(Some("webdav.localhost"), "/x").unwrap();
    assert_eq!(root.map_path("/x/y", "/"), "/x/y");
    assert_eq!(root.map_path("/x/", "/base"), "/base/x/");
}

#[test]
fn hosts_lose_their_ports() {
    assert_eq!(host_without_port("Example.ORG:443"), "example.org");
    assert_eq!(host_without_port("[::1]:8443"), "[::1]");
    assert_eq!(host_without_port("localhost"), "localhost");
}

#[test]
fn basic_credentials_per_rfc7617() {
    // RFC 7617 section 2 example: Aladdin / open sesame.
    let (user, secret) = parse_basic(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==").unwrap();
    assert_eq!(
        (user.as_str(), secret.expose()),
        ("Aladdin", &b"open sesame"[..])
    );
    // Section 2.1 example: UTF-8 "test" / "123£".
    let (user, secret) = parse_basic(b"basic dGVzdDoxMjPCow==").unwrap();
    assert_eq!(
        (user.as_str(), secret.expose()),
        ("test", "123£".as_bytes())
    );
    // The password may contain colons.
    let (_, secret) =
        parse_basic(format!("Basic {}", STANDARD.encode("a:b:c")).as_bytes()).unwrap();
    assert_eq!(secret.expose(), b"b:c");
    for bad in [
        "Bearer abc",
        "Basic",
        "Basic !!!",
        "Basic dXNlcg==", // no colon
        "Basic OnB3",     // empty user
        "Basic dTo=",     // empty password
        "Basic dQB4OnB3", // NUL in user
        "Basic //79",     // not UTF-8
    ] {
        assert!(parse_basic(bad.as_bytes()).is_none(), "{bad}");
    }
    let header = basic_header("svc", &Secret::from("pw"));
    assert_eq!(header.expose(), b"Basic c3ZjOnB3");
}

#[test]
fn hop_by_hop_headers_go_including_those_named_by_connection() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("connection", "keep-alive, x-private"),
        ("keep-alive", "timeout=5"),
        ("x-private", "1"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("proxy-authorization", "Basic x"),
        ("depth", "1"),
        ("destination", "/x"),
    ] {
        h.append(HeaderName::from_static(k), v.parse().unwrap());
    }
    strip_hop_by_hop(&mut h);
    let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    assert_eq!(left, vec!["depth", "destination"]);
}

#[test]
fn origin_rewriting() {
    assert_eq!(
        rewrite_prefix(
            "https://webdav.localhost:8443/a/b%20c",
            "https://webdav.localhost:8443/",
            "http://127.0.0.1:18090/"
        )
        .as_deref(),
        Some("http://127.0.0.1:18090/a/b%20c")
    );
    assert_eq!(
        rewrite_prefix("https://h/files/x", "https://h/files", "http://b/dav/").as_deref(),
        Some("http://b/dav/x")
    );
    assert_eq!(
        rewrite_prefix("https://h/filesx", "https://h/files", "http://b/").as_deref(),
        None
    );
    assert_eq!(
        rewrite_prefix("https://other/x", "https://h/", "http://b/"),
        None
    );
    assert_eq!(
        rewrite_prefix("http://b/?q=1", "http://b/", "https://h/").as_deref(),
        Some("https://h/?q=1")
    );
    assert_eq!(
        rewrite_prefix("http://b?q=1", "http://b/", "https://h/x/").as_deref(),
        Some("https://h/x?q=1")
    );
}

#[test]
fn forwarded_values_are_tokens_or_quoted_strings() {
    assert_eq!(forwarded_value("192.0.2.60"), "192.0.2.60");
    assert_eq!(forwarded_value("https"), "https");
    assert_eq!(forwarded_value("example.org:8443"), "\"example.org:8443\"");
    assert_eq!(forwarded_value("[2001:db8::1]"), "\"[2001:db8::1]\"");
    assert_eq!(forwarded_value("a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_eq!(forwarded_value(""), "\"\"");
}

#[test]
fn paths_have_one_spelling() {
    for (raw, normal) in [
        ("/", "/"),
        ("/dav/a.txt", "/dav/a.txt"),
        ("/dav/", "/dav/"),
        ("/dav/../cal/secret.ics", "/cal/secret.ics"),
        ("/dav/./x/../../cal/", "/cal/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("//dav///a//b", "/dav/a/b"),
        ("/dav/x/..", "/dav/"),
        ("/dav/x/.", "/dav/x/"),
        ("/..", "/"),
        ("/d%61v/%7Euser/%41", "/dav/~user/A"),
        ("/dav/a%20b/%e2%82%ac", "/dav/a%20b/%E2%82%AC"),
        ("/dav/file%2etxt", "/dav/file.txt"),
        ("/dav/a..b/...", "/dav/a..b/..."),
        ("/dav/caf\u{e9}", "/dav/caf\u{e9}"),
    ] {
        assert_eq!(normalize_path(raw).as_deref(), Ok(normal), "{raw}");
    }
    for (raw, error) in [
        ("dav/x", PathError::NotAbsolute),
        ("*", PathError::NotAbsolute),
        ("/dav/%2e%2e/cal/secret.ics", PathError::EncodedDotSegment),
        ("/dav/%2E%2E/cal/", PathError::EncodedDotSegment),
        ("/dav/.%2e/cal/", PathError::EncodedDotSegment),
        ("/dav/%2e/x", PathError::EncodedDotSegment),
        ("/dav/..%2fcal/x", PathError::EncodedSlash),
        ("/dav%2Fcal/x", PathError::EncodedSlash),
        ("/dav/..\\cal/x", PathError::Backslash),
        ("/dav/%5c/x", PathError::Backslash),
        ("/dav/%00x", PathError::Nul),
        ("/dav/%zz", PathError::BadEscape),
        ("/dav/%+1", PathError::BadEscape),
        ("/dav/%4", PathError::BadEscape),
    ] {
        assert_eq!(normalize_path(raw), Err(error), "{raw}");
    }
}

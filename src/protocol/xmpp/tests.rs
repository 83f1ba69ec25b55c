use super::*;
use crate::protocol::PreAuth as _;
use crate::protocol::testing::{feed, written};

fn settings(tls: bool) -> Settings {
    Settings {
        domain: "example.org".into(),
        max_element: 8192,
        max_failures: 2,
        tls,
        starttls: !tls,
        plaintext_auth: false,
        stream_id: "s1".into(),
    }
}

const HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.org' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

#[test]
fn starttls_is_required_then_plain_is_offered_after_the_restart() {
    let mut m = PreAuth::new(settings(false));
    let out = written(&feed(&mut m, HEADER.as_bytes()));
    assert!(
        out.contains("<stream:stream") && out.contains("from='example.org'"),
        "{out}"
    );
    assert!(
        out.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"),
        "{out}"
    );
    assert!(!out.contains("mechanism"), "no SASL before TLS: {out}");
    // Auth before TLS is refused.
    let out = written(&feed(
        &mut m,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>",
    ));
    assert!(out.contains("<encryption-required/>"), "{out}");
    // STARTTLS with an injected auth behind it: the auth is discarded with the restart.
    let actions = feed(&mut m, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>");
    assert!(
        matches!(actions.last(), Some(Action::StartTls(b)) if b == b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    );
    m.tls_started();
    assert!(feed(&mut m, b"").is_empty());
    let out = written(&feed(&mut m, HEADER.as_bytes()));
    assert!(
        out.contains("<mechanism>PLAIN</mechanism>") && !out.contains("starttls"),
        "{out}"
    );
}

#[test]
fn sasl_login_runs_the_shared_exchange() {
    let mut m = PreAuth::new(settings(true));
    let out = written(&feed(&mut m, HEADER.as_bytes()));
    assert!(
        out.contains("<mechanism>PLAIN</mechanism><mechanism>LOGIN</mechanism>"),
        "{out}"
    );
    let out = written(&feed(
        &mut m,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='LOGIN'/>",
    ));
    assert_eq!(
        out,
        "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>VXNlcm5hbWU6</challenge>"
    );
    let out = written(&feed(
        &mut m,
        b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>YWxpY2U=</response>",
    ));
    assert_eq!(
        out,
        "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>UGFzc3dvcmQ6</challenge>"
    );
    let out = written(&feed(
        &mut m,
        b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>cHc=</response>",
    ));
    assert_eq!(out, "<login alice>");
    // A mechanism nobody offered fails, and counts.
    let mut m = PreAuth::new(settings(true));
    feed(&mut m, HEADER.as_bytes());
    let out = written(&feed(
        &mut m,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>",
    ));
    assert!(out.contains("<invalid-mechanism/>"), "{out}");
}

#[test]
fn sasl_plain_with_and_without_initial_response() {
    let mut m = PreAuth::new(settings(true));
    feed(&mut m, HEADER.as_bytes());
    let out = written(&feed(
        &mut m,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>",
    ));
    assert_eq!(out, "<login alice>");
    assert_eq!(
        m.login_accepted(),
        b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    );
    assert!(matches!(m.next_restart(), Restart::NeedInput));

    let mut m = PreAuth::new(settings(true));
    feed(&mut m, HEADER.as_bytes());
    let out = written(&feed(
        &mut m,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>",
    ));
    assert_eq!(out, "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    let out = written(&feed(
        &mut m,
        b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>AGFsaWNlAHB3</response>",
    ));
    assert_eq!(out, "<login alice>");
    // The restarted stream header pipelined behind the auth goes to the backend untouched.
    let mut m = PreAuth::new(settings(true));
    feed(&mut m, HEADER.as_bytes());
    feed(&mut m, format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>{RESTART}").as_bytes());
    m.login_accepted();
    assert!(matches!(m.next_restart(), Restart::Restarted(b) if b == RESTART.as_bytes()));
}

const RESTART: &str = "<stream:stream to='example.org' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
const AUTH: &str =
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>";

/// A logged-in machine, with `after_auth` sent right behind the `<auth/>`.
fn logged_in(after_auth: &str) -> PreAuth {
    let mut m = PreAuth::new(settings(true));
    feed(&mut m, HEADER.as_bytes());
    assert_eq!(
        written(&feed(&mut m, format!("{AUTH}{after_auth}").as_bytes())),
        "<login alice>"
    );
    m.login_accepted();
    m
}

/// Feeds `chunks` one by one after `<success/>`; the restart the backend would get.
fn restart_after(after_auth: &str, chunks: &[&str]) -> Result<Vec<u8>, String> {
    let mut m = logged_in(after_auth);
    let mut chunks = chunks.iter();
    loop {
        match m.next_restart() {
            Restart::Restarted(bytes) => return Ok(bytes),
            Restart::Failed(action) => return Err(written(&[action])),
            Restart::NeedInput => match chunks.next() {
                Some(chunk) => m.enqueue(chunk.as_bytes()),
                None => return Err("needs more input".into()),
            },
        }
    }
}

#[test]
fn the_backend_gets_a_clean_restart_whatever_whitespace_and_declaration_surround_it() {
    let iq = "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>";
    let cases: [(&str, Vec<String>, String); 7] = [
        // A newline after </auth>, then a declaration and the header once <success/> came.
        (
            "\n",
            vec![format!("<?xml version='1.0'?>\n{RESTART}\n")],
            format!("{RESTART}\n"),
        ),
        // The same, everything pipelined behind the auth, with the bind request.
        (
            &*Box::leak(
                format!("\r\n<?xml version=\"1.0\" encoding=\"UTF-8\"?> {RESTART}{iq}")
                    .into_boxed_str(),
            ),
            vec![],
            format!("{RESTART}{iq}"),
        ),
        ("", vec![RESTART.to_owned()], RESTART.to_owned()),
        (
            "  ",
            vec!["\t\n ".into(), RESTART.to_owned()],
            RESTART.to_owned(),
        ),
        // Split anywhere, even inside the declaration and the header.
        (
            "\n",
            vec![
                "<?xm".into(),
                "l version='1.0'?><stre".into(),
                format!("{}{iq}", &RESTART[5..]),
            ],
            format!("{RESTART}{iq}"),
        ),
        // Whitespace, and nothing but the header, is what a backend may see first.
        ("", vec![format!("{RESTART}\n\n")], format!("{RESTART}\n\n")),
        (
            "",
            vec!["<?xml version='1.0'?>".into(), RESTART.to_owned()],
            RESTART.to_owned(),
        ),
    ];
    for (after_auth, chunks, want) in cases {
        let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let got = restart_after(after_auth, &chunks)
            .unwrap_or_else(|e| panic!("{after_auth:?} {chunks:?}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            want,
            "{after_auth:?} {chunks:?}"
        );
    }
}

#[test]
fn anything_but_a_stream_restart_ends_the_stream() {
    for (after_auth, chunk, condition) in [
        ("", "<iq type='get' id='x'/>", "invalid-namespace"),
        (
            "",
            "<stream:stream to='other.example' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
            "host-unknown",
        ),
        ("", "hello", "not-well-formed"),
        (
            "",
            "<?xml version='1.0'?><?xml version='1.0'?>",
            "restricted-xml",
        ),
        ("", "<!DOCTYPE x [<!ENTITY a 'b'>]>", "not-well-formed"),
    ] {
        let out = restart_after(after_auth, &[chunk]).unwrap_err();
        assert!(out.contains(&format!("<{condition} ")), "{chunk}: {out}");
        assert!(out.ends_with("</stream:stream>"), "{chunk}: {out}");
    }
    // A header that never ends is cut off at the element limit, not buffered.
    let long = format!("<stream:stream to='example.org' a='{}", "x".repeat(9000));
    let out = restart_after("", &[&long]).unwrap_err();
    assert!(out.contains("<policy-violation "), "{out}");
}

#[test]
fn whitespace_before_the_first_header_is_harmless() {
    let mut m = PreAuth::new(settings(true));
    let out = written(&feed(&mut m, format!("\r\n{HEADER}").as_bytes()));
    assert!(out.contains("<mechanism>PLAIN</mechanism>"), "{out}");
}

#[test]
fn failures_are_not_authorized_and_close_after_the_limit() {
    let mut m = PreAuth::new(settings(true));
    feed(&mut m, HEADER.as_bytes());
    for i in 1..=2 {
        feed(
            &mut m,
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>",
        );
        let reply = m.login_rejected("");
        let out = written(std::slice::from_ref(&reply));
        assert!(out.starts_with(
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"
        ));
        assert_eq!(matches!(reply, Action::Close(_)), i == 2);
    }
    // Every kind of failure (under a higher limit, so all are seen on one stream).
    let mut m = PreAuth::new(Settings {
        max_failures: 10,
        ..settings(true)
    });
    feed(&mut m, HEADER.as_bytes());
    let out = written(&feed(
        &mut m,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>",
    ));
    assert!(out.contains("<invalid-mechanism/>"), "{out}");
    let out = written(&feed(
        &mut m,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!!</auth>",
    ));
    assert!(out.contains("<incorrect-encoding/>"), "{out}");
    let out = written(&feed(
        &mut m,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYgBj</auth>",
    ));
    assert!(
        out.contains("<malformed-request/>"),
        "NUL inside a field: {out}"
    );
    let out = written(&[m.login_unavailable("")]);
    assert!(out.contains("<temporary-auth-failure/>"), "{out}");
    // A stanza before authentication ends the stream.
    let actions = feed(
        &mut m,
        b"<message to='bob@example.org'><body>hi</body></message>",
    );
    assert!(
        matches!(actions.last(), Some(Action::Close(b)) if String::from_utf8_lossy(b).contains("<not-authorized"))
    );
}

#[test]
fn hostile_xml_gets_a_stream_error() {
    // Billion laughs: a DTD is not XML we accept.
    let laughs = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>&lol2;";
    let mut m = PreAuth::new(settings(true));
    let out = written(&feed(&mut m, laughs.as_bytes()));
    assert!(
        out.contains("<stream:error>") && out.ends_with("</stream:stream>"),
        "{out}"
    );
    // An element that never closes.
    let mut m = PreAuth::new(settings(true));
    feed(&mut m, HEADER.as_bytes());
    feed(
        &mut m,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>",
    );
    let mut closed = false;
    for _ in 0..100 {
        if let Some(Action::Close(b)) = feed(&mut m, &[b'A'; 1024]).last() {
            assert!(String::from_utf8_lossy(b).contains("policy-violation"));
            closed = true;
            break;
        }
    }
    assert!(closed, "the element kept growing");
    // A huge attribute.
    let mut m = PreAuth::new(settings(true));
    feed(&mut m, HEADER.as_bytes());
    feed(
        &mut m,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='",
    );
    let mut closed = false;
    for _ in 0..200 {
        if let Some(Action::Close(b)) = feed(&mut m, &[b'x'; 1024]).last() {
            let s = String::from_utf8_lossy(b);
            assert!(
                s.contains("policy-violation") || s.contains("restricted-xml"),
                "{s}"
            );
            closed = true;
            break;
        }
    }
    assert!(closed, "the attribute kept growing");
    // Processing instructions, undefined entities, a wrong namespace, another host, garbage.
    for (input, condition) in [
        (format!("{HEADER}<?evil?>"), "stream:error"),
        (
            format!(
                "{HEADER}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>&xxe;</auth>"
            ),
            "stream:error",
        ),
        (
            "<stream:stream xmlns:stream='urn:wrong'>".to_owned(),
            "invalid-namespace",
        ),
        (HEADER.replace("example.org", "other.org"), "host-unknown"),
        ("\u{0}\u{1}garbage".to_owned(), "stream:error"),
    ] {
        let mut m = PreAuth::new(settings(true));
        let out = written(&feed(&mut m, input.as_bytes()));
        assert!(
            out.contains(condition) && out.ends_with("</stream:stream>"),
            "{input}: {out}"
        );
        // A stream error before our header still comes with a header (RFC 6120 4.9.1.1).
        assert!(out.contains("<stream:stream"), "{out}");
    }
}

#[test]
fn failures_of_any_kind_count_toward_the_limit() {
    // Found by the fuzzer: mechanisms it does not offer, answered with a failure each, went
    // on forever on one stream.
    let mut m = PreAuth::new(settings(true));
    m.greeting();
    let bad = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-NONE'/>";
    let first = written(&feed(&mut m, format!("{HEADER}{bad}").as_bytes()));
    assert!(first.contains("<invalid-mechanism/>"), "{first}");
    let actions = feed(&mut m, bad.as_bytes());
    assert!(
        matches!(actions.last(), Some(Action::Close(bytes)) if String::from_utf8_lossy(bytes).contains("</stream:stream>")),
        "{actions:?}"
    );
}

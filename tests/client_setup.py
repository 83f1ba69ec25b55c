"""Clients that configure themselves, checked as the clients would use what they are given.

Run by tests/client_setup.rs with the portal's URL, the gateway's CA, a mail and a calendar app
password, the folder of the XML schemas, the zone `portcullis dns-records` printed, and the live
mail listeners (`kind:security:port,...`). Thunderbird's autoconfig and Outlook's Autodiscover
answers are validated against the schemas, then every server they name is logged in to with
imaplib, poplib or smtplib exactly as named (host, port, TLS, user name); the DNS records are
parsed with dnslib and followed the same way. Every check is an assert.
"""

import imaplib
import poplib
import smtplib
import ssl
import sys
import urllib.error
import urllib.request

import caldav
from dnslib import QTYPE, RR
from lxml import etree

portal, ca, mail_password, calendar_password, schemas, zone_path, live = sys.argv[1:8]
EMAIL = "alice@example.org"
LIVE = set(tuple(x.split(":")) for x in live.split(","))
ctx = ssl.create_default_context(cafile=ca)

REQUEST_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
OUTER = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"


def fetch(path, data=None, headers=None):
    request = urllib.request.Request(portal + path, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=20) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def log_in(kind, host, port, security, user):
    """Logs in as a mail program would with these settings; raises if it cannot."""
    port = int(port)
    if kind == "imap":
        if security == "SSL":
            client = imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=20)
        else:
            client = imaplib.IMAP4(host, port, timeout=20)
            client.starttls(ssl_context=ctx)
        client.login(user, mail_password)
        typ, _ = client.select("INBOX")
        assert typ == "OK", typ
        client.logout()
    elif kind == "pop3":
        if security == "SSL":
            client = poplib.POP3_SSL(host, port, context=ctx, timeout=20)
        else:
            client = poplib.POP3(host, port, timeout=20)
            client.stls(context=ctx)
        client.user(user)
        client.pass_(mail_password)
        client.stat()
        client.quit()
    elif kind == "smtp":
        if security == "SSL":
            client = smtplib.SMTP_SSL(host, port, context=ctx, timeout=20)
        else:
            client = smtplib.SMTP(host, port, timeout=20)
            client.starttls(context=ctx)
        client.login(user, mail_password)
        client.quit()
    else:
        raise AssertionError(f"unknown kind {kind}")


# Thunderbird: the file for the address, valid, naming exactly the live listeners.
status, headers, body = fetch("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice%40example.org")
assert status == 200, (status, body)
assert headers["Content-Type"].startswith("application/xml"), headers["Content-Type"]
schema = etree.XMLSchema(etree.parse(f"{schemas}/thunderbird-config-v1.1.xsd"))
doc = etree.fromstring(body)
schema.assertValid(doc)
provider = doc.find("emailProvider")
assert provider.get("id") == "example.org" and provider.findtext("domain") == "example.org", body
for required in ("displayName", "displayShortName", "incomingServer", "outgoingServer"):
    assert provider.find(required) is not None, required
seen = set()
for server in provider.findall("incomingServer") + provider.findall("outgoingServer"):
    kind, socket = server.get("type"), server.findtext("socketType")
    user = server.findtext("username").replace("%EMAILADDRESS%", EMAIL)
    log_in(kind, server.findtext("hostname"), server.findtext("port"), socket, user)
    seen.add((kind, socket, server.findtext("port")))
    print("AUTOCONFIG", kind, socket, server.findtext("port"), "LOGIN OK", flush=True)
assert seen == LIVE, (seen, LIVE)
first = provider.find("incomingServer")
assert first.get("type") == "imap" and first.findtext("socketType") == "SSL", "implicit TLS first"

# The same file on autoconfig.DOMAIN, where Thunderbird asks without the path prefix.
status, _, body = fetch("/mail/config-v1.1.xml", headers={"Host": "autoconfig.example.org"})
assert status == 200 and b"<domain>example.org</domain>" in body, (status, body)
# A domain the deployment does not serve, and an address that is none.
status, _, _ = fetch("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=bob%40elsewhere.test")
assert status == 404, status
status, _, _ = fetch("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=nonsense")
assert status == 400, status
print("AUTOCONFIG REFUSALS OK", flush=True)

# Outlook: POST as Outlook does (no Origin, no cookie), on either spelling of the path.
outer_schema = etree.XMLSchema(etree.parse(f"{schemas}/autodiscover-response.xsd"))


def autodiscover(email, schema=OUTLOOK, path="/autodiscover/autodiscover.xml", raw=None):
    body = raw or (
        f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{REQUEST_SCHEMA}"><Request>'
        f"<EMailAddress>{email}</EMailAddress><AcceptableResponseSchema>{schema}</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    )
    status, _, answer = fetch(path, data=body.encode(), headers={"Content-Type": "text/xml"})
    assert status == 200, (status, answer)
    doc = etree.fromstring(answer)
    outer_schema.assertValid(doc)
    return doc


for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
    doc = autodiscover(EMAIL, path=path)
    account = doc.find(f"{{{OUTLOOK}}}Response/{{{OUTLOOK}}}Account")
    assert account is not None, etree.tostring(doc)
    types = []
    for protocol in account.findall(f"{{{OUTLOOK}}}Protocol"):
        text = lambda name: protocol.findtext(f"{{{OUTLOOK}}}{name}")
        security = {"SSL": "SSL", "TLS": "STARTTLS"}[text("Encryption")]
        kind = text("Type").lower()
        assert (kind, security, text("Port")) in LIVE, (kind, security, text("Port"))
        log_in(kind, text("Server"), text("Port"), security, text("LoginName"))
        types.append(kind)
        print("AUTODISCOVER", kind, security, text("Port"), "LOGIN OK", flush=True)
    assert sorted(types) == ["imap", "pop3", "smtp"], types


def error_code(doc):
    return doc.findtext(f"{{{OUTER}}}Response/{{{OUTER}}}Error/{{{OUTER}}}ErrorCode")


assert error_code(autodiscover("bob@elsewhere.test")) == "600"
assert error_code(autodiscover(EMAIL, schema="http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006")) == "601"
assert error_code(autodiscover(None, raw='<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><Autodiscover xmlns="%s"><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>' % REQUEST_SCHEMA)) == "600"
print("AUTODISCOVER REFUSALS OK", flush=True)

# DNS: the records parse as zone-file lines, and each SRV target works as that service.
with open(zone_path) as f:
    records = RR.fromZone(f.read())
labels = {"_imaps": ("imap", "SSL"), "_imap": ("imap", "STARTTLS"), "_pop3s": ("pop3", "SSL"),
          "_pop3": ("pop3", "STARTTLS"), "_submissions": ("smtp", "SSL"), "_submission": ("smtp", "STARTTLS")}
followed = set()
txt = {str(r.rname).split(".")[0]: str(r.rdata).strip('"') for r in records if r.rtype == QTYPE.TXT}
for record in records:
    if record.rtype != QTYPE.SRV:
        continue
    label = str(record.rname).split(".")[0]
    target, port = str(record.rdata.target).rstrip("."), record.rdata.port
    if label in labels:
        kind, security = labels[label]
        if port == 0:
            assert target == "" and not any(k == kind and s == security for k, s, _ in LIVE), label
            continue
        log_in(kind, target, port, security, EMAIL)
        followed.add((kind, security, str(port)))
        print("SRV", label, port, "LOGIN OK", flush=True)
    elif label == "_caldavs" and port != 0:
        path = txt["_caldavs"].removeprefix("path=")
        client = caldav.DAVClient(url=f"https://{target}:{port}{path}", username=EMAIL,
                                  password=calendar_password, ssl_verify_cert=ca)
        client.principal().make_calendar(name="From SRV")
        print("SRV _caldavs", port, path, "CALDAV OK", flush=True)
        followed.add(("caldav",))
assert followed == LIVE | {("caldav",)}, (followed, LIVE)
print("ALL OK", flush=True)

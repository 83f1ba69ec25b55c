"""The portal's JSON API with a plain HTTP client (Python's http.client over TLS).

Run by tests/portal_e2e.rs with the portal's URL, the gateway's IMAPS port and its CA file.
Every check is an assert: a failure exits non-zero with the reason.
"""

import http.client
import json
import ssl
import sys
import time
import urllib.parse

portal, imaps_port, ca = sys.argv[1:4]
url = urllib.parse.urlsplit(portal)
origin = f"{url.scheme}://{url.netloc}"
ctx = ssl.create_default_context(cafile=ca)


class Client:
    """One browser's worth of state: the session cookie."""

    def __init__(self):
        self.cookie = None

    def call(self, method, path, body=None, origin_header=True):
        conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=20)
        headers = {"Accept": "application/json"}
        if origin_header:
            headers["Origin"] = origin
        if self.cookie:
            headers["Cookie"] = self.cookie
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, "/api/v1" + path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                pair = value.split(";", 1)[0]
                self.cookie = None if pair.endswith("=") else pair
        content_type = response.getheader("Content-Type", "")
        parsed = json.loads(raw) if raw and "json" in content_type else raw
        conn.close()
        return response.status, content_type, parsed


def problem(result, status):
    got, content_type, body = result
    assert got == status, (got, body)
    assert content_type == "application/problem+json", content_type
    assert body["status"] == status and body["detail"], body
    return body["detail"]


alice = Client()
password = "alice long main password"

# Every documented operation exists (none falls through to the API's 404).
status, _, doc = alice.call("GET", "/openapi.json")
assert status == 200 and doc["openapi"] == "3.1.0", doc
for path, operations in doc["paths"].items():
    for method in operations:
        concrete = path.replace("{id}", "999999").replace("{kind}", "email")
        status, _, body = alice.call(method.upper(), concrete, {} if method != "get" else None)
        assert not (status == 404 and body.get("detail") == "No such endpoint."), (method, path)
        assert status != 405, (method, path)
print("DOCUMENTED-ROUTES", flush=True)
assert problem(alice.call("GET", "/nothing-here"), 404)

# CSRF: no Origin, no sign-in.
status, _, _ = alice.call("POST", "/session", {"login": "alice", "password": password}, origin_header=False)
assert status == 403, status
# Wrong password: a problem, no cookie.
assert "Wrong login or password" in problem(alice.call("POST", "/session", {"login": "alice", "password": "wrong password!"}), 401)
assert alice.cookie is None
assert problem(alice.call("GET", "/account"), 401)
# Malformed JSON is a problem too.
problem(alice.call("POST", "/session", {"login": "alice"}), 422)
status, _, body = alice.call("POST", "/session", {"login": "alice", "password": password})
assert status == 200 and body["login"] == "alice@example.org", body
assert alice.cookie and alice.cookie.startswith("__Host-portcullis="), alice.cookie
status, _, account = alice.call("GET", "/account")
assert status == 200 and account["two_factor"] is False and account["app_passwords_only"], account
print("SIGNED-IN", flush=True)

# An app password: made, used over IMAP through the gateway, listed, deleted.
status, _, made = alice.call("POST", "/app-passwords", {"service": "mail", "name": "API mail"})
assert status == 201 and len(made["secret"]) == 16, made
assert any("IMAP" in s["what"] for s in made["settings"]), made
assert not imap_refused(made["secret"])
# Its last use (written in batches) shows up in the list.
deadline = time.time() + 5
while time.time() < deadline:
    status, _, listed = alice.call("GET", "/app-passwords")
    if listed["app_passwords"][0]["last_used"]:
        break
    time.sleep(0.2)
assert [p["name"] for p in listed["app_passwords"]] == ["API mail"], listed
assert listed["app_passwords"][0]["last_used"]["protocol"] == "imap", listed
assert "secret" not in json.dumps(listed)
assert problem(alice.call("POST", "/app-passwords", {"service": "webmail", "name": "x"}), 422)
status, _, _ = alice.call("DELETE", f"/app-passwords/{made['id']}")
assert status == 204
assert imap_refused(made["secret"])
problem(alice.call("DELETE", f"/app-passwords/{made['id'] + 1000}"), 404)
# Limits: loopback only and an expiry, both in the answer and the list; refused inputs say why.
status, _, limited = alice.call(
    "POST",
    "/app-passwords",
    {"service": "mail", "name": "API limited", "expires": "2099-12-31", "networks": ["127.0.0.0/8", "::1"]},
)
assert status == 201, limited
assert limited["networks"] == ["127.0.0.0/8", "::1/128"], limited
assert limited["expires_at"] == 4102444800000, limited
assert not imap_refused(limited["secret"])
status, _, listed = alice.call("GET", "/app-passwords")
[entry] = [p for p in listed["app_passwords"] if p["name"] == "API limited"]
assert entry["networks"] == ["127.0.0.0/8", "::1/128"] and entry["expires_at"] == 4102444800000, entry
for bad in ({"networks": ["10.0.0.0/99"]}, {"expires": "2001-01-01"}, {"expires": "soon"}):
    refused = alice.call("POST", "/app-passwords", {"service": "mail", "name": "x", **bad})
    assert refused[0] == 422, (bad, refused)
status, _, _ = alice.call("DELETE", f"/app-passwords/{limited['id']}")
assert status == 204
print("APP-PASSWORD", flush=True)

# Profile and the question.
assert alice.call("PUT", "/profile/names", {"first_name": "Alice", "last_name": "Liddell"})[0] == 204
assert alice.call("PUT", "/profile/question", {"question": "What was your childhood nickname?", "answer": "Ally"})[0] == 204
status, _, profile = alice.call("GET", "/profile")
assert profile["first_name"] == "Alice" and profile["question"].startswith("What was your childhood"), profile
assert "answer" not in json.dumps(profile)
print("PROFILE", flush=True)

# Two-factor: enrol, sign in with a code, a replayed code refused.
status, _, enrolment = alice.call("POST", "/two-factor/enrolment", {})
assert status == 200 and enrolment["uri"].startswith("otpauth://totp/") and "<svg" in enrolment["qr_svg"], enrolment
problem(alice.call("POST", "/two-factor", {"token": enrolment["token"], "code": "12345x"}), 422)
code = totp(enrolment["secret"])
status, _, on = alice.call("POST", "/two-factor", {"token": enrolment["token"], "code": code})
assert status == 200 and len(on["recovery_codes"]) == 10, on
assert alice.call("GET", "/account")[2]["two_factor"] is True
other = Client()
status, _, pending = other.call("POST", "/session", {"login": "alice", "password": password})
assert status == 202 and pending["second_factor"] == "required", pending
assert other.cookie is None
assert "already used" in problem(other.call("POST", "/session/code", {"token": pending["token"], "code": code}), 401)
status, _, _ = other.call("POST", "/session/code", {"token": pending["token"], "code": totp(enrolment["secret"], time.time() + 30)})
assert status == 200 and other.cookie, status
print("TWO-FACTOR", flush=True)

# Devices and sessions; one ended from the other.
status, _, sessions = alice.call("GET", "/sessions")
assert len(sessions["sessions"]) == 2 and sum(s["current"] for s in sessions["sessions"]) == 1, sessions
theirs = [s for s in sessions["sessions"] if not s["current"]][0]
assert alice.call("DELETE", f"/sessions/{theirs['id']}")[0] == 204
assert problem(other.call("GET", "/account"), 401)
print("SESSIONS", flush=True)

# Restore by the question: a stranger gets a decoy; the owner's answer in any case works.
stranger = Client()
status, _, decoy = stranger.call("POST", "/restore", {"login": "nobody", "proof": "question"})
assert status == 200 and decoy["question"].endswith("?"), decoy
status, _, real = stranger.call("POST", "/restore", {"login": "alice", "proof": "question"})
assert real["question"] == "What was your childhood nickname?", real
assert problem(stranger.call("POST", "/restore/finish", {"token": decoy["token"], "proof": "Ally", "new_password": "a restored password"}), 401)
assert stranger.call("POST", "/restore/finish", {"token": real["token"], "proof": " ALLY ", "new_password": "a restored password"})[0] == 204
# Everything signed in before has ended.
assert problem(alice.call("GET", "/account"), 401)
password = "a restored password"
print("RESTORED", flush=True)

# Log out on all devices.
status, _, pending = alice.call("POST", "/session", {"login": "alice", "password": password})
assert status == 202
status, _, _ = alice.call("POST", "/session/code", {"token": pending["token"], "code": on["recovery_codes"][0]})
assert status == 200, status
assert alice.call("POST", "/logout-everywhere")[0] == 204
assert alice.cookie is None
assert problem(alice.call("GET", "/account"), 401)
print("EVERYWHERE", flush=True)

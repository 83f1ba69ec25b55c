"""Helpers the portal's test scripts share (tests/portal_e2e.rs puts this file in front of
each script): what an authenticator app computes, and an IMAP client through the gateway.
The scripts define `ca` (the gateway's CA file) and `imaps_port` before calling them."""

import base64
import hashlib
import hmac
import imaplib
import ssl
import struct
import time


def totp(secret_b32, at=None):
    """What an authenticator app shows (RFC 6238: HMAC-SHA-1, 30 s, 6 digits)."""
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    counter = int((time.time() if at is None else at) // 30)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 15
    return "%06d" % ((struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 1000000)


def imap_session(secret):
    ctx = ssl.create_default_context(cafile=ca)
    imap = imaplib.IMAP4_SSL("localhost", int(imaps_port), ssl_context=ctx)
    imap.login("alice", secret)
    typ, _ = imap.select("INBOX")
    assert typ == "OK", typ
    return imap


def imap_refused(secret):
    try:
        imap_session(secret).logout()
    except imaplib.IMAP4.error:
        return True
    return False

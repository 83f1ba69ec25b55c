"""Helpers the portal's test scripts share (the Rust tests put this file in front of each
script): headless Chromium driven by Selenium, what an authenticator app computes, and an IMAP
client through the gateway. The scripts define `portal` (its URL), `workdir` (profiles and
screenshots), `PASSWORDS`, `ca` (the gateway's CA file) and `imaps_port` before calling them."""

import base64
import hashlib
import hmac
import imaplib
import ssl
import struct
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def totp(secret_b32, at=None):
    """What an authenticator app shows (RFC 6238: HMAC-SHA-1, 30 s, 6 digits)."""
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    counter = int((time.time() if at is None else at) // 30)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 15
    return "%06d" % ((struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 1000000)


def imap_session(secret, user="alice"):
    ctx = ssl.create_default_context(cafile=ca)
    imap = imaplib.IMAP4_SSL("localhost", int(imaps_port), ssl_context=ctx)
    imap.login(user, secret)
    typ, _ = imap.select("INBOX")
    assert typ == "OK", typ
    return imap


def imap_refused(secret, user="alice"):
    try:
        imap_session(secret, user).logout()
    except imaplib.IMAP4.error:
        return True
    return False


def browser(profile):
    options = Options()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        # The test CA is not in Chromium's store; TLS itself is tested elsewhere.
        "--ignore-certificate-errors",
        f"--user-data-dir={workdir}/{profile}",
    ):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def submit(driver, element):
    """Clicks a form's button and waits until the page it leads to has replaced this one."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            # Raises once the old document is gone (stale, or "node does not belong to the
            # document" while Chromium swaps documents).
            page.is_enabled()
        except Exception:
            return
        time.sleep(0.05)
    raise AssertionError(f"the page did not change: {driver.current_url}")


def shot(driver, name):
    driver.save_screenshot(f"{workdir}/{name}.png")


def no_console_errors(driver):
    # Refusals the flow provoked on purpose are answered with their status (401, 409, 422, 429),
    # which the browser logs; anything else is an error of the pages.
    expected = ("status of 401", "status of 409", "status of 422", "status of 429")
    errors = [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not any(x in e["message"] for x in expected)
    ]
    assert not errors, errors


def sign_in(driver, login, remember=True, add=False):
    driver.get(f"{portal}/signin" + ("?add=1" if add else ""))
    driver.find_element(By.ID, "login").send_keys(login)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[login])
    if not remember:
        driver.find_element(By.ID, "forget").click()
    submit(driver, driver.find_element(By.ID, "signin"))


def current(driver):
    return driver.find_element(By.ID, "current-account").text


def wait_for(driver, element_id):
    """An element of the page a click leads to, once that page has loaded."""
    deadline = time.time() + 5
    while time.time() < deadline:
        found = driver.find_elements(By.ID, element_id)
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no #{element_id} on {driver.current_url}")


def wait_current(driver, expected):
    """The current account once the page after a click has loaded."""
    deadline = time.time() + 5
    seen = None
    while time.time() < deadline:
        try:
            seen = current(driver)
            if seen == expected:
                return
        except Exception:  # the old page went away under us, or the new one has no switcher
            pass
        time.sleep(0.05)
    raise AssertionError(f"current account {seen!r}, expected {expected!r}")

"""The account portal in a real browser: headless Chromium driven by Selenium.

Run by tests/portal_e2e.rs with the portal's URL, the gateway's IMAPS port, its CA file, a
folder for screenshots and profiles, and the scenario to play. Every check is an assert: a
failure exits non-zero with the reason.
"""

import imaplib
import os
import socket
import ssl
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

portal, imaps_port, ca, workdir, scenario = sys.argv[1:6]
PASSWORDS = {
    login: f"{login} long main password"
    for login in ["alice", "bob", "carol", "dave", "erin", "frank"]
}


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
    # Refusals the flow provoked on purpose are answered with their status (401, 409, 429),
    # which the browser logs; anything else is an error of the pages.
    expected = ("status of 401", "status of 409", "status of 429")
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


def main_flow():
    driver = browser("profile-a")
    try:
        sign_in(driver, "alice", remember=False)
        assert driver.current_url.endswith("/access"), driver.current_url
        assert current(driver) == "alice@example.org"
        cookies = {c["name"]: c for c in driver.get_cookies()}
        session = cookies["__Host-portcullis"]
        assert "expiry" not in session, session
        assert session["secure"] and session["httpOnly"], session
        shot(driver, "access")

        # Create a mail app password: it is shown once, in the dialog.
        driver.find_element(By.ID, "service").send_keys("Mail")
        driver.find_element(By.ID, "name").send_keys("Thunderbird")
        submit(driver, driver.find_element(By.ID, "create"))
        secret = wait_for(driver, "secret").text.strip()
        assert len(secret) == 16 and secret.isalpha(), secret
        settings = driver.find_element(By.ID, "settings").text
        assert "IMAP (SSL/TLS)" in settings and imaps_port in settings, settings
        shot(driver, "created")
        print("CREATED", flush=True)

        # It opens IMAP through the gateway to Dovecot.
        imap = imap_session(secret)
        print("IMAP-LOGIN OK", flush=True)

        # Reloading does not show it again.
        driver.refresh()
        assert not driver.find_elements(By.ID, "secret")
        assert "Thunderbird" in driver.find_element(By.ID, "passwords").text

        # Deleting it in the page cuts the open IMAP session.
        submit(driver, driver.find_element(By.CSS_SELECTOR, "#passwords button.danger"))
        wait_for(driver, "no-passwords")
        imap.sock.settimeout(3)
        line = imap.readline()
        assert line.startswith(b"* BYE"), line
        print("IMAP-CUT", line.decode().strip(), flush=True)
        assert imap_refused(secret)

        # Switching: a second account, then back, then "Log out" makes the next one current.
        sign_in(driver, "bob", add=True)
        wait_current(driver, "bob@example.org")
        assert "alice@example.org" in driver.find_element(By.TAG_NAME, "header").text
        submit(driver, driver.find_element(By.CSS_SELECTOR, "button[name=switch-to][value='alice@example.org']"))
        wait_current(driver, "alice@example.org")
        shot(driver, "switcher")
        submit(driver, driver.find_element(By.ID, "logout"))
        wait_current(driver, "bob@example.org")
        print("SWITCHED", flush=True)

        # Up to five accounts in one browser; a sixth is refused.
        for login in ["alice", "carol", "dave", "erin"]:
            sign_in(driver, login, add=True)
            wait_current(driver, f"{login}@example.org")
        sign_in(driver, "frank", add=True)
        error = wait_for(driver, "error").text
        assert "5 accounts are signed in" in error, error
        print("SIXTH-REFUSED", flush=True)

        # "Edit list": log out of two at once.
        driver.get(f"{portal}/accounts")
        boxes = driver.find_elements(By.CSS_SELECTOR, "input[name=remove]")
        boxes[1].click()
        boxes[2].click()
        submit(driver, driver.find_element(By.ID, "remove-selected"))
        header = driver.find_element(By.TAG_NAME, "header").text
        assert header.count("@example.org") == 3, header
        driver.get(f"{portal}/sessions")
        shot(driver, "sessions")
        no_console_errors(driver)
        submit(driver, driver.find_element(By.ID, "logout-all"))
        assert driver.current_url.endswith("/signin"), driver.current_url
        print("LOGGED-OUT-ALL", flush=True)
    finally:
        driver.quit()


def everywhere():
    # Profile A signed in as alice with an app password in use; profile B logs out everywhere.
    a = browser("profile-a2")
    b = browser("profile-b")
    try:
        sign_in(a, "alice")
        a.find_element(By.ID, "name").send_keys("Phone")
        submit(a, a.find_element(By.ID, "create"))
        secret = wait_for(a, "secret").text.strip()
        imap = imap_session(secret)
        sign_in(b, "alice")
        b.get(f"{portal}/sessions")
        rows = b.find_elements(By.CSS_SELECTOR, "#sessions tr[data-id]")
        assert len(rows) == 2, [r.text for r in rows]
        b.get(f"{portal}/access")
        submit(b, b.find_element(By.ID, "logout-everywhere"))
        assert b.current_url.endswith("/signin"), b.current_url
        imap.sock.settimeout(3)
        line = imap.readline()
        assert line.startswith(b"* BYE"), line
        assert imap_refused(secret)
        a.get(f"{portal}/access")
        assert a.current_url.endswith("/signin"), a.current_url
        print("EVERYWHERE", flush=True)
    finally:
        a.quit()
        b.quit()


def password():
    a = browser("profile-pw-a")
    b = browser("profile-pw-b")
    try:
        sign_in(a, "alice")
        a.find_element(By.ID, "name").send_keys("Laptop")
        submit(a, a.find_element(By.ID, "create"))
        secret = wait_for(a, "secret").text.strip()
        assert not imap_refused(secret)
        sign_in(b, "alice")
        a.get(f"{portal}/password")
        assert "every app password stop working" in wait_for(a, "bump-warning").text
        for current_password, new, error in [
            ("not my password", "a brand new password", "Wrong current password."),
            (PASSWORDS["alice"], "1234567890", "too weak"),
        ]:
            a.find_element(By.ID, "current").send_keys(current_password)
            a.find_element(By.ID, "new").send_keys(new)
            submit(a, a.find_element(By.ID, "change-password"))
            assert error in wait_for(a, "error").text, a.find_element(By.ID, "error").text
        a.find_element(By.ID, "current").send_keys(PASSWORDS["alice"])
        a.find_element(By.ID, "new").send_keys("a brand new password")
        submit(a, a.find_element(By.ID, "change-password"))
        assert a.current_url.endswith("/access"), a.current_url
        # 2FA is off: the generation moved on and the app password died.
        assert imap_refused(secret)
        # The other browser was signed out; this one was not.
        b.get(f"{portal}/access")
        assert b.current_url.endswith("/signin"), b.current_url
        PASSWORDS["alice"] = "a brand new password"
        sign_in(b, "alice")
        assert b.current_url.endswith("/access"), b.current_url
        print("PASSWORD-CHANGED", flush=True)
    finally:
        a.quit()
        b.quit()


def reconfirm():
    # The portal runs with reconfirm_after_secs = 1: an app password made later than that
    # after the sign-in needs the main password again.
    driver = browser("profile-reconfirm")
    try:
        sign_in(driver, "alice")
        time.sleep(1.5)
        driver.get(f"{portal}/access")
        field = wait_for(driver, "current-password")
        driver.find_element(By.ID, "name").send_keys("Tablet")
        field.send_keys("not my password")
        submit(driver, driver.find_element(By.ID, "create"))
        assert "Wrong password." in wait_for(driver, "error").text
        assert not driver.find_elements(By.ID, "secret")
        driver.find_element(By.ID, "name").send_keys("Tablet")
        driver.find_element(By.ID, "current-password").send_keys(PASSWORDS["alice"])
        submit(driver, driver.find_element(By.ID, "create"))
        assert len(wait_for(driver, "secret").text.strip()) == 16
        print("RECONFIRMED", flush=True)
    finally:
        driver.quit()


def idle():
    driver = browser("profile-idle")
    try:
        sign_in(driver, "alice")
        assert driver.current_url.endswith("/access"), driver.current_url
        time.sleep(3.5)
        driver.get(f"{portal}/access")
        assert driver.current_url.endswith("/signin"), driver.current_url
        print("IDLE-EXPIRED", flush=True)
    finally:
        driver.quit()


{"main": main_flow, "everywhere": everywhere, "idle": idle, "password": password, "reconfirm": reconfirm}[scenario]()

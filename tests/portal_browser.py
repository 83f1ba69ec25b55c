"""The account portal in a real browser: headless Chromium driven by Selenium.

Run by tests/portal_e2e.rs with the portal's URL, the gateway's IMAPS port, its CA file, a
folder for screenshots and profiles, and the scenario to play. Every check is an assert: a
failure exits non-zero with the reason.
"""

import email
import json
import os
import re
import socket
import ssl
import sys
import time


portal, imaps_port, ca, workdir, scenario, maildir, sms_log = sys.argv[1:8]
PASSWORDS = {
    login: f"{login} long main password"
    for login in ["alice", "bob", "carol", "dave", "erin", "frank"]
}


def mailed_code(to, after):
    """The code in the newest message the SMTP sink received for `to` since `after`."""
    deadline = time.time() + 10
    while time.time() < deadline:
        found = []
        folder = os.path.join(maildir, "new")
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            path = os.path.join(folder, name)
            if os.path.getmtime(path) < after:
                continue
            with open(path, "rb") as f:
                message = email.message_from_bytes(f.read())
            if to in message["To"]:
                found.append((os.path.getmtime(path), message.get_payload()))
        if found:
            body = max(found)[1]
            return re.search(r"\b(\d{6}) is your", body).group(1)
        time.sleep(0.1)
    raise AssertionError(f"no mail to {to}")


def texted_code(to):
    deadline = time.time() + 10
    while time.time() < deadline:
        if os.path.exists(sms_log):
            with open(sms_log) as f:
                lines = [json.loads(l) for l in f if l.strip()]
            mine = [l for l in lines if l["to"] == to]
            if mine:
                return re.search(r"\b(\d{6}) is your", mine[-1]["text"]).group(1)
        time.sleep(0.1)
    raise AssertionError(f"no SMS to {to}")


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

        # Limits: this one works only from 192.0.2.0/24, and until the end of 2099.
        driver.find_element(By.CSS_SELECTOR, "#limits summary").click()
        driver.find_element(By.ID, "service").send_keys("Mail")
        driver.find_element(By.ID, "name").send_keys("Office PC")
        # The date picker's typed format follows the browser's locale; its value does not.
        driver.execute_script("arguments[0].value = '2099-12-31'", driver.find_element(By.ID, "expires"))
        driver.find_element(By.ID, "networks").send_keys("192.0.2.0/24")
        submit(driver, driver.find_element(By.ID, "create"))
        office = wait_for(driver, "secret").text.strip()
        assert imap_refused(office), "opened IMAP from outside its network"
        driver.refresh()
        limits = driver.find_element(By.CSS_SELECTOR, "#passwords tr[data-id] td.limits").text
        assert limits == "until 2099-12-31; only from 192.0.2.0/24", limits
        driver.find_element(By.CSS_SELECTOR, "#limits summary").click()
        driver.find_element(By.ID, "name").send_keys("Broken")
        driver.find_element(By.ID, "networks").send_keys("192.0.2.0/33")
        submit(driver, driver.find_element(By.ID, "create"))
        error = wait_for(driver, "error").text
        assert "network" in error and "192.0.2.0/33" in error, error
        submit(driver, driver.find_element(By.CSS_SELECTOR, "#passwords button.danger"))
        wait_for(driver, "no-passwords")
        print("LIMITS", flush=True)

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


def enter_code(driver, code, button="verify"):
    field = wait_for(driver, "code")
    field.clear()
    field.send_keys(code)
    submit(driver, driver.find_element(By.ID, button))


def two_factor():
    a = browser("profile-2fa-a")
    b = browser("profile-2fa-b")
    try:
        sign_in(a, "alice")
        a.find_element(By.ID, "name").send_keys("Phone mail")
        submit(a, a.find_element(By.ID, "create"))
        before = wait_for(a, "secret").text.strip()
        assert not imap_refused(before)

        # Enrol: a QR code and the key as text; a wrong code changes nothing.
        a.get(f"{portal}/two-factor")
        submit(a, wait_for(a, "begin"))
        seed = wait_for(a, "totp-secret").text.strip()
        qr = a.find_element(By.ID, "qr")
        assert qr.get_attribute("src").startswith("data:image/svg+xml;base64,")
        assert a.execute_script("return arguments[0].naturalWidth", qr) > 0
        assert "every app password stop working" in a.find_element(By.ID, "bump-warning").text
        shot(a, "two-factor-enrol")
        wrong = "%06d" % ((int(totp(seed)) + 1) % 1000000)
        enter_code(a, wrong, "enable")
        assert "wrong" in wait_for(a, "error").text
        assert not imap_refused(before)
        # The right code: 2FA on, ten recovery codes shown once, old app passwords dead.
        enrol_code = totp(seed)
        enter_code(a, enrol_code, "enable")
        codes = [c.text for c in wait_for(a, "recovery-codes").find_elements(By.CLASS_NAME, "recovery-code")]
        assert len(codes) == 10 and len(set(codes)) == 10, codes
        shot(a, "two-factor-codes")
        assert imap_refused(before)
        a.get(f"{portal}/two-factor")
        assert not a.find_elements(By.ID, "recovery-codes")
        assert "on" in wait_for(a, "status").text
        print("2FA-ON", flush=True)

        # Signing in now asks for a code; the one used to enrol is not taken again.
        sign_in(b, "alice")
        enter_code(b, enrol_code)
        assert "already used" in wait_for(b, "error").text
        next_code = totp(seed, time.time() + 30)  # one step of drift is allowed
        enter_code(b, next_code)
        assert b.current_url.endswith("/access"), b.current_url
        print("2FA-SIGNED-IN", flush=True)
        # The same code in another sign-in: refused (replay).
        submit(b, b.find_element(By.ID, "logout"))
        sign_in(b, "alice")
        enter_code(b, next_code)
        assert "already used" in wait_for(b, "error").text
        print("2FA-REPLAY-REFUSED", flush=True)
        # A recovery code works once.
        enter_code(b, codes[0].upper().replace("-", " "))
        assert b.current_url.endswith("/access"), b.current_url
        submit(b, b.find_element(By.ID, "logout"))
        sign_in(b, "alice")
        enter_code(b, codes[0])
        assert "already used" in wait_for(b, "error").text
        enter_code(b, codes[1])
        assert b.current_url.endswith("/access"), b.current_url
        b.get(f"{portal}/two-factor")
        assert wait_for(b, "recovery-left").text == "8"
        print("2FA-RECOVERY", flush=True)

        # Turning it off asks for a code.
        enter_code(b, "000000", "disable")
        assert "wrong" in wait_for(b, "error").text
        enter_code(b, codes[2], "disable")
        assert "off" in wait_for(b, "status").text
        no_console_errors(a)
        no_console_errors(b)
        print("2FA-OFF", flush=True)
    finally:
        a.quit()
        b.quit()


def restore():
    a = browser("profile-restore-a")
    b = browser("profile-restore-b")
    try:
        sign_in(a, "alice")
        a.get(f"{portal}/profile")
        wait_for(a, "first-name").send_keys("Alice")
        a.find_element(By.ID, "last-name").send_keys("Liddell")
        submit(a, a.find_element(By.ID, "save-names"))
        assert wait_for(a, "first-name").get_attribute("value") == "Alice"
        # A backup email, confirmed by the code mailed to it.
        started = time.time() - 1
        wait_for(a, "email-new").send_keys("alice.backup@example.net")
        submit(a, a.find_element(By.ID, "send-email"))
        assert "on its way" in wait_for(a, "profile-message").text
        wait_for(a, "email-code").send_keys(mailed_code("alice.backup@example.net", started))
        submit(a, a.find_element(By.ID, "confirm-email"))
        assert wait_for(a, "email-value").text == "alice.backup@example.net"
        # A phone, confirmed by the code handed to the SMS command.
        wait_for(a, "phone-new").send_keys("+44 20 7946 0958")
        submit(a, a.find_element(By.ID, "send-phone"))
        wait_for(a, "phone-code").send_keys(texted_code("+442079460958"))
        submit(a, a.find_element(By.ID, "confirm-phone"))
        assert wait_for(a, "phone-value").text == "+442079460958"
        # A security question.
        question = "What was the name of your first pet?"
        wait_for(a, "question").send_keys(question)
        a.find_element(By.ID, "answer").send_keys("Dinah the Cat")
        submit(a, a.find_element(By.ID, "save-question"))
        assert wait_for(a, "question-value").text == question
        shot(a, "profile")
        a.get(f"{portal}/access")
        a.find_element(By.ID, "name").send_keys("Before restore")
        submit(a, a.find_element(By.ID, "create"))
        before = wait_for(a, "secret").text.strip()
        assert not imap_refused(before)
        print("PROFILE", flush=True)

        # A stranger learns nothing: an unknown account gets the same page and a question too.
        def begin(login, proof, address=""):
            b.get(f"{portal}/signin")
            submit(b, b.find_element(By.ID, "cant-sign-in"))
            wait_for(b, "login").send_keys(login)
            b.find_element(By.ID, f"proof-{proof}").click()
            b.find_element(By.ID, "address").send_keys(address)
            submit(b, b.find_element(By.ID, "continue"))

        begin("nobody", "email", "alice.backup@example.net")
        unknown = wait_for(b, "sent").text
        begin("alice", "email", "someone.else@example.net")
        assert wait_for(b, "sent").text == unknown
        begin("nobody", "question")
        assert wait_for(b, "question").text.endswith("?")
        print("NO-ENUMERATION", flush=True)

        # Restore by the emailed code: new password, everything before ends.
        started = time.time() - 1
        begin("alice", "email", "Alice.Backup@EXAMPLE.net")
        shot(b, "restore-code")
        code = mailed_code("alice.backup@example.net", started)
        wait_for(b, "proof").send_keys("000000" if code != "000000" else "111111")
        b.find_element(By.ID, "new-password").send_keys("restored by email code")
        submit(b, b.find_element(By.ID, "restore"))
        assert "wrong" in wait_for(b, "error").text
        wait_for(b, "proof").send_keys(code)
        b.find_element(By.ID, "new-password").send_keys("restored by email code")
        submit(b, b.find_element(By.ID, "restore"))
        wait_for(b, "restored")
        assert imap_refused(before)
        a.get(f"{portal}/access")
        assert a.current_url.endswith("/signin"), a.current_url
        PASSWORDS["alice"] = "restored by email code"
        sign_in(a, "alice")
        assert a.current_url.endswith("/access"), a.current_url
        print("RESTORED-BY-EMAIL", flush=True)

        # Restore by the security question: case and spaces do not matter.
        begin("alice", "question")
        assert wait_for(b, "question").text == question
        wait_for(b, "proof").send_keys("dinah the dog")
        b.find_element(By.ID, "new-password").send_keys("restored by the question")
        submit(b, b.find_element(By.ID, "restore"))
        assert "does not open" in wait_for(b, "error").text
        wait_for(b, "proof").send_keys("  DINAH THE   CAT ")
        b.find_element(By.ID, "new-password").send_keys("restored by the question")
        submit(b, b.find_element(By.ID, "restore"))
        wait_for(b, "restored")
        a.get(f"{portal}/access")
        assert a.current_url.endswith("/signin"), a.current_url
        PASSWORDS["alice"] = "restored by the question"
        sign_in(b, "alice")
        assert b.current_url.endswith("/access"), b.current_url
        no_console_errors(a)
        no_console_errors(b)
        print("RESTORED-BY-QUESTION", flush=True)
    finally:
        a.quit()
        b.quit()


{"two_factor": two_factor, "restore": restore, "main": main_flow, "everywhere": everywhere, "idle": idle, "password": password, "reconfirm": reconfirm}[scenario]()

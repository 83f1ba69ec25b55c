"""The Apple profile offered with a new app password, in a real browser.

Run by tests/client_setup.rs (after tests/portal_common.py) with the portal's URL, the gateway's
IMAPS port, its CA file and a work folder. Chromium makes a mail and a calendar app password,
downloads each one's profile, and the profiles are read with plistlib and used as a device would:
IMAP and SMTP (mail), CalDAV (calendar) with the servers and password inside.
"""

import glob
import os
import plistlib
import smtplib
import ssl
import sys
import time

import caldav

portal, imaps_port, ca, workdir = sys.argv[1:5]
PASSWORDS = {"alice": "alice long main password"}
downloads = os.path.join(workdir, "downloads")
os.makedirs(downloads, exist_ok=True)


def downloaded(name):
    """The file Chromium saved as `name`, once it is complete."""
    deadline = time.time() + 15
    path = os.path.join(downloads, name)
    while time.time() < deadline:
        if os.path.exists(path) and not glob.glob(os.path.join(downloads, "*.crdownload")):
            with open(path, "rb") as f:
                return f.read()
        time.sleep(0.1)
    raise AssertionError(f"no {name} in {os.listdir(downloads)}")


def create(driver, service, name):
    driver.get(f"{portal}/access")
    driver.find_element(By.ID, "service").send_keys(service)
    driver.find_element(By.ID, "name").send_keys(name)
    submit(driver, driver.find_element(By.ID, "create"))
    return wait_for(driver, "secret").text.strip()


def payload_of(profile_bytes):
    profile = plistlib.loads(profile_bytes)
    assert profile["PayloadType"] == "Configuration", profile
    assert profile["PayloadVersion"] == 1
    (payload,) = profile["PayloadContent"]
    return payload


driver = browser("profile")
driver.execute_cdp_cmd(
    "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads}
)
try:
    sign_in(driver, "alice")
    ctx = ssl.create_default_context(cafile=ca)

    # Mail: the page shows the settings and offers the profile.
    secret = create(driver, "Mail", "iPhone")
    settings = driver.find_element(By.ID, "settings").text
    assert "IMAP (SSL/TLS)" in settings and f"localhost, port {imaps_port}" in settings, settings
    shot(driver, "created-with-profile")
    driver.find_element(By.ID, "download-profile").click()
    payload = payload_of(downloaded("iPhone.mobileconfig"))
    assert payload["PayloadType"] == "com.apple.mail.managed", payload
    assert payload["EmailAddress"] == "alice@example.org"
    assert payload["IncomingPassword"] == secret and payload["OutgoingPassword"] == secret
    assert payload["IncomingMailServerPortNumber"] == int(imaps_port), payload
    imap = imaplib.IMAP4_SSL(payload["IncomingMailServerHostName"],
                             payload["IncomingMailServerPortNumber"], ssl_context=ctx)
    imap.login(payload["IncomingMailServerUsername"], payload["IncomingPassword"])
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()
    smtp = smtplib.SMTP_SSL(payload["OutgoingMailServerHostName"],
                            payload["OutgoingMailServerPortNumber"], context=ctx, timeout=20)
    smtp.login(payload["OutgoingMailServerUsername"], payload["OutgoingPassword"])
    smtp.quit()
    print("MAIL-PROFILE OK", flush=True)

    # Calendar: a CalDAV payload whose principal URL a CalDAV client starts from.
    secret = create(driver, "Calendar", "iPad calendar")
    driver.find_element(By.ID, "download-profile").click()
    payload = payload_of(downloaded("iPad-calendar.mobileconfig"))
    assert payload["PayloadType"] == "com.apple.caldav.account", payload
    assert payload["CalDAVPassword"] == secret and payload["CalDAVUseSSL"] is True
    client = caldav.DAVClient(url=payload["CalDAVPrincipalURL"], username=payload["CalDAVUsername"],
                              password=payload["CalDAVPassword"], ssl_verify_cert=ca)
    calendar = client.principal().make_calendar(name="From the profile")
    assert calendar is not None
    print("CALDAV-PROFILE OK", flush=True)

    # Disk: no Apple payload, no offer.
    create(driver, "Disk", "Backup")
    assert not driver.find_elements(By.ID, "download-profile")
    no_console_errors(driver)

    # The profile is for the password this session just made: another id gets nothing.
    secret = create(driver, "Mail", "Mac")
    driver.execute_script("document.querySelector('#profile-form input[name=id]').value = '999999'")
    submit(driver, driver.find_element(By.ID, "download-profile"))
    assert "no longer available" in driver.find_element(By.TAG_NAME, "body").text
    assert not os.path.exists(os.path.join(downloads, "Mac.mobileconfig"))
    print("PROFILE-REFUSED OK", flush=True)
finally:
    driver.quit()

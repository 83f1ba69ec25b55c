"""Hosted domains in a real browser (tests/domains.rs runs it, with tests/portal_common.py in
front): connect, publish the TXT record in the test's DNS server, confirm; a mailbox that signs
in over IMAP and is refused on the domain pages; an additional administrator; a second platform
account that cannot take the domain; disconnect refused with mailboxes, accepted without, and
the domain then confirmed by another account.
"""

import json
import os
import sys

portal, imaps_port, ca, workdir, records = sys.argv[1:6]
PASSWORDS = {
    "owner": "owner long main password",
    "other": "other long main password",
    "helper": "helper long main password",
    "anna@shop.example": "anna long main password",
    "ben@shop.example": "ben long main password",
}


def publish(name, value):
    """Serves exactly this TXT record from the test's DNS server."""
    tmp = records + ".tmp"
    with open(tmp, "w") as f:
        json.dump({name: [value]}, f)
    os.replace(tmp, records)


def connect_and_publish(driver, domain):
    driver.get(f"{portal}/domains")
    wait_for(driver, "domain").send_keys(domain)
    submit(driver, driver.find_element(By.ID, "connect"))
    name = driver.find_element(By.CLASS_NAME, "challenge-name").text
    value = driver.find_element(By.CLASS_NAME, "challenge-value").text
    assert name == f"_portcullis-challenge.{domain}", name
    return name, value


def confirm(driver):
    submit(driver, driver.find_element(By.CLASS_NAME, "confirm"))


def create_mailbox(driver, local, first):
    wait_for(driver, "mailbox-login").send_keys(local)
    driver.find_element(By.ID, "mailbox-password").send_keys(PASSWORDS[f"{local}@shop.example"])
    driver.find_element(By.ID, "mailbox-first").send_keys(first)
    submit(driver, driver.find_element(By.ID, "create-mailbox"))
    wait_for(driver, f"mailbox-{local}")


def delete_mailbox(driver, local):
    row = wait_for(driver, f"mailbox-{local}")
    row.find_element(By.CLASS_NAME, "delete-sure").click()
    submit(driver, row.find_element(By.CLASS_NAME, "delete"))


owner = browser("domains-owner")
mailbox = browser("domains-mailbox")
try:
    sign_in(owner, "owner")
    name, value = connect_and_publish(owner, "shop.example")
    shot(owner, "domains-pending")
    # Not published yet: the page says so.
    confirm(owner)
    text = wait_for(owner, "error").text
    assert "No TXT record" in text, text
    publish(name, value)
    confirm(owner)
    assert owner.current_url.endswith("/domains/shop.example"), owner.current_url
    print("CONFIRMED", flush=True)

    create_mailbox(owner, "anna", "Anna")
    shot(owner, "domain")
    # The domain's activity says who did it, from where.
    activity = wait_for(owner, "activity").text
    assert "mailbox created" in activity and "owner@example.org" in activity and "127.0.0.1" in activity, activity
    # The mailbox signs in to the portal for its own access, and over IMAP.
    sign_in(mailbox, "anna@shop.example")
    mailbox.find_element(By.ID, "name").send_keys("Phone")
    submit(mailbox, mailbox.find_element(By.ID, "create"))
    secret = wait_for(mailbox, "secret").text.strip()
    assert not imap_refused(secret, "anna@shop.example")
    # ...and is refused on the domain pages.
    mailbox.get(f"{portal}/domains")
    text = wait_for(mailbox, "error").text
    assert "a domain is managed from a platform account" in text, text
    mailbox.get(f"{portal}/domains/shop.example")
    assert "a domain is managed from a platform account" in wait_for(mailbox, "error").text
    # Those two 403s were provoked on purpose: read them out of the console log, so what
    # no_console_errors finds later is the pages' own.
    assert all("status of 403" in e["message"] for e in mailbox.get_log("browser") if e["level"] == "SEVERE")
    print("MAILBOX", flush=True)

    # Blocking from the page: the app password dies at once.
    row = wait_for(owner, "mailbox-anna")
    submit(owner, row.find_element(By.CLASS_NAME, "block"))
    assert wait_for(owner, "mailbox-anna").find_element(By.CLASS_NAME, "state").text == "blocked"
    assert imap_refused(secret, "anna@shop.example")
    submit(owner, wait_for(owner, "mailbox-anna").find_element(By.CLASS_NAME, "unblock"))
    # Blocking ended Anna's web session too; unblocked, she signs in again and her own
    # activity shows what her domain's manager did.
    mailbox.get(f"{portal}/access")
    assert mailbox.current_url.endswith("/signin"), mailbox.current_url
    sign_in(mailbox, "anna@shop.example")
    mailbox.get(f"{portal}/activity")
    mine = wait_for(mailbox, "activity").text
    assert "mailbox blocked" in mine and "owner@example.org" in mine, mine

    # An additional administrator manages mailboxes, and nothing of the owner's.
    wait_for(owner, "admin-login").send_keys("helper")
    submit(owner, owner.find_element(By.ID, "add-admin"))
    assert "helper@example.org" in wait_for(owner, "admins").text
    sign_in(mailbox, "helper", add=True)
    mailbox.get(f"{portal}/domains/shop.example")
    create_mailbox(mailbox, "ben", "Ben")
    assert not mailbox.find_elements(By.ID, "disconnect")
    assert not mailbox.find_elements(By.ID, "create-token")
    print("ADMINISTRATOR", flush=True)

    # Another platform account cannot take it.
    sign_in(mailbox, "other", add=True)
    mailbox.get(f"{portal}/domains")
    wait_for(mailbox, "domain").send_keys("shop.example")
    submit(mailbox, mailbox.find_element(By.ID, "connect"))
    assert "already connected to another account" in wait_for(mailbox, "error").text
    print("NOT-TAKEN", flush=True)

    # Disconnect: refused with mailboxes; then they are deleted (for good, the page says).
    owner.get(f"{portal}/domains/shop.example")
    submit(owner, wait_for(owner, "disconnect"))
    assert "still has 2 mailboxes" in wait_for(owner, "error").text
    delete_mailbox(owner, "anna")
    delete_mailbox(owner, "ben")
    wait_for(owner, "no-mailboxes")
    submit(owner, owner.find_element(By.ID, "disconnect"))
    assert owner.current_url.endswith("/domains"), owner.current_url
    wait_for(owner, "no-domains")
    # The other account connects and confirms it with its own token.
    name, value = connect_and_publish(mailbox, "shop.example")
    publish(name, value)
    confirm(mailbox)
    assert mailbox.current_url.endswith("/domains/shop.example"), mailbox.current_url
    shot(mailbox, "domain-reconnected")
    no_console_errors(owner)
    no_console_errors(mailbox)
    print("RECONNECTED", flush=True)
finally:
    owner.quit()
    mailbox.quit()

#!/usr/bin/env bash
# Installs the real peers the tests, the benchmarks and scripts/run use, if they are missing:
# Dovecot (IMAP, submission, POP3), fetchmail and getmail6, curl, openssl, litmus, Prosody with its community modules,
# Postfix and swaks, sendxmpp and go-sendxmpp, Chromium and its driver, HAProxy, PostgreSQL, fail2ban,
# Prometheus (promtool), systemd (systemd-analyze),
# nginx with its mail module (benchmark baseline), and from PyPI aiosmtpd, wsgidav, radicale, caldav,
# vdirsyncer, slixmpp, selenium, dnslib and lxml.
set -euo pipefail

missing_debs=()
command -v dovecot >/dev/null 2>&1 || missing_debs+=(dovecot-imapd dovecot-submissiond)
[ -e /usr/lib/dovecot/submission ] || missing_debs+=(dovecot-submissiond)
[ -e /usr/lib/dovecot/pop3 ] || missing_debs+=(dovecot-pop3d)
# Mail importers that fetch over POP3 (tests/pop3_e2e.rs).
command -v fetchmail >/dev/null 2>&1 || missing_debs+=(fetchmail)
command -v getmail >/dev/null 2>&1 || missing_debs+=(getmail6)
command -v curl >/dev/null 2>&1 || missing_debs+=(curl)
# ss lists the gateway's sockets (tests/hostile_input.rs: refusals leave no TIME_WAIT).
command -v ss >/dev/null 2>&1 || missing_debs+=(iproute2)
command -v openssl >/dev/null 2>&1 || missing_debs+=(openssl)
command -v nginx >/dev/null 2>&1 || missing_debs+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_mail_module.so ] || missing_debs+=(libnginx-mod-mail)
command -v python3 >/dev/null 2>&1 || missing_debs+=(python3 python3-pip)
command -v litmus >/dev/null 2>&1 || missing_debs+=(litmus)
command -v prosody >/dev/null 2>&1 || missing_debs+=(prosody)
[ -e /usr/lib/prosody/modules/mod_auth_dovecot ] || missing_debs+=(prosody-modules)
command -v postfix >/dev/null 2>&1 || missing_debs+=(postfix)
command -v swaks >/dev/null 2>&1 || missing_debs+=(swaks)
# Command-line Jabber clients whose habits differ from slixmpp's (see tests/xmpp_e2e.rs).
command -v sendxmpp >/dev/null 2>&1 || missing_debs+=(sendxmpp)
command -v go-sendxmpp >/dev/null 2>&1 || missing_debs+=(go-sendxmpp)
# A real browser for the account portal's tests (Selenium drives it).
command -v chromium >/dev/null 2>&1 || missing_debs+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing_debs+=(chromium-driver)
# A load balancer in front of the gateway (PROXY protocol tests).
command -v haproxy >/dev/null 2>&1 || missing_debs+=(haproxy)
# fail2ban-regex checks the shipped fail2ban filter against the gateway's real log.
command -v fail2ban-regex >/dev/null 2>&1 || missing_debs+=(fail2ban)
# promtool checks the gateway's Prometheus metrics; systemd-analyze its systemd unit.
command -v promtool >/dev/null 2>&1 || missing_debs+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing_debs+=(systemd)
# PostgreSQL server binaries: the tests start private clusters of their own (initdb, postgres).
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing_debs+=(postgresql)

if [ ${#missing_debs[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing_debs[*]}" >&2
        echo "install them with: sudo apt-get install ${missing_debs[*]}" >&2
        exit 1
    fi
    echo "installing ${missing_debs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Postfix asks how to configure the system's own instance: not at all (the tests run
    # private instances).
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Nor does PostgreSQL get a system cluster of its own.
    mkdir -p /etc/postgresql-common
    [ -e /etc/postgresql-common/createcluster.conf ] ||
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    apt-get update -qq
    apt-get install -y -qq "${missing_debs[@]}" >/dev/null
fi

# Python peers and clients: aiosmtpd (SMTP sink), wsgidav + cheroot (WebDAV server),
# radicale (CalDAV/CardDAV server), caldav and vdirsyncer (DAV clients), slixmpp (XMPP client),
# selenium (drives Chromium), dnslib (an authoritative DNS server for the domain tests).
missing_py=()
python3 -c 'import aiosmtpd' 2>/dev/null || missing_py+=(aiosmtpd)
python3 -c 'import wsgidav, cheroot' 2>/dev/null || missing_py+=(wsgidav cheroot)
python3 -c 'import radicale' 2>/dev/null || missing_py+=(radicale)
python3 -c 'import caldav' 2>/dev/null || missing_py+=(caldav)
command -v vdirsyncer >/dev/null 2>&1 || missing_py+=(vdirsyncer)
python3 -c 'import slixmpp' 2>/dev/null || missing_py+=(slixmpp)
python3 -c 'import selenium' 2>/dev/null || missing_py+=(selenium)
python3 -c 'import dnslib' 2>/dev/null || missing_py+=(dnslib)
# lxml validates autoconfig and Autodiscover answers against XML schemas.
python3 -c 'import lxml.etree' 2>/dev/null || missing_py+=(lxml)
if [ ${#missing_py[@]} -gt 0 ]; then
    echo "installing ${missing_py[*]}" >&2
    python3 -m pip install --quiet --disable-pip-version-check "${missing_py[@]}" \
        || python3 -m pip install --quiet --break-system-packages "${missing_py[@]}"
fi

#!/usr/bin/env bash
# Installs the real peers the tests, the benchmarks and scripts/run use, if they are missing:
# Dovecot (IMAP + submission), curl, openssl, nginx with its mail module (benchmark baseline),
# and Python's aiosmtpd (the SMTP sink behind Dovecot's submission service).
set -euo pipefail

missing_debs=()
command -v dovecot >/dev/null 2>&1 || missing_debs+=(dovecot-imapd dovecot-submissiond)
[ -e /usr/lib/dovecot/submission ] || missing_debs+=(dovecot-submissiond)
command -v curl >/dev/null 2>&1 || missing_debs+=(curl)
command -v openssl >/dev/null 2>&1 || missing_debs+=(openssl)
command -v nginx >/dev/null 2>&1 || missing_debs+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_mail_module.so ] || missing_debs+=(libnginx-mod-mail)
command -v python3 >/dev/null 2>&1 || missing_debs+=(python3 python3-pip)

if [ ${#missing_debs[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing_debs[*]}" >&2
        echo "install them with: sudo apt-get install ${missing_debs[*]}" >&2
        exit 1
    fi
    echo "installing ${missing_debs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing_debs[@]}" >/dev/null
fi

if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    echo "installing aiosmtpd" >&2
    python3 -m pip install --quiet --disable-pip-version-check aiosmtpd \
        || python3 -m pip install --quiet --break-system-packages aiosmtpd
fi

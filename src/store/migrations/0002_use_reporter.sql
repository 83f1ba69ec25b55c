-- Who reported an app password's last-use address, when it was not the gateway itself: a daemon
-- asking the auth server names the end user's address (rip=) and could name any address.
ALTER TABLE app_passwords ADD COLUMN last_used_reporter TEXT;

-- What an owner limited an app password to when making it: a moment from which it is refused
-- (Unix ms; NULL: never), and the client networks it works from (comma-separated CIDR blocks;
-- NULL: any).
ALTER TABLE app_passwords ADD COLUMN expires_at BIGINT;
ALTER TABLE app_passwords ADD COLUMN networks TEXT;

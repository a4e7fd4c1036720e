-- What a device is, as its client says at sign-in: browser (the web app), cli, app (a native
-- integration) or other (every device signed in before this migration, and clients that
-- do not say).
ALTER TABLE devices ADD COLUMN kind TEXT NOT NULL DEFAULT 'other';

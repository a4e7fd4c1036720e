-- The device whose sign-in made each app password: removing that device (or a detected
-- refresh-token theft on it) deletes the app passwords it made, so a stolen access token
-- cannot mint a credential that outlives the device's removal. NULL for app passwords made
-- before this migration.
ALTER TABLE app_passwords ADD COLUMN created_by UUID;

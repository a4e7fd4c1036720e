-- The app password (one NextChat installation) whose upload a snapshot keeps, so the list
-- can say which device it came from. NULL for imports, restores and older snapshots.
ALTER TABLE nextchat_snapshots ADD COLUMN app_password_id UUID;

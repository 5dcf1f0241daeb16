-- What happened to the notification; rows from before say it was sent.
ALTER TABLE audit_events ADD COLUMN event_type text NOT NULL DEFAULT 'notification.sent';
CREATE INDEX audit_events_by_type ON audit_events (event_type, stored_at);

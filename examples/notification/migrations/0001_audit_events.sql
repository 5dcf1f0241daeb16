-- Audit events: one row per notification, whatever sent it.
CREATE TABLE audit_events (
    id              bigserial PRIMARY KEY,
    notification_id text NOT NULL UNIQUE,
    payload         jsonb NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now()
);

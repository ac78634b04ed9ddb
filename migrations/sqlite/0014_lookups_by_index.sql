-- Lookups that read a growing table whole (found by reading every statement against the indexes):
--
-- A widget visitor's conversation (every WebSocket connect, every catch-up that finds nothing
-- new), a contact's last channel (enrolling by contact), a contact's history, a linked contact's
-- conversations moved over, and the checks of `conversation`'s key when a contact is merged
-- away: all find a contact's conversations of any status, which `conversation_one_open` (open
-- ones only) does not serve — they read every conversation of every tenant.
CREATE INDEX conversation_by_contact ON conversation (contact_id, channel_id, created_at);

-- Each inbound email webhook first forgets its channel's day-old signed tokens, by age.
CREATE INDEX webhook_token_by_age ON webhook_token (channel_id, seen_at);

-- Each `/link <code>` counts the tenant's and the contact's failed attempts of the last hour in
-- the audit log, which otherwise reads every event of the tenant.
CREATE INDEX event_by_kind ON event (tenant_id, kind, created_at);

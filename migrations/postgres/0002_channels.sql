-- Channel rules (Telegram, WhatsApp): reachability, rich outbound content, cross-channel linking.
-- Keep in step with the other backend's 0002_channels.sql.

-- A contact who blocked the bot (or removed it from a group) cannot be written to on that channel:
-- sends fail visibly with this reason instead of being attempted. Cleared when they come back.
ALTER TABLE contact_identity ADD COLUMN unreachable_at BIGINT;
ALTER TABLE contact_identity ADD COLUMN unreachable_reason TEXT;
-- When the last reachability change happened (the provider's time): a late, older report is ignored.
ALTER TABLE contact_identity ADD COLUMN reachability_at BIGINT;

-- Buttons, list, media or template of an outbound message (JSON, see the channel contract's
-- `Content`), NULL for plain text.
ALTER TABLE delivery ADD COLUMN content TEXT;

-- A message the provider takes as several messages (a long text split, media then text): how many
-- parts it has accepted, so a retry resumes after them instead of sending them twice.
ALTER TABLE delivery ADD COLUMN parts_sent BIGINT NOT NULL DEFAULT 0;

-- One-time codes that link a contact's identities on several channels into one contact (one
-- history). A code is used once, by another identity of the same tenant, before it expires.
CREATE TABLE link_code (
    tenant_id   TEXT NOT NULL REFERENCES tenant(id),
    code        TEXT NOT NULL,
    contact_id  TEXT NOT NULL REFERENCES contact(id),
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, code)
);

CREATE INDEX contact_identity_by_contact ON contact_identity (contact_id);

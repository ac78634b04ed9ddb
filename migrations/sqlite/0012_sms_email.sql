-- SMS and email. Keep in step with ../postgres/0012_sms_email.sql.

-- Email threads: one open conversation per contact, channel and thread. Other channels have
-- one thread (''); an email conversation's thread is the Message-ID that opened it, and its
-- subject is what replies are titled.
ALTER TABLE conversation ADD COLUMN thread TEXT NOT NULL DEFAULT '';
ALTER TABLE conversation ADD COLUMN subject TEXT;
DROP INDEX conversation_one_open;
CREATE UNIQUE INDEX conversation_one_open ON conversation (contact_id, channel_id, thread) WHERE status <> 'closed';

-- One-time tokens providers sign (Mailgun): the same token with another body is a replay.
CREATE TABLE webhook_token (
    channel_id   TEXT NOT NULL REFERENCES channel(id),
    token        TEXT NOT NULL,
    body_sha256  TEXT NOT NULL,
    seen_at      BIGINT NOT NULL,
    PRIMARY KEY (channel_id, token)
);

-- The request an email arrived in, as received (its attachments are served from it).
CREATE TABLE inbound_original (
    channel_id    TEXT NOT NULL REFERENCES channel(id),
    provider_id   TEXT NOT NULL,
    content_type  TEXT,
    body          BLOB NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (channel_id, provider_id)
);

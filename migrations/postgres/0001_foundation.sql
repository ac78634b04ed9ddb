-- Switchboard foundation schema (PostgreSQL). Keep in step with ../sqlite/0001_foundation.sql:
-- the same tables, columns and constraints; only id generation differs.
--
-- Conventions (both backends, so one set of queries runs on either through sqlx's Any driver):
--   * ids are TEXT (UUIDv7 made by the application), except the audit log's integer sequence;
--   * times are BIGINT milliseconds since the Unix epoch (UTC);
--   * flags are INTEGER 0/1, JSON is TEXT.

-- A customer of the platform. Everything else hangs off a tenant; every query filters by it.
CREATE TABLE tenant (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    settings    TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL
);

-- API keys are shown once and stored as SHA-256 of the key (keys are 190+ random bits, so a
-- fast hash is enough; there is nothing to brute-force). `prefix` lets an operator recognise a key.
CREATE TABLE api_key (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenant(id),
    role        TEXT NOT NULL CHECK (role IN ('admin', 'creator', 'moderator', 'widget')),
    key_hash    TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- A connected channel. Credentials live in `config` (JSON), per tenant, never in process config.
-- Each tenant has exactly one implicit `api` channel, created with the tenant.
CREATE TABLE channel (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenant(id),
    kind        TEXT NOT NULL CHECK (kind IN ('api', 'widget', 'telegram', 'whatsapp', 'sms', 'email')),
    config      TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX channel_one_api_per_tenant ON channel (tenant_id, kind) WHERE kind IN ('api', 'widget');

-- A person, across channels.
CREATE TABLE contact (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenant(id),
    display_name  TEXT,
    opted_out_at  BIGINT,
    created_at    BIGINT NOT NULL
);

-- How a channel knows a contact. (channel, external id) is unique: the ingest gate relies on it.
CREATE TABLE contact_identity (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenant(id),
    contact_id   TEXT NOT NULL REFERENCES contact(id),
    channel_id   TEXT NOT NULL REFERENCES channel(id),
    external_id  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE (channel_id, external_id)
);

-- One thread between a contact and the tenant on one channel. At most one open (not closed)
-- conversation per (contact, channel): the partial unique index makes concurrent first messages
-- agree on the same conversation. `last_seq` hands out per-conversation message numbers.
CREATE TABLE conversation (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenant(id),
    contact_id       TEXT NOT NULL REFERENCES contact(id),
    channel_id       TEXT NOT NULL REFERENCES channel(id),
    status           TEXT NOT NULL DEFAULT 'bot' CHECK (status IN ('bot', 'human', 'closed')),
    flagged          BIGINT NOT NULL DEFAULT 0,
    last_seq         BIGINT NOT NULL DEFAULT 0,
    last_inbound_at  BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE UNIQUE INDEX conversation_one_open ON conversation (contact_id, channel_id) WHERE status <> 'closed';
CREATE INDEX conversation_by_tenant ON conversation (tenant_id, updated_at);

-- Every message, both directions. Inbound rows are written before the sender gets its 2xx and are
-- `received` until the router has answered them (`processed_at`); outbound rows go `queued` → `sent`
-- (→ `delivered`/`read` on provider receipts) or `failed`.
-- (channel_id, provider_id) unique is the dedupe gate for redeliveries.
CREATE TABLE message (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenant(id),
    conversation_id  TEXT NOT NULL REFERENCES conversation(id),
    channel_id       TEXT NOT NULL REFERENCES channel(id),
    seq              BIGINT NOT NULL,
    direction        TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    author           TEXT NOT NULL CHECK (author IN ('contact', 'bot', 'agent', 'system')),
    text             TEXT NOT NULL,
    attachments      TEXT NOT NULL DEFAULT '[]',
    citations        TEXT NOT NULL DEFAULT '[]',
    provider_id      TEXT,
    -- The provider's message type (text, image, reaction, button_reply, …), the provider id of
    -- the message it answers or reacts to, and when the person sent it (Unix seconds).
    kind             TEXT NOT NULL DEFAULT 'text',
    reply_to_provider_id TEXT,
    sent_at          BIGINT,
    reply_to         TEXT REFERENCES message(id),
    status           TEXT NOT NULL,
    processed_at     BIGINT,
    created_at       BIGINT NOT NULL,
    UNIQUE (conversation_id, seq),
    UNIQUE (channel_id, provider_id)
);
CREATE INDEX message_unprocessed ON message (conversation_id, seq) WHERE direction = 'inbound' AND processed_at IS NULL;
CREATE INDEX message_reply_to ON message (reply_to) WHERE reply_to IS NOT NULL;

-- The outbox: one row per outbound message, written in the same transaction as the message.
-- Workers claim due rows by setting `locked_until` (a lease; with FOR UPDATE SKIP LOCKED on
-- Postgres), send, then record the outcome. `dead` rows are dead letters: visible, never dropped.
-- A row carries what the send needs (`recipient`, `body`), so claiming is the only read a send
-- costs and proactive messages (no inbound turn) fit the same table.
CREATE TABLE delivery (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenant(id),
    channel_id           TEXT NOT NULL REFERENCES channel(id),
    conversation_id      TEXT NOT NULL REFERENCES conversation(id),
    message_id           TEXT NOT NULL UNIQUE REFERENCES message(id),
    seq                  BIGINT NOT NULL,
    recipient            TEXT NOT NULL,
    body                 TEXT NOT NULL,
    status               TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts             BIGINT NOT NULL DEFAULT 0,
    next_attempt_at      BIGINT NOT NULL,
    locked_until         BIGINT,
    last_error           TEXT,
    provider_message_id  TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
-- In the claim's ORDER BY order: the claim walks it and stops after LIMIT eligible rows,
-- whatever the backlog.
CREATE INDEX delivery_due ON delivery (status, next_attempt_at, seq);
CREATE INDEX delivery_by_conversation ON delivery (conversation_id, seq) WHERE status = 'pending';

-- Provider status reports that arrived before we had recorded the provider's id for our message
-- (the send's answer and the status webhook race). Applied and deleted when the id is recorded;
-- reports for ids never recorded are dropped after a week.
CREATE TABLE early_status (
    channel_id           TEXT NOT NULL REFERENCES channel(id),
    provider_message_id  TEXT NOT NULL,
    state                TEXT NOT NULL,
    error                TEXT,
    created_at           BIGINT NOT NULL,
    PRIMARY KEY (channel_id, provider_message_id, state)
);

-- Append-only audit log: who did what to which object.
CREATE TABLE event (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   TEXT,
    kind        TEXT NOT NULL,
    subject     TEXT,
    detail      TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL
);
CREATE INDEX event_by_tenant ON event (tenant_id, id);

-- Moderation, hand-off and tickets. Keep in step with ../postgres/0009_moderation.sql.

-- A blocked contact gets no answer and nothing proactive (a moderator may unblock).
ALTER TABLE contact ADD COLUMN blocked_at BIGINT;
ALTER TABLE contact ADD COLUMN blocked_reason TEXT;

-- A conversation with a person: who has it, since when (the bot resumes when it is handed back,
-- closed, or after the tenant's hand-off timeout).
ALTER TABLE conversation ADD COLUMN assignee TEXT;
ALTER TABLE conversation ADD COLUMN handed_off_at BIGINT;

-- Each saved policy is a new version; flags record the version that raised them.
CREATE TABLE moderation_policy (
    tenant_id   TEXT NOT NULL REFERENCES tenant(id),
    version     BIGINT NOT NULL,
    policy      TEXT NOT NULL,
    created_by  TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

-- A flag: what the policy found in one message, with its evidence (immutable: a trigger refuses
-- changes to it), and what a moderator decided.
CREATE TABLE flag (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenant(id),
    conversation_id  TEXT NOT NULL REFERENCES conversation(id),
    contact_id       TEXT NOT NULL REFERENCES contact(id),
    -- The inbound message, or the bot's answer (held answers are stored, not queued).
    message_id       TEXT NOT NULL REFERENCES message(id),
    direction        TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    -- What the policy decided: flag, hold, block, crisis (and allow, for shadow hits).
    action           TEXT NOT NULL,
    shadow           BIGINT NOT NULL DEFAULT 0,
    status           TEXT NOT NULL DEFAULT 'open',
    policy_version   BIGINT NOT NULL,
    evidence         TEXT NOT NULL,
    verdict          TEXT,
    verdict_text     TEXT,
    verdict_by       TEXT,
    verdict_at       BIGINT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX flag_queue ON flag (tenant_id, status, created_at);
CREATE INDEX flag_by_message ON flag (message_id);

CREATE TRIGGER flag_evidence_immutable BEFORE UPDATE ON flag
    WHEN NEW.evidence <> OLD.evidence OR NEW.message_id <> OLD.message_id
      OR NEW.policy_version <> OLD.policy_version OR NEW.action <> OLD.action
BEGIN
    SELECT RAISE(ABORT, 'a flag''s evidence cannot be changed');
END;

-- Tickets: escalations (hand-off, crisis, flags, /human) and ones made over the API, with SLA
-- targets fixed when they are opened (from the priority).
CREATE TABLE ticket (
    id                       TEXT PRIMARY KEY,
    tenant_id                TEXT NOT NULL REFERENCES tenant(id),
    subject                  TEXT NOT NULL,
    source                   TEXT NOT NULL,
    status                   TEXT NOT NULL DEFAULT 'open'
                             CHECK (status IN ('open', 'pending', 'solved', 'closed')),
    priority                 TEXT NOT NULL DEFAULT 'normal'
                             CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    assignee                 TEXT,
    conversation_id          TEXT REFERENCES conversation(id),
    contact_id               TEXT REFERENCES contact(id),
    flag_id                  TEXT REFERENCES flag(id),
    first_response_due_at    BIGINT NOT NULL,
    resolution_due_at        BIGINT NOT NULL,
    first_response_at        BIGINT,
    solved_at                BIGINT,
    closed_at                BIGINT,
    created_by               TEXT,
    created_at               BIGINT NOT NULL,
    updated_at               BIGINT NOT NULL
);
CREATE INDEX ticket_by_tenant ON ticket (tenant_id, status, created_at);
-- One open escalation per conversation: a second /human adds to the first.
CREATE UNIQUE INDEX ticket_one_open ON ticket (conversation_id)
    WHERE status IN ('open', 'pending') AND conversation_id IS NOT NULL;

CREATE TABLE ticket_note (
    id          TEXT PRIMARY KEY,
    ticket_id   TEXT NOT NULL REFERENCES ticket(id),
    author      TEXT,
    text        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX ticket_note_by_ticket ON ticket_note (ticket_id, created_at);

-- Coaching programs and the proactive engine. Keep in step with ../sqlite/0007_programs.sql.

-- Per contact: an IANA time zone (NULL: the tenant's default), fields set by programs and the API
-- (JSON object), tags (JSON array), and quiet hours overriding the tenant's ("21:00-08:00").
ALTER TABLE contact ADD COLUMN timezone TEXT;
ALTER TABLE contact ADD COLUMN fields TEXT NOT NULL DEFAULT '{}';
ALTER TABLE contact ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE contact ADD COLUMN quiet_hours TEXT;

-- A program: its draft definition (what `PUT` saves, validated) and its published versions.
CREATE TABLE program (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenant(id),
    name             TEXT NOT NULL,
    definition       TEXT NOT NULL,
    current_version  BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    deleted_at       BIGINT
);
CREATE INDEX program_by_tenant ON program (tenant_id, name);

-- Running enrolments keep the version they started on.
CREATE TABLE program_version (
    program_id    TEXT NOT NULL REFERENCES program(id),
    version       BIGINT NOT NULL,
    definition    TEXT NOT NULL,
    published_at  BIGINT NOT NULL,
    PRIMARY KEY (program_id, version)
);

-- One contact in one program. `step` is where it stands (the step waited on, or the ask awaiting
-- an answer); `epoch` grows with every move, so a fire scheduled for an older position is stale.
-- At most one active or paused enrolment per (program, contact).
CREATE TABLE enrollment (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenant(id),
    program_id        TEXT NOT NULL REFERENCES program(id),
    version           BIGINT NOT NULL,
    contact_id        TEXT NOT NULL REFERENCES contact(id),
    channel_id        TEXT NOT NULL REFERENCES channel(id),
    status            TEXT NOT NULL CHECK (status IN ('active', 'paused', 'completed', 'stopped')),
    step              TEXT NOT NULL,
    -- `ask`: awaiting an answer at `step`; `wait`: a fire will move it on; `done`.
    waiting           TEXT NOT NULL DEFAULT 'wait',
    epoch             BIGINT NOT NULL DEFAULT 0,
    reprompts         BIGINT NOT NULL DEFAULT 0,
    steps_done        BIGINT NOT NULL DEFAULT 0,
    nudges            BIGINT NOT NULL DEFAULT 0,
    at_risk           BIGINT NOT NULL DEFAULT 0,
    streak            BIGINT NOT NULL DEFAULT 0,
    best_streak       BIGINT NOT NULL DEFAULT 0,
    -- The contact's local day (YYYY-MM-DD) of the last check-in counted in the streak.
    streak_day        TEXT,
    badges            TEXT NOT NULL DEFAULT '[]',
    answers           TEXT NOT NULL DEFAULT '{}',
    stopped_reason    TEXT,
    started_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    completed_at      BIGINT
);
CREATE UNIQUE INDEX enrollment_one_running ON enrollment (program_id, contact_id) WHERE status IN ('active', 'paused');
CREATE INDEX enrollment_by_contact ON enrollment (contact_id, status);

-- The one durable fire table: everything the engine will do at a time. A fire is keyed by
-- (enrolment, kind, step, version, epoch): scheduling the same move twice adds nothing, and
-- executing it claims the row and moves the enrolment's epoch in one transaction.
-- `kind`: `step` (a wait is over), `timeout` (an ask went unanswered), `nudge` (inactivity).
-- `status`: pending → done | skipped | cancelled | stale | failed.
CREATE TABLE fire (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenant(id),
    enrollment_id  TEXT NOT NULL REFERENCES enrollment(id),
    contact_id     TEXT NOT NULL REFERENCES contact(id),
    kind           TEXT NOT NULL,
    step           TEXT NOT NULL,
    version        BIGINT NOT NULL,
    epoch          BIGINT NOT NULL,
    -- When it was meant to happen (the program's time) and when it is next due (after deferrals).
    intended_at    BIGINT NOT NULL,
    due_at         BIGINT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'pending',
    attempts       BIGINT NOT NULL DEFAULT 0,
    -- Why it was deferred, skipped or failed (the last reason).
    reason         TEXT,
    -- Whether it sent a proactive message (the daily cap counts these).
    sent           BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    done_at        BIGINT,
    UNIQUE (enrollment_id, kind, step, version, epoch)
);
CREATE INDEX fire_due ON fire (status, due_at);
CREATE INDEX fire_by_contact ON fire (contact_id, status, done_at);

-- Which steps each enrolment reached and answered: the funnel of `GET /v1/programs/{id}/stats`.
CREATE TABLE step_visit (
    enrollment_id  TEXT NOT NULL REFERENCES enrollment(id),
    program_id     TEXT NOT NULL REFERENCES program(id),
    step           TEXT NOT NULL,
    reached_at     BIGINT NOT NULL,
    answered_at    BIGINT,
    PRIMARY KEY (enrollment_id, step)
);
CREATE INDEX step_visit_by_program ON step_visit (program_id, step);

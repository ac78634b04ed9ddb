-- Grounded or honest. Keep in step with ../postgres/0011_grounding.sql.

-- A tenant's retrieval and grounding settings (relevance floor, what an ungrounded answer
-- does), as the JSON `PUT /v1/knowledge/settings` accepted; no row → the defaults.
CREATE TABLE knowledge_settings (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenant(id),
    settings    TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- How a bot answer stood against its sources (JSON: what it cited, sentences unsupported, what
-- the policy did); NULL for messages that are not generated answers.
ALTER TABLE message ADD COLUMN grounding TEXT;

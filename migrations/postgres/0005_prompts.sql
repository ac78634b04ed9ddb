-- Answers (issue 4): a tenant's own prompt templates, over the built-in ones in `prompts/`.
-- `name` is one of persona, answer, no_answer, fallback; the body is checked (MiniJinja syntax,
-- known variables) before it is stored.
CREATE TABLE prompt_template (
    tenant_id   TEXT NOT NULL REFERENCES tenant(id),
    name        TEXT NOT NULL,
    body        TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- Hand-off policies. Keep in step with ../sqlite/0010_handoff.sql.

-- Answers in a row that were not from the knowledge (no answer, a fallback): the policy
-- `handoff.after_fallbacks` hands the conversation to a person when it reaches its limit.
ALTER TABLE conversation ADD COLUMN fallbacks BIGINT NOT NULL DEFAULT 0;

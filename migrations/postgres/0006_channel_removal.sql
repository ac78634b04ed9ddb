-- Hardening: a channel can be removed (`DELETE /v1/channels/{id}`). Its conversations and
-- messages stay (they reference it); a removed channel takes no webhooks, sends nothing (what
-- was pending becomes a dead letter saying so) and is not listed.
ALTER TABLE channel ADD COLUMN removed_at BIGINT;

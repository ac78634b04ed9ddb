-- Lookups outside the message path that read a growing table whole (the rest of the reading of
-- every statement against the indexes that gave 0013 and 0014):
--
-- The hand-off timeout's sweep runs for every tenant every minute and looks for conversations
-- with a person; `conversation_by_tenant` served it by reading all of the tenant's
-- conversations. Partial: only conversations with a person are in it, so the bot's updates of
-- a conversation (two per message) never touch it.
CREATE INDEX conversation_in_handoff ON conversation (tenant_id, handed_off_at) WHERE status = 'human';

-- A program's statistics and engagement count its enrolments by status; `enrollment_one_running`
-- holds running ones only, so they read every enrolment of every program.
CREATE INDEX enrollment_by_program ON enrollment (program_id, status);

-- Merging a contact into another (`/link`) moves its rows and deletes it; the delete's foreign
-- key checks, like the moves, look each referencing table up by `contact_id`.
CREATE INDEX flag_by_contact ON flag (contact_id);
CREATE INDEX ticket_by_contact ON ticket (contact_id);
CREATE INDEX link_code_by_contact ON link_code (contact_id);

-- `GET /v1/deliveries?status=delivered`: a tenant's delivered messages, newest first. Served by
-- `delivery_due` (status first), it read every message ever sent and sorted them. Keyed on what
-- never changes (ids are UUIDv7, in order of creation), so a delivery writes its entry once, when
-- it is inserted: keyed on status and time, each reply moved its entry twice more (the hot path
-- paid 2–5 % of its throughput for it).
CREATE INDEX delivery_by_tenant ON delivery (tenant_id, id);

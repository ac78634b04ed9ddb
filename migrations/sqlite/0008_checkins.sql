-- Recurring check-ins and nudge lift; the claim's index. Keep in step with ../postgres/0008_checkins.sql.

-- The check-in fire whose answer an enrolment awaits (the contact's next message answers it).
ALTER TABLE enrollment ADD COLUMN checkin_open TEXT;

-- When the contact answered what this fire sent (a check-in's answer), for the stats.
ALTER TABLE fire ADD COLUMN answered_at BIGINT;

-- The claim reads pending fires in (due_at, id) order, 64 at a time: with `id` in the index the
-- order comes from it and the claim stops after 64 rows, instead of sorting every due fire. Only
-- pending fires are in it, so no query about done fires (the daily cap's count) can be planned
-- on it when the statistics are stale after a burst: that plan walked every done fire per fire.
DROP INDEX fire_due;
CREATE INDEX fire_due ON fire (due_at, id) WHERE status = 'pending';

-- An enrolment's fires by status (cancel on completion, pause, a reply's nudges): without it the
-- planner walks `fire_due` over every pending fire of every enrolment.
CREATE INDEX fire_by_enrollment ON fire (enrollment_id, status);

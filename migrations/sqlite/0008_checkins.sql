-- Recurring check-ins and nudge lift. Keep in step with ../postgres/0008_checkins.sql.

-- The check-in fire whose answer an enrolment awaits (the contact's next message answers it).
ALTER TABLE enrollment ADD COLUMN checkin_open TEXT;

-- When the contact answered what this fire sent (a check-in's answer), for the stats.
ALTER TABLE fire ADD COLUMN answered_at BIGINT;

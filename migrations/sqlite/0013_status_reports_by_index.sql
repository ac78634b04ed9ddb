-- Provider status reports (WhatsApp's sent/delivered/read for every message we send, Twilio's
-- status callbacks, email events) find their delivery by the provider's message id. Without an
-- index for that lookup each report read the whole `delivery` table, which keeps every message
-- ever sent: a report's cost grew with the history, three times per WhatsApp message. Partial:
-- a delivery gets its provider id when the provider accepts it, and the lookups compare it with
-- `=`, which implies it is not NULL.
CREATE INDEX delivery_by_provider_message ON delivery (channel_id, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Reports for ids not recorded yet wait in `early_status` for a week; each new one first drops
-- those past the week, by age.
CREATE INDEX early_status_by_age ON early_status (created_at);

-- The web widget (issue 3).
--
-- Widget keys are public by design (they sit in every page that embeds the widget), so their
-- clear text may be kept: `GET /demo` and the settings API show the key to embed. Other roles'
-- keys never have it (NULL).
ALTER TABLE api_key ADD COLUMN public_key TEXT;

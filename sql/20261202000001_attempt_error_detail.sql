-- What a person needs to know about an attempt that got no answer (`connection refused`,
-- `dns: ...`, `tls: ...`), beside the closed code in `error` that labels and the contract use.
ALTER TABLE delivery_attempts ADD COLUMN IF NOT EXISTS error_detail text;

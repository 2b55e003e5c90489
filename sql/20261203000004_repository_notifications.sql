-- A change to a webhook tells listening workers which repository it belongs to (and the
-- webhook's id), so that they drop that repository's cached configuration only, not all of it
-- (contract section 15). A change that moves a webhook names both repositories. A payload
-- PostgreSQL could not carry (over 8000 bytes: very long names) and TRUNCATE send `*`: drop
-- everything.
CREATE OR REPLACE FUNCTION tagcast_webhook_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        payload := json_build_object('id', OLD.id, 'namespace', OLD.namespace, 'repository', OLD.repository)::text;
        PERFORM pg_notify('tagcast_webhooks', CASE WHEN octet_length(payload) < 8000 THEN payload ELSE '*' END);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        payload := json_build_object('id', NEW.id, 'namespace', NEW.namespace, 'repository', NEW.repository)::text;
        PERFORM pg_notify('tagcast_webhooks', CASE WHEN octet_length(payload) < 8000 THEN payload ELSE '*' END);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION tagcast_webhooks_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tagcast_webhooks', '*');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS webhooks_changed ON webhooks;
CREATE TRIGGER webhooks_changed
    AFTER INSERT OR UPDATE OR DELETE ON webhooks
    FOR EACH ROW EXECUTE FUNCTION tagcast_webhook_changed();
CREATE TRIGGER webhooks_truncated
    AFTER TRUNCATE ON webhooks
    FOR EACH STATEMENT EXECUTE FUNCTION tagcast_webhooks_truncated();
DROP FUNCTION IF EXISTS tagcast_webhooks_changed();

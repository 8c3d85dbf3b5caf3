-- Retention of raw trades as one function, so the retention role needs no table privilege at all: it can
-- delete trades older than keep_days before the cutoff, and nothing else. Re-runnable; run by the owner
-- after schema.sql (grants.sql gives EXECUTE to crypto_retention only). It runs with the owner's rights
-- (SECURITY DEFINER), hence the fixed search_path: no object of the caller may stand in for ours.
-- A cutoff in the future counts as now, so a wrong end can never delete recent trades.
CREATE OR REPLACE FUNCTION delete_old_trades(cutoff_end timestamptz, keep_days integer) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    deleted bigint;
BEGIN
    IF cutoff_end IS NULL THEN
        RAISE EXCEPTION 'delete_old_trades: cutoff_end must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF keep_days IS NULL OR keep_days NOT BETWEEN 1 AND 3650 THEN
        RAISE EXCEPTION 'delete_old_trades: keep_days must be between 1 and 3650, got %', keep_days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM public.trades
    WHERE trade_time < least(cutoff_end, now()) - make_interval(days => keep_days);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

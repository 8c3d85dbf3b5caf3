-- One check's outcome for one window; a re-run of the check replaces it.
INSERT INTO quality_results (check_name, window_start, window_end, passed, detail, run_id)
VALUES (%(check)s, %(start)s, %(end)s, %(passed)s, %(detail)s, %(run_id)s)
ON CONFLICT (check_name, window_start, window_end) DO UPDATE
SET passed = EXCLUDED.passed, detail = EXCLUDED.detail, run_id = EXCLUDED.run_id, checked_at = now()

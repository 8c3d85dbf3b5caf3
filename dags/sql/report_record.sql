-- Record a written report; the same report written again (a re-run) replaces its row.
INSERT INTO reports (report_id, period, window_start, window_end, symbols, path, run_id)
VALUES (%(report_id)s, %(period)s, %(start)s, %(end)s, %(symbols)s::text[], %(path)s, %(run_id)s)
ON CONFLICT (report_id) DO UPDATE
SET window_end = EXCLUDED.window_end, symbols = EXCLUDED.symbols, path = EXCLUDED.path,
    run_id = EXCLUDED.run_id, created_at = now()

-- A failed check as an alert for every symbol ('*'); a re-run of the check only moves detected_at.
INSERT INTO alerts (alert_id, symbol, rule, window_start, value, threshold, price, detected_at)
VALUES (%(id)s, '*', %(rule)s, %(start)s, 0, 0, NULL, now())
ON CONFLICT (alert_id) DO UPDATE SET detected_at = EXCLUDED.detected_at

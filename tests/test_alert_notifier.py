"""The alert notification function as a process on the real Kafka and Redis, delivering to a local webhook
that can be told to fail: once per alert id, cooldown, retries, dead letters, and kill -9."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from confluent_kafka import Producer

from cryptopipe import schemas
from cryptopipe.retry import retry_after
from functions.alert_notifier.alerts import BadAlert, parse_alert

from .helpers import Process, caught_up, create_topics, delete_topics, kill_running, read_topic, wait_for

SKEW_MS = schemas.DEFAULT_MAX_CLOCK_SKEW_S * 1000

MIN = 60_000


class Receiver:
    """A webhook on a free local port. It records every request (alert id from X-Alert-Id, JSON body, time,
    the status it answered or None when it never answered) and answers 200 unless told otherwise:
    `plans[id]` are the answers to that id's next requests (a status, (429, retry_after) or "hang": answer
    nothing for `hang_s`), `always[id]` a status, "hang", or "hold": no answer until `released` is set."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.plans: dict[str, list] = {}
        self.always: dict[str, object] = {}
        self.hang_s = 3.0
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                entry = {"id": self.headers.get("X-Alert-Id"), "body": json.loads(body), "at": time.monotonic(),
                         "content_type": self.headers.get("Content-Type"), "status": None}
                with receiver.lock:
                    receiver.requests.append(entry)
                    action = receiver.decide(entry["id"])
                    if action not in ("hang", "hold"):
                        entry["status"] = action[0] if isinstance(action, tuple) else action
                if action == "hang":
                    time.sleep(receiver.hang_s)
                    return  # closed without an answer, long after the client's timeout
                if action == "hold":
                    entry["held"] = True
                    receiver.released.wait(60)
                    return
                status, retry_after = action if isinstance(action, tuple) else (action, None)
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                payload = b"ok" if status == 200 else b"no"
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def decide(self, alert_id: str):
        if alert_id in self.always:
            return self.always[alert_id]
        if self.plans.get(alert_id):
            return self.plans[alert_id].pop(0)
        return 200

    def of(self, alert_id: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["id"] == alert_id]

    def delivered(self) -> list[str]:
        """Alert ids answered 200, once per answer (a duplicate shows up twice)."""
        with self.lock:
            return [r["id"] for r in self.requests if r["status"] == 200]

    def shutdown(self):
        self.released.set()
        self.server.shutdown()


def alert(symbol: str, rule: str = "price_move", minutes_ago: int = 5, **fields) -> dict:
    """An alert as the stream function writes it, for the minute `minutes_ago` before now."""
    ws = (int(time.time() * 1000) // MIN - minutes_ago) * MIN
    values = {"price_move": (Decimal("1.52345678"), Decimal("1")), "volume_spike": (Decimal("7512345.5"), Decimal(5e6))}
    value, threshold = values.get(rule, (Decimal("3.5"), Decimal("2")))
    return {"alert_id": f"{symbol}:{rule}:{ws}", "symbol": symbol, "rule": rule, "window_start": ws, "value": value,
            "threshold": threshold, "price": Decimal("43210.5"), "detected_at": ws + 30_000} | fields


@pytest.fixture
def harness(settings, unique, tmp_path):
    """Fresh topics, a webhook receiver, a Redis key prefix of its own; the function started as a process."""

    class Harness:
        topic = f"test.alerts-{unique}"
        dlq_prefix = f"test.{unique}.dlq."
        dlq = dlq_prefix + "alert-notifier"
        group = f"test-alert-notifier-{unique}"
        prefix = f"{settings.alert_redis_prefix}test:{unique}:"  # its Redis user may touch only this prefix
        receiver = Receiver()
        procs: list[Process] = []
        producer = Producer(settings.kafka_config())

        def send(self, *records) -> None:
            for r in records:
                if isinstance(r, dict):
                    value = schemas.to_json(schemas.ALERT, r)
                    self.producer.produce(self.topic, key=r["alert_id"].encode(), value=value)
                else:
                    self.producer.produce(self.topic, key=b"bad", value=r)
            assert self.producer.flush(10) == 0

        def start(self, group: str | None = None, **env) -> Process:
            base = {"ALERTS_TOPIC": self.topic, "DLQ_TOPIC_PREFIX": self.dlq_prefix,
                    "ALERT_NOTIFIER_GROUP": group or self.group, "ALERT_REDIS_PREFIX": self.prefix,
                    "ALERT_WEBHOOK_URL": self.receiver.url, "ALERT_WEBHOOK_BACKOFF_S": "0.05",
                    "ALERT_WEBHOOK_TIMEOUT_S": "1", "VAR_DIR": str(tmp_path / "var")}
            proc = Process("functions.alert_notifier.notifier", base | {k.upper(): str(v) for k, v in env.items()},
                           tmp_path / f"notifier-{len(self.procs)}.log")
            self.procs.append(proc)
            proc.wait_log("assigned")
            return proc

        def wait_done(self, group: str | None = None, timeout: float = 60) -> None:
            wait_for(lambda: caught_up(settings, group or self.group, self.topic), timeout, "all alerts handled", 0.2)

        def counters(self) -> dict:
            return json.loads((tmp_path / "var" / "run" / "alert-notifier.json").read_text())["counters"]

    h = Harness()
    create_topics(settings, h.topic, h.dlq, partitions=1)
    yield h
    kill_running(h.procs)
    h.receiver.shutdown()
    delete_topics(settings, h.topic, h.dlq)
    r = redis.Redis.from_url(settings.redis_url("admin"))
    for key in r.scan_iter(f"{h.prefix}*"):
        r.delete(key)


# ---- unit tests: no services ---------------------------------------------------------------------

def test_records_that_are_not_alerts_are_named():
    """The notifier reads alerts through the validation contract (schemas.check_alert)."""
    good = alert("BTCUSDT")
    key = good["alert_id"].encode()
    for raw, reason in [(b"{oops", "not JSON"), (b"[1]", "not a JSON object"), (None, "tombstone"),
                        (b'{"alert_id": "a", "symbol": "SS"}', "rule None is not one of price_move, volume_spike"),
                        (b'{"alert_id": "a", "symbol": "SS", "rule": "price_move", "window_start": 1617580800000, '
                         b'"value": "x", "threshold": 1}', "value 'x' is not a JSON number")]:
        with pytest.raises(BadAlert, match=reason.replace("(", r"\(").replace(")", r"\)")):
            parse_alert(b"a", raw, SKEW_MS)
    assert parse_alert(key, schemas.to_json(schemas.ALERT, alert("BTCUSDT", price=None)), SKEW_MS).price is None
    with pytest.raises(BadAlert, match="key"):
        parse_alert(b"another", schemas.to_json(schemas.ALERT, good), SKEW_MS)


def test_an_alert_the_contract_accepts_always_formats():
    """At the contract's edges describe() and slack_message() still make a message (no overflow, no date
    out of range)."""
    from cryptopipe.schemas import MIN_TIME_MS
    from functions.alert_notifier.alerts import describe, slack_message

    biggest = Decimal("9" * 20 + "." + "9" * 16)
    latest = int(time.time() * 1000) + SKEW_MS - 10_000  # the newest time the contract takes, with a margin
    for rule in ("price_move", "volume_spike"):
        for ws in (MIN_TIME_MS, latest // MIN * MIN):
            for value in (biggest, biggest.copy_negate(), Decimal("1E-16"), Decimal("0")):
                a = alert("BTCUSDT", rule, window_start=ws, alert_id=f"BTCUSDT:{rule}:{ws}", value=value,
                          threshold=value, price=Decimal("9999999999.99999999"), detected_at=latest)
                raw = json.dumps({k: str(v) if isinstance(v, Decimal) else v for k, v in a.items()})
                for k in ("value", "threshold", "price"):  # as JSON numbers, every digit kept
                    raw = raw.replace(f'"{k}": "{a[k]}"', f'"{k}": {a[k]}')
                parsed = parse_alert(a["alert_id"].encode(), raw.encode(), SKEW_MS)
                assert parsed.value == value
                assert rule in describe(parsed) and slack_message(parsed)["text"]


def test_slack_text_escapes_what_came_with_the_alert():
    """Slack reads &, < and > as control characters (`<!channel>` pings everyone, `<@U123>` a person,
    `<http://x|y>` is a link): in text from data they must arrive as &amp;, &lt; and &gt;."""
    from functions.alert_notifier.alerts import Alert, slack_escape, slack_message

    assert slack_escape("<!channel> <@U123> <http://x|y> a&b &amp;") == (
        "&lt;!channel&gt; &lt;@U123&gt; &lt;http://x|y&gt; a&amp;b &amp;amp;")
    a = alert("BTCUSDT")
    evil = Alert("<!here>&<http://evil.example|click>", "<!channel>", "<@U123>", a["window_start"],
                 Decimal("1.5"), Decimal("1"), None, None)  # past the contract, which refuses such symbols and rules
    message = slack_message(evil)
    texts = [message["text"], message["blocks"][0]["text"]["text"], message["blocks"][1]["elements"][0]["text"]]
    for text in texts:
        assert "<" not in text and ">" not in text, text
    assert message["text"].startswith(":rotating_light: &lt;!channel&gt; &lt;@U123&gt; 1.5 (threshold 1)")
    assert "`&lt;!here&gt;&amp;&lt;http://evil.example|click&gt;`" in texts[2]
    # Ordinary alerts read as before.
    assert slack_message(parse_alert(a["alert_id"].encode(), schemas.to_json(schemas.ALERT, a), SKEW_MS))["text"].startswith(
        ":rotating_light: BTCUSDT price_move 1.52% (threshold 1.00%)")


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after("2") == 2.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("soon", 60.0) == 60.0  # the Binance client's default: garbage must not crash it


# ---- against Kafka and Redis ---------------------------------------------------------------------

def test_each_alert_once_as_slack_json_also_when_re_emitted_and_after_restarts(settings, stack, harness):
    a, b = alert("BTCUSDT"), alert("ETHUSDT", "volume_spike")
    harness.send(a, b, a | {"detected_at": a["detected_at"] + 5000})  # the stream re-emits a's id
    proc = harness.start()
    harness.wait_done()
    wait_for(lambda: sorted(harness.receiver.delivered()) == sorted([a["alert_id"], b["alert_id"]]), 30, "both alerts")

    [request] = harness.receiver.of(a["alert_id"])
    assert request["content_type"] == "application/json"
    minute = datetime.fromtimestamp(a["window_start"] / 1000, timezone.utc)
    when = f"{minute:%H:%M}" if minute.date() == datetime.now(timezone.utc).date() else f"{minute:%Y-%m-%d %H:%M}"
    text = f":rotating_light: BTCUSDT price_move 1.52% (threshold 1.00%) in the minute from {when} UTC, price 43210.5"
    body = request["body"]
    assert body["text"] == text
    section, context = body["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": text.replace("BTCUSDT", "*BTCUSDT*")}}
    assert context["type"] == "context" and a["alert_id"] in context["elements"][0]["text"]
    [request] = harness.receiver.of(b["alert_id"])
    assert "ETHUSDT volume_spike quote volume 7,512,346 (threshold 5,000,000)" in request["body"]["text"]
    assert proc.stop() == 0
    assert "secret-token" not in proc.output()  # the webhook path is its credential
    assert harness.counters().items() >= {"delivered": 2, "duplicates": 1}.items()

    # After a restart the same id again is still a duplicate; a new alert goes out.
    c = alert("DOTUSDT")
    harness.send(a, c)
    harness.start()
    harness.wait_done()
    wait_for(lambda: c["alert_id"] in harness.receiver.delivered(), 30, "the new alert")
    # A group that lost its offsets re-reads everything: Redis remembers what was sent.
    harness.start(group=harness.group + "-fresh")
    harness.wait_done(group=harness.group + "-fresh")
    assert sorted(harness.receiver.delivered()) == sorted([a["alert_id"], b["alert_id"], c["alert_id"]])
    assert read_topic(settings, harness.dlq) == []


def test_cooldown_per_symbol_and_rule_in_event_time(settings, stack, harness):
    first = alert("BTCUSDT", minutes_ago=20)
    same_soon = alert("BTCUSDT", minutes_ago=19)  # 1 min later: suppressed
    other_rule = alert("BTCUSDT", "volume_spike", minutes_ago=19)
    other_symbol = alert("ETHUSDT", minutes_ago=19)
    same_later = alert("BTCUSDT", minutes_ago=10)  # 10 min after the first: past the 5-minute cooldown
    same_later_soon = alert("BTCUSDT", minutes_ago=8)  # 2 min after that one: suppressed
    harness.send(first, same_soon, other_rule, other_symbol, same_later, same_later_soon)
    proc = harness.start(alert_cooldown_s=300)
    harness.wait_done()
    wanted = [first, other_rule, other_symbol, same_later]
    wait_for(lambda: sorted(harness.receiver.delivered()) == sorted(x["alert_id"] for x in wanted), 30, "4 alerts")
    assert proc.stop() == 0
    assert harness.counters()["suppressed"] == 2
    assert f"suppressed {same_soon['alert_id']}" in proc.output()


def test_500s_429_and_timeouts_are_retried_until_delivered(settings, stack, harness):
    five, rate, slow = alert("BTCUSDT"), alert("ETHUSDT"), alert("DOTUSDT")
    harness.receiver.plans = {five["alert_id"]: [500, 500], rate["alert_id"]: [(429, "1")], slow["alert_id"]: ["hang"]}
    harness.send(five, rate, slow)
    proc = harness.start()
    harness.wait_done()
    ids = [five["alert_id"], rate["alert_id"], slow["alert_id"]]
    assert sorted(harness.receiver.delivered()) == sorted(ids)
    assert [r["status"] for r in harness.receiver.of(five["alert_id"])] == [500, 500, 200]
    first, second = harness.receiver.of(rate["alert_id"])
    assert (first["status"], second["status"]) == (429, 200) and second["at"] - first["at"] >= 0.95  # Retry-After
    assert [r["status"] for r in harness.receiver.of(slow["alert_id"])] == [None, 200]  # timed out, then sent
    assert proc.stop() == 0
    assert harness.counters().items() >= {"delivered": 3, "retried": 4}.items()
    assert read_topic(settings, harness.dlq) == []


def test_undeliverable_and_malformed_alerts_go_to_the_dead_letter_topic_and_the_stream_goes_on(
        settings, stack, harness):
    refused, down, later = alert("BTCUSDT"), alert("ETHUSDT"), alert("DOTUSDT")
    old = alert("XRPETH", minutes_ago=3 * 24 * 60)  # three days old: stale, not sent
    harness.receiver.always = {refused["alert_id"]: 400, down["alert_id"]: "hang"}
    not_json, no_rule = b'{"alert_id": "x", oops', json.dumps({k: str(v) for k, v in alert("ADAUSDT").items()
                                                                if k != "rule"}).encode()
    harness.send(refused, down, not_json, no_rule, old, later)
    proc = harness.start(alert_webhook_max_attempts=3)
    harness.wait_done()

    assert harness.receiver.delivered() == [later["alert_id"]]
    assert len(harness.receiver.of(refused["alert_id"])) == 1  # a 400 is final
    attempts = harness.receiver.of(down["alert_id"])
    assert len(attempts) == 3
    # The stream did not wait for the dead webhook: the later alert went out during its retries.
    [sent] = harness.receiver.of(later["alert_id"])
    assert sent["at"] < attempts[-1]["at"]
    assert harness.receiver.of(old["alert_id"]) == []

    dead = {m.value(): dict(m.headers()) for m in read_topic(settings, harness.dlq)}
    assert len(dead) == 4
    for record, reason in [(refused, b"the webhook refused it: HTTP 400 no"),
                           (down, b"gave up after 3 attempts: no answer"),
                           (not_json, b"not JSON"), (no_rule, b"rule None is not one of")]:
        raw = schemas.to_json(schemas.ALERT, record) if isinstance(record, dict) else record
        headers = dead[raw]
        assert reason in headers["error.reason"], headers
        assert headers["error.component"] == b"alert-notifier" and headers["error.topic"] == harness.topic.encode()
    assert dead[schemas.to_json(schemas.ALERT, refused)]["error.status"] == b"400"
    assert proc.stop() == 0
    assert harness.counters().items() >= {"delivered": 1, "dead_lettered": 2, "bad_records": 2, "stale": 1}.items()


def test_slack_control_sequences_in_an_alert_never_reach_the_webhook_raw(settings, stack, harness):
    """A symbol holding `<!channel>` breaks the contract: dead-lettered, never sent. An alert id may hold any
    printable text: it is sent, escaped."""
    pinging = alert("<!channel>")
    odd_id = alert("ETHUSDT")
    odd_id["alert_id"] = f"<!here>&<http://evil.example|click>:{odd_id['alert_id']}"
    harness.send(pinging, odd_id)
    proc = harness.start()
    harness.wait_done()

    wait_for(lambda: harness.receiver.delivered() == [odd_id["alert_id"]], 30, "the alert with the odd id")
    body = json.dumps(harness.receiver.of(odd_id["alert_id"])[0]["body"])
    assert "<" not in body and ">" not in body
    assert "&lt;!here&gt;&amp;&lt;http://evil.example|click&gt;" in body
    assert harness.receiver.of(pinging["alert_id"]) == []
    [dead] = read_topic(settings, harness.dlq)
    assert dead.value() == schemas.to_json(schemas.ALERT, pinging)
    assert b"symbol '<!channel>' is not" in dict(dead.headers())["error.reason"]
    assert proc.stop() == 0
    assert harness.counters().items() >= {"delivered": 1, "bad_records": 1}.items()


def test_without_a_webhook_alerts_go_to_the_log_once(settings, stack, harness):
    a = alert("BTCUSDT")
    harness.send(a, a)
    proc = harness.start(alert_webhook_url="")
    harness.wait_done()
    assert proc.stop() == 0
    out = proc.output()
    assert "alerts to the log only" in out
    assert out.count("ALERT BTCUSDT price_move 1.52% (threshold 1.00%) in the minute from") == 1
    assert harness.counters().items() >= {"logged": 1, "duplicates": 1}.items()
    assert harness.receiver.requests == []


def test_sigterm_while_retrying_exits_at_once_and_leaves_the_alert_to_the_next_start(settings, stack, harness):
    failing, fine = alert("BTCUSDT"), alert("ETHUSDT")
    harness.receiver.always = {failing["alert_id"]: 503}
    harness.send(failing, fine)
    proc = harness.start(alert_webhook_backoff_s=2, alert_webhook_max_attempts=20, alert_webhook_deadline_s=600)
    wait_for(lambda: fine["alert_id"] in harness.receiver.delivered()
             and len(harness.receiver.of(failing["alert_id"])) >= 2, 30, "one alert delivered, the other retrying")
    began = time.monotonic()
    assert proc.stop() == 0
    assert time.monotonic() - began < 5  # a retry wait does not hold up the exit
    assert not caught_up(settings, harness.group, harness.topic)
    assert read_topic(settings, harness.dlq) == []  # stopping is not a reason to give up on it

    harness.receiver.always = {}
    harness.start()
    harness.wait_done()
    assert sorted(harness.receiver.delivered()) == sorted([failing["alert_id"], fine["alert_id"]])


def test_kill_9_mid_delivery_then_restart_delivers_everything_once(settings, stack, harness):
    alerts = [alert(f"SYM{i:02d}USDT") for i in range(12)]
    # The first two hang unanswered: the commit cannot pass them while the ten after them go out, so the
    # restart re-reads ten delivered alerts, and must not send them again.
    harness.receiver.always = {a["alert_id"]: "hold" for a in alerts[:2]}
    harness.send(*alerts)
    proc = harness.start(alert_cooldown_s=0, alert_webhook_workers=4)
    wait_for(lambda: proc.output().count("to the webhook (attempt") >= 10, 30, "the other ten delivered")
    wait_for(lambda: sum(1 for r in harness.receiver.requests if r.get("held")) == 2, 10, "the first two held")
    proc.kill9()
    assert not caught_up(settings, harness.group, harness.topic)
    harness.receiver.always = {}
    harness.receiver.released.set()  # the held requests end unanswered

    proc = harness.start(alert_cooldown_s=0)
    harness.wait_done()
    assert sorted(harness.receiver.delivered()) == sorted(a["alert_id"] for a in alerts)  # none lost, none twice
    assert proc.stop() == 0
    assert harness.counters()["duplicates"] == 10
    assert read_topic(settings, harness.dlq) == []

"""Alerts as the notifier reads them (crypto.alerts values, checked) and as it writes them: one line for
people, and Slack's incoming-webhook JSON."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from cryptopipe.schemas import Invalid, check_alert

EMOJI = ":rotating_light:"

# A record that is not a valid alert: the validation contract's refusal (str() is the reason).
BadAlert = Invalid


@dataclass(frozen=True)
class Alert:
    """A crypto.alerts value (fields in cryptopipe.schemas.ALERT)."""

    alert_id: str
    symbol: str
    rule: str
    window_start: int
    value: Decimal
    threshold: Decimal
    price: Decimal | None
    detected_at: int | None


def parse_alert(key: bytes | None, raw: bytes | None, max_skew_ms: int) -> Alert:
    """An alert record checked against the validation contract (`schemas.check_alert`: a known rule, times
    between 2010 and 2100 and at most `max_skew_ms` ahead of the wall clock, decimals that format without
    overflow, keyed by its id); BadAlert names what is wrong. Fields beyond the contract are ignored."""
    a = check_alert(key, raw, max_skew_ms)
    return Alert(a["alert_id"], a["symbol"], a["rule"], a["window_start"], a["value"], a["threshold"], a["price"],
                 a["detected_at"])


def plain(number: Decimal) -> str:
    """43210.50000000 -> 43210.5: every digit that matters, no exponent."""
    return format(number.normalize(), "f")


def amount(number: Decimal) -> str:
    return f"{number:,.0f}" if abs(number) >= 1000 else f"{number:,.2f}"


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def describe(alert: Alert, now_ms: int | None = None) -> str:
    """One line for people, without the symbol: 'price_move 1.52% (threshold 1.00%) in the minute from
    12:03 UTC, price 43210.5'. The date is added when the window is not today (UTC)."""
    start = utc(alert.window_start)
    today = utc(now_ms if now_ms is not None else int(time.time() * 1000)).date()
    when = f"{start:%H:%M} UTC" if start.date() == today else f"{start:%Y-%m-%d %H:%M} UTC"
    if alert.rule == "price_move":
        what = f"{alert.value:.2f}% (threshold {alert.threshold:.2f}%)"
    elif alert.rule == "volume_spike":
        what = f"quote volume {amount(alert.value)} (threshold {amount(alert.threshold)})"
    else:
        what = f"{plain(alert.value)} (threshold {plain(alert.threshold)})"
    price = f", price {plain(alert.price)}" if alert.price is not None else ""
    return f"{alert.rule} {what} in the minute from {when}{price}"


def slack_escape(text: str) -> str:
    """Text from data made inert for Slack: its only control characters are &, < and > (a `<!channel>` pings
    everyone, `<http://x|y>` is a link), so they become &amp;, &lt; and &gt;, as Slack's docs ask."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(alert: Alert, now_ms: int | None = None) -> dict:
    """Slack's incoming-webhook JSON: `text` (notifications, and receivers that read nothing else) and blocks.
    Everything that came with the alert is escaped; the contract limits symbols and rules, not alert ids."""
    line = slack_escape(describe(alert, now_ms))
    symbol = slack_escape(alert.symbol)
    start = utc(alert.window_start)
    window = f"{start:%Y-%m-%d %H:%M}-{start + timedelta(minutes=1):%H:%M} UTC"
    context = f"`{slack_escape(alert.alert_id)}` · window {window}"
    if alert.detected_at is not None:
        context += f" · detected {utc(alert.detected_at):%H:%M:%S} UTC"
    return {
        "text": f"{EMOJI} {symbol} {line}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{EMOJI} *{symbol}* {line}"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


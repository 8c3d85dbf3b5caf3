"""`make dlq` and `make dlq-redrive`: what the dead-letter topics hold, and sending dead letters back.

    python -m ops.dead_letters [list]                            every dead-letter topic: depth and reasons
    python -m ops.dead_letters show --topic T [--count 20]       the newest records of one, with their headers
    python -m ops.dead_letters redrive --topic T [--reason R]    back to their original topic, each exactly once

A dead letter's value is the record as received; why it failed and where it came from are in its headers: the
functions write error.reason and error.topic/partition/offset (cryptopipe.topics.dlq_headers), Kafka Connect
__connect.errors.* (errors.deadletterqueue.context.headers.enable). Reading assigns partitions and never commits.

Exactly once: a redrive writes each record and its entry in the ledger (a compacted topic keyed
<dead-letter topic>/<partition>/<offset>) in one transaction, and skips what the ledger holds already. Its
transactional.id is fixed per dead-letter topic, so a run started meanwhile fences the earlier one (which can
commit nothing more from then on) before it reads the ledger.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from confluent_kafka import (TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cryptopipe.settings import Settings, load_settings
from cryptopipe.topics import declared

log = logging.getLogger("ops.dead_letters")

LEDGER = "redriven"  # the ledger topic is settings.dlq_topic(LEDGER): crypto.dlq.redriven
REDRIVEN_FROM = "dlq.redriven.from"  # header of a redriven record: <dead-letter topic>/<partition>/<offset>
CONNECT = "__connect.errors."
REASON_CHARS = 160  # long enough for every reason the functions write; Connect's messages get cut
# The stream's dead-letter topic also keeps a copy of every late trade (flink/02_trades_and_dead_letters.sql):
# the trade itself is in binance.aggtrades already, so sending the copy back would add it twice.
COPY_REASON = "late trade:"
BATCH = 500  # records per transaction


class NotADeadLetterTopic(ValueError):
    pass


class RedriveError(RuntimeError):
    """A redrive stopped part way; `result` counts what it committed before."""

    def __init__(self, message: str, result: Redrive):
        super().__init__(message)
        self.result = result


def dead_letter_topics(settings: Settings) -> list[str]:
    return [t.name for t in declared(settings) if t.dead_letter]


def check_dead_letter_topic(settings: Settings, topic: str) -> None:
    valid = dead_letter_topics(settings)
    if topic not in valid:
        raise NotADeadLetterTopic(f"{printable(topic)!r} is not a dead-letter topic; they are: {', '.join(valid)}")


def ledger_topic(settings: Settings) -> str:
    return settings.dlq_topic(LEDGER)


def ledger_key(msg: Message) -> str:
    return f"{msg.topic()}/{msg.partition()}/{msg.offset()}"


# Headers are data anyone who may write the topic can forge: nothing read from them reaches a terminal unescaped.
def printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shown(value: bytes | None, limit: int) -> str:
    """Bytes for a person: UTF-8 text with control characters escaped, else the bytes escaped; cut at `limit`."""
    if value is None:
        return "(null)"
    try:
        text = printable(value.decode("utf-8"))
    except UnicodeDecodeError:
        text = repr(value)[2:-1]
    return shorten(text, limit)


def headers_of(msg: Message) -> dict[str, bytes]:
    return {name: value or b"" for name, value in msg.headers() or []}


def number(raw: bytes | None) -> int | None:
    try:
        return int(raw.decode()) if raw else None
    except (UnicodeDecodeError, ValueError):
        return None


def reason_of(headers: dict[str, bytes]) -> str:
    """The reason `make dlq` shows and REASON matches: error.reason, or Connect's exception class and message;
    whitespace collapsed, cut at REASON_CHARS."""
    if "error.reason" in headers:
        text = headers["error.reason"].decode("utf-8", "replace")
    elif CONNECT + "exception.class.name" in headers:
        cls = headers[CONNECT + "exception.class.name"].decode("utf-8", "replace").rsplit(".", 1)[-1]
        message = headers.get(CONNECT + "exception.message", b"").decode("utf-8", "replace")
        text = f"{cls}: {message}" if message else cls
    else:
        return "(no reason in the headers)"
    return shorten(printable(" ".join(text.split())), REASON_CHARS)


@dataclass(frozen=True)
class Origin:
    """Where a dead letter was first written, as its headers say (None where they say nothing usable)."""

    topic: str | None
    partition: int | None
    offset: int | None
    connect: bool  # Kafka Connect's headers: its dead letters keep the original record's timestamp


def origin_of(headers: dict[str, bytes]) -> Origin:
    connect = CONNECT + "topic" in headers
    prefix = CONNECT if connect else "error."
    topic = headers.get(prefix + "topic", b"").decode("utf-8", "replace") or None
    return Origin(topic, number(headers.get(prefix + "partition")), number(headers.get(prefix + "offset")), connect)


class Reader:
    """A read_committed consumer that only assigns partitions and never commits: reading changes nothing."""

    def __init__(self, settings: Settings, timeout: float = 30.0):
        self.timeout = timeout
        self.bounds: dict[tuple[str, int], tuple[int, int] | None] = {}  # for `at`, read once per partition
        self.consumer = Consumer({**settings.kafka_config(), "group.id": "cryptopipe-dead-letters",
                                  "enable.auto.commit": False, "enable.auto.offset.store": False,
                                  "isolation.level": "read_committed", "enable.partition.eof": True,
                                  "auto.offset.reset": "earliest",
                                  # Each lookup of an original record is a fresh fetch: do not let the broker hold
                                  # it for the default 500 ms.
                                  "fetch.wait.max.ms": 50})

    def partitions(self, topic: str) -> list[int] | None:
        """The topic's partitions; None when it does not exist."""
        meta = self.consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        return sorted(meta.partitions)

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        return self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)

    def read(self, topic: str, partition: int, start: int, end: int, timeout: float | None = None) -> list[Message]:
        """The committed records of one partition from `start` up to `end` (exclusive), in offset order."""
        if start >= end:
            return []
        out: list[Message] = []
        timeout = timeout or self.timeout
        self.consumer.assign([TopicPartition(topic, partition, start)])
        try:
            deadline, following = time.monotonic() + timeout, start
            while time.monotonic() < deadline:
                # Asking for no more than the offsets left, the batch comes back as soon as it is complete.
                for msg in self.consumer.consume(max(1, min(1000, end - following)), timeout=0.5):
                    if msg.error() is not None:
                        # End of partition: for read_committed, where the open transactions start.
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            return out
                        raise KafkaException(msg.error())
                    if msg.offset() >= end:
                        return out
                    out.append(msg)
                    following = msg.offset() + 1
                    if following >= end:
                        return out
                # Transaction markers take offsets too, so the position, not the last record, says when it is done.
                if self.consumer.position([TopicPartition(topic, partition)])[0].offset >= end:
                    return out
            raise TimeoutError(f"could not read {topic}[{partition}] to offset {end} in {timeout:.0f} s")
        finally:
            self.consumer.unassign()

    def all(self, topic: str) -> list[Message] | None:
        """Every committed record the topic holds now (up to each partition's end at the start); None when the
        topic does not exist."""
        partitions = self.partitions(topic)
        if partitions is None:
            return None
        return [m for p in partitions for m in self.read(topic, p, *self.watermarks(topic, p))]

    def newest(self, topic: str, count: int) -> list[Message] | None:
        """The newest `count` records of each partition, in offset order; None when the topic does not exist."""
        partitions = self.partitions(topic)
        if partitions is None:
            return None
        out: list[Message] = []
        for p in partitions:
            low, high = self.watermarks(topic, p)
            span = count * 2  # transaction markers and aborted records take offsets too: widen until enough
            while True:
                start = max(low, high - span)
                msgs = self.read(topic, p, start, high)
                if len(msgs) >= count or start == low:
                    break
                span *= 4
            out += msgs[-count:]
        return out

    def at(self, topic: str, partition: int, offset: int) -> Message | None:
        """The committed record at exactly this place, if the topic still holds it."""
        if (topic, partition) not in self.bounds:
            present = partition in (self.partitions(topic) or [])
            self.bounds[(topic, partition)] = self.watermarks(topic, partition) if present else None
        bounds = self.bounds[(topic, partition)]
        if bounds is None or not bounds[0] <= offset < bounds[1]:
            return None
        try:
            msgs = self.read(topic, partition, offset, offset + 1, timeout=5)
        except TimeoutError:  # inside a transaction still open: not known
            return None
        return msgs[0] if msgs and msgs[0].offset() == offset else None

    def close(self) -> None:
        self.consumer.close()


def redriven_keys(reader: Reader, settings: Settings) -> set[str]:
    """The ledger's keys: the dead letters redriven so far (a tombstone takes one out again)."""
    keys: set[str] = set()
    for msg in reader.all(ledger_topic(settings)) or []:
        key = msg.key().decode("utf-8", "replace") if msg.key() else ""
        if msg.value() is None:
            keys.discard(key)
        else:
            keys.add(key)
    return keys


# make dlq

@dataclass
class Summary:
    topic: str
    depth: int | None  # committed records held; None: the topic does not exist
    reasons: Counter = field(default_factory=Counter)
    redriven: int = 0  # of those, how many the ledger says were sent back


def summaries(settings: Settings) -> list[Summary]:
    """Every dead-letter topic: its depth, its reasons counted, how many of its records were redriven."""
    reader = Reader(settings)
    try:
        done = redriven_keys(reader, settings)
        out = []
        for topic in dead_letter_topics(settings):
            msgs = reader.all(topic)
            if msgs is None:
                out.append(Summary(topic, None))
                continue
            out.append(Summary(topic, len(msgs), Counter(reason_of(headers_of(m)) for m in msgs),
                               sum(ledger_key(m) in done for m in msgs)))
        return out
    finally:
        reader.close()


def summary_table(rows: list[Summary], most: int = 10) -> Table:
    table = Table(title="Dead-letter topics (depth: records held; reasons: most frequent first)",
                  title_justify="left", show_lines=True)
    table.add_column("topic", no_wrap=True)
    table.add_column("depth", justify="right")
    table.add_column("redriven", justify="right")
    table.add_column("reasons")
    for row in rows:
        if row.depth is None:
            table.add_row(row.topic, "[red]missing[/red]", "-", "-")
            continue
        lines = [f"{n:,} × {text}" for text, n in row.reasons.most_common(most)]
        if len(row.reasons) > most:
            lines.append(f"… and {len(row.reasons) - most} more reasons")
        depth = f"[red]{row.depth:,}[/red]" if row.depth > row.redriven else f"{row.depth:,}"
        table.add_row(row.topic, depth, f"{row.redriven:,}", escape("\n".join(lines)) or "-")
    return table


# make dlq TOPIC=...

def newest(settings: Settings, topic: str, count: int) -> list[Message]:
    """The newest `count` records of a dead-letter topic (of each partition), oldest first."""
    check_dead_letter_topic(settings, topic)
    reader = Reader(settings)
    try:
        msgs = reader.newest(topic, count)
    finally:
        reader.close()
    if msgs is None:
        raise NotADeadLetterTopic(f"{topic} is declared but does not exist yet (make up creates it)")
    return msgs


def when(msg: Message) -> str:
    kind, ms = msg.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def records_table(topic: str, msgs: list[Message], value_chars: int = 120) -> Table:
    table = Table(title=f"{topic}: the newest {len(msgs)} records, newest last", title_justify="left",
                  show_lines=True)
    for col in ("timestamp (UTC)", "partition/offset", "key", "value", "headers"):
        table.add_column(col, no_wrap=col in ("timestamp (UTC)", "partition/offset"))
    for msg in msgs:
        headers = "\n".join(f"{printable(name)}: {shown(value, 200)}" for name, value in msg.headers() or [])
        table.add_row(when(msg), f"{msg.partition()}/{msg.offset()}", escape(shown(msg.key(), 60)),
                      escape(shown(msg.value(), value_chars)), escape(headers) or "-")
    if not msgs:
        table.add_row("(empty)", "", "", "", "")
    return table


# make dlq-redrive

@dataclass
class Redrive:
    redriven: Counter = field(default_factory=Counter)  # per original topic
    already: int = 0  # the ledger has them
    other_reason: int = 0  # REASON given and theirs is another
    copies: int = 0  # late-trade copies, never sent back
    no_topic: int = 0  # no original topic in the headers (the source's dead letters)
    refused: Counter = field(default_factory=Counter)  # per topic named that the pipeline does not declare

    @property
    def total(self) -> int:
        return sum(self.redriven.values())


def ensure_ledger(settings: Settings, reader: Reader, timeout: float = 30.0) -> None:
    """Create the ledger topic (compacted: the newest entry per key is enough) unless it exists, and wait until it
    can be read: a ledger taken for empty while another run writes to it would let records go twice."""
    name = ledger_topic(settings)
    admin = AdminClient(settings.kafka_config())
    topic = NewTopic(name, num_partitions=1, replication_factor=1, config={"cleanup.policy": "compact"})
    try:
        admin.create_topics([topic])[name].result()
    except KafkaException as err:
        if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    deadline = time.monotonic() + timeout
    while reader.partitions(name) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the ledger topic {name} does not show up")
        time.sleep(0.2)


def original_timestamp(reader: Reader, msg: Message, headers: dict[str, bytes], where: Origin) -> int | None:
    """The original record's timestamp (the event time of a trade) if known: from an error.timestamp header,
    from Connect (its dead letters keep it), or from the original record itself if its topic still holds it
    with the same key and value."""
    stamped = number(headers.get("error.timestamp"))
    if stamped is not None and stamped >= 0:
        return stamped
    kind, ms = msg.timestamp()
    if where.connect:
        return ms if kind != TIMESTAMP_NOT_AVAILABLE and ms >= 0 else None
    if where.partition is None or where.offset is None:
        return None
    original = reader.at(where.topic, where.partition, where.offset)
    if original is not None and original.key() == msg.key() and original.value() == msg.value():
        return original.timestamp()[1]
    return None


def redrive(settings: Settings, topic: str, reason: str | None = None, batch: int = BATCH) -> Redrive:
    """Send the dead letters of `topic` (those whose reason is exactly `reason`, if given) back to their original
    topic, each once however often this runs; see the module's docstring."""
    check_dead_letter_topic(settings, topic)
    # Headers can be forged: only the pipeline's own topics, never a dead-letter topic, may receive a record.
    targets = {t.name for t in declared(settings) if not t.dead_letter}
    producer = Producer({**settings.kafka_config(), "transactional.id": f"cryptopipe-dlq-redrive-{topic}",
                         # Java's partitioner, as the source's and Connect's: a key lands where they put it.
                         "partitioner": "murmur2_random", "linger.ms": 20})
    # Before the ledger is read: from here on no earlier run on this topic can add to it.
    producer.init_transactions(60)
    result = Redrive()
    reader = Reader(settings)
    try:
        ensure_ledger(settings, reader)
        done = redriven_keys(reader, settings)
        todo = []
        for msg in reader.all(topic) or []:
            headers = headers_of(msg)
            why = reason_of(headers)
            where = origin_of(headers)
            if reason is not None and why != reason:
                result.other_reason += 1
            elif why.startswith(COPY_REASON):
                result.copies += 1
            elif ledger_key(msg) in done:
                result.already += 1
            elif where.topic is None:
                result.no_topic += 1
            elif where.topic not in targets:
                result.refused[where.topic] += 1
            else:
                todo.append((msg, headers, where))
        for name, n in result.refused.items():
            log.warning("refused %d dead letters of %s naming topic %r, which the pipeline does not declare",
                        n, topic, printable(name))
        partitions = {name: reader.partitions(name) for name in {where.topic for _, _, where in todo}}
        missing = sorted(name for name, parts in partitions.items() if parts is None)
        if missing:
            raise RedriveError(f"{', '.join(missing)} does not exist (make up creates it); nothing was sent", result)
        ledger = ledger_topic(settings)
        for first in range(0, len(todo), batch):
            chunk = todo[first:first + batch]
            try:
                producer.begin_transaction()
                for msg, headers, where in chunk:
                    place = ledger_key(msg)
                    extra = {}
                    if where.partition in partitions[where.topic]:
                        extra["partition"] = where.partition
                    stamp = original_timestamp(reader, msg, headers, where)
                    if stamp is not None:
                        extra["timestamp"] = stamp
                    kept = [(k, v) for k, v in msg.headers() or []
                            if not k.startswith(("error.", CONNECT)) and k != REDRIVEN_FROM]
                    producer.produce(where.topic, key=msg.key(), value=msg.value(),
                                     headers=kept + [(REDRIVEN_FROM, place.encode())], **extra)
                    producer.produce(ledger, key=place.encode(), value=json.dumps(
                        {"to": where.topic, "reason": reason_of(headers), "at": int(time.time() * 1000)}).encode())
                    producer.poll(0)
                producer.commit_transaction(60)
            except KafkaException as err:
                error = err.args[0]
                if error.txn_requires_abort():
                    producer.abort_transaction(60)
                why = error.str() + (" (did another redrive of this topic take over?)" if error.fatal() else "")
                raise RedriveError(f"redrive of {topic} stopped: {why}; the batch in progress was not sent "
                                   f"({result.total:,} were before it)", result) from err
            for _, _, where in chunk:
                result.redriven[where.topic] += 1
    finally:
        reader.close()
    return result


def redrive_table(topic: str, reason: str | None, result: Redrive) -> Table:
    only = f" (reason exactly {printable(reason)!r})" if reason else ""
    table = Table(title=escape(f"Redrive of {topic}{only}"), title_justify="left")
    table.add_column("dead letters")
    table.add_column("records", justify="right")
    for name, n in sorted(result.redriven.items()):
        table.add_row(escape(f"redriven to {name}"), f"[green]{n:,}[/green]")
    if not result.redriven:
        table.add_row("redriven", "0")
    table.add_row("skipped: already redriven", f"{result.already:,}")
    table.add_row("skipped: another reason than REASON", f"{result.other_reason:,}")
    table.add_row("skipped: no original topic", f"{result.no_topic:,}")
    table.add_row("skipped: copies of late trades (the trade is in its topic)", f"{result.copies:,}")
    for name, n in sorted(result.refused.items()):
        table.add_row(escape(f"refused: {printable(name)!r} is no topic of the pipeline"), f"[red]{n:,}[/red]")
    if not result.refused:
        table.add_row("refused: original topic not of the pipeline", "0")
    table.caption = "nothing to redrive" if not result.total else None
    return table


def count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 10000")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ops.dead_letters", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="every dead-letter topic: depth, redriven, reasons counted (the default)")
    show = commands.add_parser("show", help="the newest records of one dead-letter topic with their headers")
    show.add_argument("--topic", required=True)
    show.add_argument("--count", "-n", type=count, default=20, metavar="N", help="how many (1-10000, default 20)")
    send = commands.add_parser(
        "redrive", help="send dead letters back to their original topic once the cause is fixed",
        description="Send the dead letters of TOPIC back to the topic their headers name (error.topic, or "
                    "__connect.errors.topic), with their key, value and the original timestamp if known; only to "
                    "topics the pipeline declares. Each record goes back once, however often this runs: a "
                    "transaction writes it and its entry in the ledger topic, which later runs skip. Late-trade "
                    "copies and records without an original topic (the source's) are skipped.")
    send.add_argument("--topic", required=True)
    send.add_argument("--reason", help="only the records whose reason is exactly this text, as `make dlq` shows it "
                                       "(whole string, case and spaces included; no patterns)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        settings = load_settings()
        if args.command == "show":
            console.print(records_table(args.topic, newest(settings, args.topic, args.count)))
        elif args.command == "redrive":
            console.print(redrive_table(args.topic, args.reason, redrive(settings, args.topic, args.reason)))
        else:
            console.print(summary_table(summaries(settings)))
    except NotADeadLetterTopic as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RedriveError as err:
        console.print(redrive_table(args.topic, args.reason, err.result))
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (KafkaException, TimeoutError) as err:
        print(f"error: Kafka: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

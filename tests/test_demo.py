"""`make demo`, exactly as a user runs it, on the bundled tapes and on another tape folder."""

from __future__ import annotations

import random
import shutil
import string
import subprocess

import psycopg2

from cryptopipe.settings import ROOT

from .helpers import TAPES, tape


def make_demo(tape_dir=None) -> subprocess.CompletedProcess:
    args = ["make", "demo"] + ([f"TAPE={tape_dir}"] if tape_dir else [])
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_make_demo_on_the_bundled_tapes_agrees_end_to_end(stack, settings):
    result = make_demo()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo OK: the numbers agree end to end" in result.stdout
    # Independently of the demo's own checks: every tape trade is one row.
    conn = psycopg2.connect(**settings.pg_params("reader"))
    with conn.cursor() as cur:
        for name, symbol in [("btcusdt_aggtrades_20210404.json", "BTCUSDT"), ("xrpeth_aggtrades_20191011-13.json", "XRPETH")]:
            ids = [t["a"] for t in tape(name)]
            cur.execute("SELECT count(*), count(DISTINCT agg_id), min(agg_id), max(agg_id) FROM trades WHERE symbol = %s",
                        (symbol,))
            assert cur.fetchone() == (len(ids), len(ids), ids[0], ids[-1])
    conn.close()
    again = make_demo()  # twice in a row works
    assert again.returncode == 0 and "demo OK" in again.stdout, again.stdout[-3000:]


def test_make_demo_on_another_tape_folder(stack, tmp_path):
    symbol = "DOT" + "".join(random.choices(string.ascii_uppercase, k=5)) + "USDT"
    shutil.copy(TAPES / "dotusdt_aggtrades_20210404.json", tmp_path / f"{symbol.lower()}_aggtrades_x.json")
    result = make_demo(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert symbol in result.stdout and "demo OK" in result.stdout


def test_make_demo_names_a_bad_tape_folder(stack, tmp_path):
    result = make_demo(tmp_path / "missing")
    assert result.returncode != 0
    assert "error: TAPE=" in result.stdout and "aggtrades" in result.stdout

"""A scraper in a process of its own, as Prometheus is: `python -m bench.scrape_loop URL EVERY_S`, the login in
SCRAPE_LOGIN (user:password, kept out of the process list). Prints one line per scrape until it is terminated."""

from __future__ import annotations

import os
import signal
import sys
import time

import requests


def main() -> None:
    url, every_s = sys.argv[1], float(sys.argv[2])
    login = tuple(os.environ["SCRAPE_LOGIN"].split(":", 1))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with requests.Session() as session:
        while True:
            time.sleep(every_s)
            session.get(url, auth=login, timeout=5).raise_for_status()
            print("scraped", flush=True)


if __name__ == "__main__":
    main()

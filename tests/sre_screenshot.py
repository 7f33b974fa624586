"""Take docs/status-page.png: a real exporter on an embedded Redis with a moving backlog, two dead
letters, budgets (one over), worker and device heartbeats — shot in headless Chromium.

    .venv/bin/python -m tests.sre_screenshot [OUT.png]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from broker import keys
from broker.connection import connect
from broker.consumer import Consumer
from broker.embedded import EmbeddedRedis
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.ledger import CostBreaker, Ledger
from broker.message import BODY_FIELD, HEADER_FIELD, JobSpec, Sealer, now_ms
from broker.metrics import QueueMetrics
from broker.producer import Producer
from hybrid.exporter import Monitor, serve

ZONE = "eu-west"
OUT = Path(__file__).resolve().parent.parent / "docs" / "status-page.png"


def main(out: Path = OUT) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            r = connect(server.url)
            ring = Path(tmp) / "keyring.json"
            LocalKeyring.init_zone(ring, ZONE)
            sealer = Sealer(Envelope(LocalKeyring(ring, zones=[ZONE])))
            producer = Producer(r, sealer, ZONE)
            consumer = Consumer(r, sealer, ZONE, "gpu-0", count=8)
            ledger = Ledger(r, ZONE)
            ledger.set_budget("global", "day", 250.0)
            ledger.set_budget("tenant:acme", "hour", 20.0)
            minute = str(now_ms() // 60_000)
            r.hincrby(keys.spend(ZONE, "global"), minute, 212_400_000)  # $212.40 of $250 per day
            r.hincrby(keys.spend(ZONE, "tenant:acme"), minute, 23_100_000)  # over its hourly budget
            CostBreaker(ledger).evaluate()  # trips tenant:acme
            for i in range(5):
                r.set(keys.edge_device(ZONE, f"pi-{i}"), json.dumps({"device_id": f"pi-{i}"}), ex=600)
            monitor = Monitor(QueueMetrics(server.url, [ZONE]), interval_s=0.25, history_s=15).start()
            http = serve(monitor, "127.0.0.1", 0)
            stream = keys.jobs_stream(ZONE, "interactive")
            for step in range(56):
                specs = [JobSpec(task="grade", inputs={"n": i}, lane="batch") for i in range(30 if step < 28 else 0)]
                specs += [JobSpec(task="classify", inputs={"n": i}) for i in range(step % 6)]
                if specs:
                    producer.submit_many(specs)
                if step == 12:
                    _, hb, body = sealer.seal_job(ZONE, JobSpec(task="classify", inputs={"q": "x"}))
                    r.xadd(stream, {HEADER_FIELD: hb, BODY_FIELD: body[:-3] + b"xyz"})
                if step == 30:
                    r.xadd(stream, {"hello": "world"})
                done = consumer.fetch(count=6 if step < 20 else 24, block_ms=0)
                if step < 55:  # the last read stays pending
                    consumer.complete([(d, {"ok": True}) for d in done])
                beat = {"ready": True, "in_flight": 2, "ts_ms": now_ms(), "completed": step * 20}
                r.hset(keys.worker_heartbeats(ZONE), mapping={"gpu-0": json.dumps(beat), "gpu-1": json.dumps(beat)})
                time.sleep(0.25)
            options = webdriver.ChromeOptions()
            options.binary_location = "/usr/bin/chromium"
            for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1350"):
                options.add_argument(arg)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
            try:
                driver.get(f"http://127.0.0.1:{http.server_address[1]}/")
                WebDriverWait(driver, 20).until(
                    lambda d: d.execute_script("return document.querySelectorAll('#dlq tr[data-reason]').length") == 2
                )
                driver.save_screenshot(str(out))
            finally:
                driver.quit()
                monitor.stop()
                http.shutdown()
                http.server_close()
        finally:
            server.cleanup()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)

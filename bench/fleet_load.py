"""Fleet load test: N simulated devices (real MqttPublisher instances, each with its own on-disk spool, several
per process, in a few worker processes) publish realistic detections messages at R msg/s each for T minutes
through (a) one Mosquitto on loopback (``--topology direct``) or (b) a site Mosquitto bridged to a central one
(``--topology bridge``, the bridge config is deploy/mosquitto/site-bridge.conf), while the central broker is
restarted twice. A persistent QoS 1 subscriber on the central broker records every message.

    nice .venv/bin/python bench/fleet_load.py --devices 100 --rate 10 --minutes 5 --topology direct --out r.json

Reports produced vs received (by message id), lost, duplicates, order per device, publish-to-receive latency
p50/p95/p99 (same clock: all on this machine), and CPU (% of one core, averaged) and peak RSS of the brokers,
the device processes and the subscriber. Exit 0 when nothing was lost and every device's order held.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

BRIDGE_CONF = REPO / "deploy" / "mosquitto" / "site-bridge.conf"
LABELS = ["BACKGROUND", "person", "car", "bicycle", "dog"]


# -- device worker (a subprocess: --worker) ---------------------------------------------------------------------
def _message(ids, device: str, frame: int, rng):
    """A detections message as the daemon builds it (publish.messages.detection_message) with 0-3 objects."""
    import numpy as np

    from edge_ssd.model.box import Detections
    from edge_ssd.model.result import FrameResult
    from edge_ssd.publish.messages import detection_message

    k = int(rng.integers(0, 4))
    xy = rng.uniform(0, 0.6, (k, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.05, 0.4, (k, 2))], axis=1).astype(np.float32)
    det = Detections(boxes, np.sort(rng.uniform(0.5, 1.0, k))[::-1].astype(np.float32),
                     rng.integers(1, len(LABELS), k))
    r = FrameResult(source="cam", frame=frame, ts=time.time(), width=1280, height=720, detections=det,
                    labels=LABELS, model="mb1-ssd-int8", inference_ms=float(rng.uniform(8, 60)))
    return detection_message(r, device, ids.next())


def run_worker(a) -> int:
    import numpy as np
    import psutil

    from edge_ssd.publish.identity import MessageIds
    from edge_ssd.publish.messages import json_bytes
    from edge_ssd.publish.mqtt import MqttPublisher
    from edge_ssd.publish.spool import Spool
    from edge_ssd.publish.topics import Topics

    root = Path(a.dir)
    devices = a.names.split(",")
    pubs, ids = [], []
    for d in devices:
        spool = Spool(root / d / "spool")
        pubs.append(MqttPublisher("127.0.0.1", a.port, topics=Topics("edge-ssd", d), spool=spool,
                                  client_id=f"load-{d}", min_delay=0.2, max_delay=2.0, protocol=a.protocol).start())
        ids.append(MessageIds(root / d / "spool"))
    rng = np.random.default_rng(abs(hash(a.names)) % 2**32)
    produced = dict.fromkeys(devices, 0)
    stop = threading.Event()  # SIGTERM from the orchestrator: it gave up waiting; report what was done
    signal.signal(signal.SIGTERM, lambda *x: stop.set())
    tick = 1.0 / a.rate
    start = time.monotonic()
    n_ticks = int(a.seconds * a.rate)
    for t in range(n_ticks):
        if stop.is_set():
            break
        for i, (d, p) in enumerate(zip(devices, pubs, strict=True)):
            due = start + t * tick + i * tick / len(devices)  # devices spread over the tick, like real cameras
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            msg = _message(ids[i], d, produced[d], rng)
            if p.publish_durable(p.topics.detections("cam"), json_bytes(msg)):
                produced[d] += 1
    lag = time.monotonic() - (start + n_ticks * tick)
    t_end = time.monotonic()
    end = t_end + a.flush
    while time.monotonic() < end and any(len(p.spool) for p in pubs) and not stop.is_set():
        time.sleep(0.2)
    drain = time.monotonic() - t_end
    left = sum(len(p.spool) for p in pubs)
    for p in pubs:
        p.stop(2.0)
        p.spool.close()
    me = psutil.Process()
    ct = me.cpu_times()
    out = {"produced": produced, "runs": {d: ids[i].run for i, d in enumerate(devices)}, "left_in_spool": left,
           "producer_lag_s": round(lag, 2), "drain_s": round(drain, 1), "cpu_s": ct.user + ct.system,
           "reconnects": sum(p.connects for p in pubs) - len(pubs)}
    Path(a.result).write_text(json.dumps(out))
    return 0


# -- subscriber (a subprocess: --collector) --------------------------------------------------------------------
def run_collector(a) -> int:
    import paho.mqtt.client as mqtt

    rows: list[tuple] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *x: stop.set())

    def on_connect(c, u, flags, rc, props):
        if not rc.is_failure:
            c.subscribe("edge-ssd/+/+/detections", qos=1)

    def on_message(c, u, msg):
        m = json.loads(msg.payload)
        rows.append((m["device"], m["id"], m["ts"], time.time()))

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-load-collector", clean_session=False)
    c.max_inflight_messages_set(1000)
    c.reconnect_delay_set(0.2, 1.0)
    c.on_connect, c.on_message = on_connect, on_message
    c.connect_async("127.0.0.1", a.port, keepalive=10)
    c.loop_start()
    Path(a.result + ".ready").write_text("")
    n = 0
    while not stop.wait(0.5):
        if len(rows) != n:
            n = len(rows)
            Path(a.result + ".count").write_text(str(n))
    c.disconnect()
    c.loop_stop()
    with open(a.result, "w") as f:
        for r in rows:
            f.write(",".join(map(str, r)) + "\n")
    return 0


# -- orchestrator -------------------------------------------------------------------------------------------------
class Sampler:
    """CPU seconds and peak RSS per role, from psutil, every second (processes may be restarted)."""

    def __init__(self):
        self.procs: dict[str, list] = {}
        self.cpu: dict[tuple[str, int], float] = {}
        self.rss: dict[str, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def watch(self, role: str, pid_fn) -> None:
        self.procs.setdefault(role, []).append(pid_fn)

    def _sample(self) -> None:
        import psutil

        for role, fns in self.procs.items():
            rss = 0.0
            for fn in fns:
                pid = fn()
                if pid is None:
                    continue
                try:
                    p = psutil.Process(pid)
                    ct = p.cpu_times()
                    self.cpu[(role, pid)] = ct.user + ct.system
                    rss += p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
            self.rss[role] = max(self.rss.get(role, 0.0), rss)

    def _run(self):
        while not self._stop.wait(1.0):
            self._sample()

    def start(self) -> Sampler:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)

    def summary(self, seconds: float) -> dict:
        out = {}
        for role in self.procs:
            cpu = sum(v for (r, _), v in self.cpu.items() if r == role)
            out[role] = {"cpu_pct": round(100 * cpu / seconds, 1), "rss_mb_peak": round(self.rss.get(role, 0), 1)}
        return out


def bridge_config(conf: Path, central_port: int, listen_port: int) -> str:
    """deploy/mosquitto/site-bridge.conf with the listener, persistence folder and address pointed here."""
    lines = []
    for line in BRIDGE_CONF.read_text().splitlines():
        s = line.strip()
        if re.match(r"^(listener|persistence_location|address|persistence|autosave_interval)\b", s):
            continue
        lines.append(line)
    data = conf.parent / "data"
    data.mkdir(exist_ok=True)
    head = [f"listener {listen_port} 127.0.0.1", "persistence true", f"persistence_location {data}/",
            "autosave_interval 1", "allow_anonymous true"] + (["user root"] if os.geteuid() == 0 else [])
    body = "\n".join(lines).replace("connection central", f"connection central\naddress 127.0.0.1:{central_port}")
    return "\n".join(head) + "\n" + body + "\n"


def start_site(tmp: Path, central_port: int):
    from _broker import Broker, free_port

    site = Broker(tmp / "site", port=free_port(), persistence=True)
    site.conf.write_text(bridge_config(site.conf, central_port, site.port) + "log_dest stderr\nlog_type error\n"
                         "log_type warning\n")
    return site.start()


def percentiles(vals: list[float]) -> dict:
    import numpy as np

    if not vals:
        return {}
    a = np.asarray(vals) * 1000
    return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)} | {"max": round(float(a.max()), 1)}


def analyse(produced: dict[str, int], runs: dict[str, str], rows: list[list[str]]) -> dict:
    seen: set[tuple[str, str]] = set()
    last: dict[str, int] = {}
    dups = disorder = foreign = 0
    lat = []
    for dev, mid, ts, recv in rows:
        if dev not in produced or not mid.startswith(runs[dev] + "-"):
            foreign += 1  # an earlier run's leftovers in a reused broker
            continue
        if (dev, mid) in seen:
            dups += 1
            continue
        seen.add((dev, mid))
        seq = int(mid.rsplit("-", 1)[1])
        if seq < last.get(dev, 0):
            disorder += 1
        last[dev] = max(seq, last.get(dev, 0))
        lat.append(float(recv) - float(ts))
    total = sum(produced.values())
    missing = total - len(seen)
    return {"produced": total, "received_unique": len(seen), "lost": missing, "duplicates": dups,
            "order_violations": disorder, "foreign": foreign, "latency_ms": percentiles(lat)}


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))


def _wait_file(p: Path, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not p.exists():
        time.sleep(0.1)
    return p.exists()


def run_load(a) -> dict:
    from _broker import Broker

    tmp = Path(tempfile.mkdtemp(prefix="edge-ssd-fleet-"))
    central = Broker(tmp / "central", persistence=True).start()
    site = start_site(tmp, central.port) if a.topology == "bridge" else None
    device_port = site.port if site else central.port
    col_out = tmp / "received.csv"
    collector = _spawn(["--collector", "--port", str(central.port), "--result", str(col_out)], tmp / "collector.log")
    assert _wait_file(Path(str(col_out) + ".ready"), 30), (tmp / "collector.log").read_text()
    time.sleep(1.5)  # subscribed, and the session autosaved (survives the restarts)
    sampler = Sampler()
    sampler.watch("central_broker", lambda: central.proc.pid if central.proc else None)
    if site:
        sampler.watch("site_broker", lambda: site.proc.pid if site.proc else None)
    sampler.watch("subscriber", lambda: collector.pid)
    names = [f"d{i:03d}" for i in range(a.devices)]
    groups = [names[i::a.processes] for i in range(a.processes)]
    workers = []
    seconds = a.minutes * 60
    for i, g in enumerate(groups):
        res = tmp / f"worker{i}.json"
        w = _spawn(["--worker", "--port", str(device_port), "--names", ",".join(g), "--rate", str(a.rate),
                    "--seconds", str(seconds), "--dir", str(tmp / "devices"), "--flush", str(a.flush),
                    "--protocol", str(a.protocol), "--result", str(res)], tmp / f"worker{i}.log")
        workers.append((w, res))
        sampler.watch("devices", lambda w=w: w.pid if w.poll() is None else None)
    sampler.start()
    t0 = time.monotonic()
    for k in range(a.restarts):  # restart the central broker at 1/3 and 2/3 of the run
        at = t0 + seconds * (k + 1) / (a.restarts + 1)
        time.sleep(max(0.0, at - time.monotonic()))
        central.stop()
        time.sleep(a.down)
        central.start()
        print(f"central broker restarted ({k + 1}/{a.restarts}) at {time.monotonic() - t0:.0f} s", flush=True)
    deadline = t0 + seconds * 1.5 + a.flush + 30
    for w, _ in workers:
        try:
            w.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.send_signal(signal.SIGTERM)  # it reports what it produced; the run does not hold
    for w, _ in workers:
        w.wait(60)
    reports = [json.loads(res.read_text()) for w, res in workers if res.exists()]
    if len(reports) != len(workers):
        raise SystemExit(f"a worker failed; logs in {tmp}")
    produced = {d: n for r in reports for d, n in r["produced"].items()}
    runs = {d: run for r in reports for d, run in r["runs"].items()}
    total = sum(produced.values())
    count = Path(str(col_out) + ".count")
    end = time.monotonic() + 60
    while time.monotonic() < end and (int(count.read_text() or 0) if count.exists() else 0) < total:
        time.sleep(0.5)
    time.sleep(2.0)  # late duplicates
    wall = time.monotonic() - t0
    sampler.stop()
    collector.send_signal(signal.SIGTERM)
    collector.wait(60)
    rows = [line.split(",") for line in col_out.read_text().splitlines()]
    for b in (site, central):
        if b:
            b.stop()
    result = {"topology": a.topology, "devices": a.devices, "rate": a.rate, "minutes": a.minutes,
              "processes": a.processes, "protocol": a.protocol, "central_restarts": a.restarts,
              "down_s": a.down, **analyse(produced, runs, rows),
              "left_in_spools": sum(r["left_in_spool"] for r in reports),
              "producer_lag_s_max": max(r["producer_lag_s"] for r in reports),
              "drain_s_max": max(r["drain_s"] for r in reports),
              "device_reconnects": sum(r["reconnects"] for r in reports),
              "offered_msgs_per_s": a.devices * a.rate, "resources": sampler.summary(wall), "workdir": str(tmp)}
    # the device processes measure their own CPU (they exit before the last sample)
    result["resources"]["devices"]["cpu_pct"] = round(100 * sum(r["cpu_s"] for r in reports) / wall, 1)
    # "holds": nothing lost, order kept, every device kept its rate (lag < 1 s) and its spool emptied
    result["holds"] = (result["lost"] == 0 and result["order_violations"] == 0 and result["left_in_spools"] == 0
                       and result["producer_lag_s_max"] < 1.0)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10.0, help="detections messages per second per device")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--processes", type=int, default=4, help="device worker processes")
    ap.add_argument("--topology", choices=["direct", "bridge"], default="direct")
    ap.add_argument("--restarts", type=int, default=2, help="central broker restarts during the run")
    ap.add_argument("--down", type=float, default=3.0, help="seconds the central broker stays down each time")
    ap.add_argument("--protocol", type=int, choices=[4, 5], default=4, help="the devices' MQTT protocol")
    ap.add_argument("--flush", type=float, default=120.0, help="seconds the devices get to empty their spools")
    ap.add_argument("--out", help="write the result JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (spools, logs, received.csv)")
    # internal: the subprocess roles
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--collector", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--names", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return run_worker(a)
    if a.collector:
        return run_collector(a)
    result = run_load(a)
    if result["holds"] and not a.keep:  # the spools, broker logs and received.csv; kept when it did not hold
        shutil.rmtree(result.pop("workdir"), ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0 if result["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())

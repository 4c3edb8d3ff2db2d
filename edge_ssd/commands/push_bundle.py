"""``edge-ssd push-bundle BUNDLE``: roll a bundle out to devices (docs/fleet.md). Packs the bundle (signing it
first with ``--key``), serves it (``--serve``) or checks that ``--url`` serves it, publishes the retained
``model/set`` command and prints what the devices report."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("push-bundle", help="roll a bundle out to devices over MQTT (+ HTTP)")
    p.add_argument("bundle", help="bundle directory (or an archive made by an earlier push-bundle)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--serve", action="store_true", help="serve the archive from here over HTTP")
    where.add_argument("--url", help="the archive's address on your web server (ending in / : the archive's name "
                       "is appended); it is checked before the command goes out")
    p.add_argument("--listen", default="0.0.0.0:0", metavar="ADDR:PORT", help="--serve: listen here (port 0: any)")
    p.add_argument("--advertise", help="--serve: host name devices use to reach this machine (default: the address "
                   "this machine uses to reach the broker)")
    p.add_argument("--rate-limit", type=float, metavar="BYTES_PER_S", help="--serve: cap each download")
    p.add_argument("--out", help="folder for the archive (default: a temporary one with --serve, else .)")
    p.add_argument("--version", dest="bundle_version", help="version label (default: the archive's sha256[:12])")
    p.add_argument("--key", help="Ed25519 private key (edge-ssd keygen): sign the bundle before packing")
    p.add_argument("--device", action="append", help="device name (repeatable; default: all devices)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password", help="or $EDGE_SSD_MQTT_PASSWORD")
    p.add_argument("--prefix", default="edge-ssd", help="topic prefix (mqtt.topic_prefix)")
    p.add_argument("--wait", type=int, default=0, metavar="N", help="exit once N devices finished (0 with --serve: "
                   "serve until interrupted; 0 with --url: exit after publishing)")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds (exit 1)")
    p.set_defaults(func=run)


def _pack(args, out: Path):
    from ..errors import UserError
    from ..fleet.archive import Packed, pack_bundle, sign_bundle
    from ..nets.fetch import sha256_of

    src = Path(args.bundle)
    if src.is_file():
        if args.key:
            raise UserError("--key signs a bundle directory; pass the directory, not an archive")
        return Packed(src, sha256_of(src), src.stat().st_size)
    if not src.is_dir():
        raise UserError(f"{src} not found; pass a bundle directory written by `edge-ssd convert`")
    if args.key:
        sign_bundle(src, args.key)
    tmp = pack_bundle(src, out / ".packing.tar")
    version = args.bundle_version or tmp.sha256[:12]
    final = tmp.path.with_name(f"{src.name.removesuffix('.bundle')}-{version}.tar")
    tmp.path.replace(final)
    return Packed(final, tmp.sha256, tmp.size)


def run(args) -> int:
    import re

    from ..errors import UserError
    from ..fleet.device import VERSION_RE, Command
    from ..fleet.push import Broker, Follower, advertise_host, check_served, publish, wait_devices

    if args.bundle_version and not re.fullmatch(VERSION_RE, args.bundle_version):
        raise UserError(f"--version {args.bundle_version!r}: use letters, digits and . _ + - (up to 64)")
    broker = Broker(args.host, args.port, args.username, args.password or os.environ.get("EDGE_SSD_MQTT_PASSWORD"),
                    args.prefix.strip("/"))
    with tempfile.TemporaryDirectory(prefix="edge-ssd-push-") as tmpdir:
        out = Path(args.out or (tmpdir if args.serve else "."))
        out.mkdir(parents=True, exist_ok=True)
        packed = _pack(args, out)
        version = args.bundle_version or packed.sha256[:12]
        server = None
        if args.serve:
            from ..fleet.serve import BundleServer

            host, _, port = args.listen.rpartition(":")
            try:
                server = BundleServer(packed.path.parent, host or "0.0.0.0", int(port or 0),
                                      rate=args.rate_limit).start()
            except (OSError, ValueError) as e:
                raise UserError(f"cannot listen on {args.listen}: {e}; pass --listen ADDR:PORT") from None
            adv = args.advertise or advertise_host(broker.host, broker.port)
            url = f"http://{adv}:{server.port}/{packed.path.name}"
        else:
            url = args.url + packed.path.name if args.url.endswith("/") else args.url
            check_served(url, packed)
        cmd = Command(url=url, sha256=packed.sha256, version=version, size=packed.size)
        payload = json.dumps(cmd.model_dump(), separators=(",", ":")).encode()
        follower = Follower(packed.sha256)
        devices = args.device or ["all"]
        client = publish(broker, devices, payload, follower)
        print(f"published {version} ({packed.size} bytes, sha256 {packed.sha256[:16]}...) to "
              f"{', '.join(devices)}: {url}", flush=True)
        try:
            return _follow(args, follower, server, wait_devices)
        finally:
            client.disconnect()
            client.loop_stop()
            if server is not None:
                server.stop()


def _follow(args, follower, server, wait_devices) -> int:
    if args.wait:
        done = wait_devices(follower, args.wait, args.timeout)
        bad = {d: s for d, s in done.items() if s != "active"}
        if len(done) < args.wait:
            print(f"edge-ssd: {len(done)} of {args.wait} devices finished within {args.timeout:g} s", file=sys.stderr)
            return 1
        return 1 if bad else 0
    if server is None:
        return 0
    print("serving; Ctrl-C to stop (devices that are offline now fetch the bundle when they come back, while "
          "this server runs)", flush=True)
    end = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        while end is None or time.monotonic() < end:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    return 0

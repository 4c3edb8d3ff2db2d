"""``edge-ssd detect INPUT --model M``: run the detector on an image, a folder, a video, a stream or a camera."""

from __future__ import annotations

import argparse

from ..runtime.backends import BACKEND_CHOICES
from . import _args as A


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect", help="detect objects in an image, folder, video, stream or camera",
        description="Run a model (bundle directory, .onnx or .tflite) on INPUT: an image, a folder of images, a "
                    "video file, a camera index (0) or /dev/videoN, picamera2[:N], or an rtsp:// / http:// URL.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="image, folder, video, camera index, picamera2 or URL")
    p.add_argument("--model", "-m", required=True, help="bundle directory, .onnx or .tflite model")
    p.add_argument("--labels", help="labels file, one name per line (default: the model's metadata, the bundle's "
                                    "manifest, or <model>-labels.txt / <model>.txt beside it; else class1... "
                                    "with a warning)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per frame (boxes in pixels of the original frame)")
    p.add_argument("--save", metavar="DIR", help="write annotated images (or an annotated video) into DIR")
    p.add_argument("--threshold", "-t", type=A.unit_float, default=None, help="score threshold (default: the model's)")
    p.add_argument("--threads", type=A.threads, default=None, help="interpreter threads")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="inference backend")
    p.add_argument("--max-frames", type=A.positive_int, default=None,
                   help="stop after this many frames (cameras and streams run until Ctrl-C otherwise)")
    p.set_defaults(func=run)



class FirstN:
    """Forwards the first ``n`` results (all when ``n`` is None) to ``sinks``; ``full`` once n went through."""

    def __init__(self, sinks: list, n: int | None):
        self.sinks = sinks
        self.n = n
        self.count = 0
        self.wants_image = any(getattr(s, "wants_image", False) for s in sinks)

    @property
    def full(self) -> bool:
        return self.n is not None and self.count >= self.n

    def handle(self, r) -> None:
        if self.full:
            return
        self.count += 1
        for s in self.sinks:
            s.handle(r)

    def close(self) -> None:
        for s in self.sinks:
            if hasattr(s, "close"):
                s.close()


def run(args) -> int:
    import logging
    import sys
    from pathlib import Path

    from ..capture.factory import open_source, source_kind
    from ..errors import UserError
    from ..publish.annotate import SaveSink
    from ..publish.console import JsonSink, TextSink
    from ..redact import mask
    from ..runtime.detector import load_detector
    from ..runtime.pipeline import Pipeline, SourceConfig

    log = logging.getLogger("edge_ssd.detect")
    kind = source_kind(args.input)
    live = kind in ("camera", "stream", "picamera2")
    shown = mask(args.input)  # the source's name in logs and JSON: never a URL's password
    src = open_source(args.input, name=shown, latest=live, realtime=False, fail_fast=True)
    det = load_detector(args.model, backend=args.backend, threads=args.threads, score_threshold=args.threshold,
                        labels=args.labels)
    log.info("backend in use: %s", det.backend.describe())
    sinks: list = [JsonSink(sys.stdout) if args.json else TextSink(sys.stdout)]
    if args.save:
        video_name = None
        fps = 25.0
        if kind == "file":
            video_name = f"{Path(args.input).stem}_detections.avi"
        elif live and args.max_frames is None:
            video_name = None  # a camera run without an end: save frames as images
        sinks.append(SaveSink(args.save, video_name=video_name, fps=fps))
    gate = FirstN(sinks, args.max_frames)
    pipe = Pipeline(det, [SourceConfig(src, name=shown)], [gate], process_all=not live)
    if kind == "file":
        src.open()
        if getattr(src, "file_fps", 0) and 0 < src.file_fps < 1000 and args.save:
            sinks[-1].fps = src.file_fps
    try:
        pipe.start()
        while not pipe.wait(0.1):
            if sinks[0].broken or gate.full:
                break
            if live and src.status == "failed":
                break
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        pipe.stop(drain=not live and not sinks[0].broken)
    if sinks[0].broken:  # stdout closed by the reader: exit quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    st = pipe.stats()
    if src.status == "failed" and st.processed == 0:
        raise UserError(f"source {shown} failed: {mask(src.error)}; check the camera/stream and try again")
    bad = st.dropped.get("corrupt", 0)
    if bad and st.processed == 0:
        raise UserError(f"{shown}: nothing could be decoded ({bad} file(s)/frame(s) empty, truncated or not an "
                        "image); replace them with readable JPEG/PNG files or a playable video")
    if bad:
        log.warning("%d frame(s) could not be decoded and were skipped", bad)
    log.info("%d frame(s) processed, inference p50 %s ms, backend %s", st.processed, st.inference_ms.p50,
             st.backend)
    return 0

"""Line sinks of ``edge-ssd detect``: a text summary or one JSON object per frame (boxes in pixels) on a stream."""

from __future__ import annotations


class _StreamSink:
    """Writes lines to a stream; a closed pipe (``| head``) ends the run instead of raising per frame."""

    def __init__(self, out):
        self.out = out
        self.broken = False

    def write(self, line: str) -> None:
        if self.broken:
            return
        try:
            self.out.write(line)
            self.out.flush()
        except BrokenPipeError:
            self.broken = True


class JsonSink(_StreamSink):
    def handle(self, r) -> None:
        import json

        obj = {"source": r.source, "frame": r.frame, "width": r.width, "height": r.height,
               "objects": [{"label": o["label"], "class_id": o["class_id"], "score": o["score"], "box": o["box_px"]}
                           for o in r.objects()]}
        if r.path:
            obj["file"] = r.path
        self.write(json.dumps(obj) + "\n")


class TextSink(_StreamSink):
    def handle(self, r) -> None:
        objs = r.objects()
        where = r.path or f"{r.source} frame {r.frame}"
        parts = [f"{o['label']} {o['score']:.2f} [{', '.join(f'{v:.0f}' for v in o['box_px'])}]" for o in objs]
        self.write(f"{where}: {len(objs)} object(s)" + (": " + "; ".join(parts) if parts else "") + "\n")

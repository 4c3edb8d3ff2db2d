"""Conversion report: report.json, report.md (terminal table) and report.png (fp32 vs int8 side by side)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _f(v, nd=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def format_markdown(rep: dict) -> str:
    v = rep.get("validation") or {}
    a = v.get("agreement", {})
    conv = rep.get("converter", {})
    lines = [
        f"# edge-ssd conversion report: {Path(rep.get('source', {}).get('path', '?')).name}",
        "",
        "| item | value |",
        "|---|---|",
        f"| result | {'OK' if rep.get('ok') else 'FAILED: ' + rep.get('failure', '')} |",
        f"| mode | {rep.get('mode')} (tail on host: {rep.get('tail_on_host')}) |",
        f"| backend / quant | onnx2tf {conv.get('onnx2tf')} {conv.get('backend')} / {conv.get('quant_type')}, "
        f"{conv.get('calibration', 'minmax')} calibration |",
        f"| validated on | {rep.get('validated_on', '-')} |",
        f"| target / I/O | {rep.get('target')} / input {rep.get('input_dtype')}, outputs {rep.get('output_dtype')} |",
        f"| calibration images | {rep.get('calibration', {}).get('images')} |",
        f"| cut self-check (max abs, scores / boxes) | {_f(rep.get('cut_check', {}).get('scores_max_abs'))} / "
        f"{_f(rep.get('cut_check', {}).get('boxes_max_abs'))} |",
        f"| validation images | {v.get('images')} ({rep.get('validation_source', '')}) |",
        f"| scores error max / mean | {_f(v.get('scores_error', {}).get('max_abs'))} / "
        f"{_f(v.get('scores_error', {}).get('mean_abs'))} |",
        f"| boxes error max / mean | {_f(v.get('boxes_error', {}).get('max_abs'))} / "
        f"{_f(v.get('boxes_error', {}).get('mean_abs'))} |",
        f"| detections fp32 / int8 / matched (score >= {v.get('score_threshold')}) | {a.get('fp32_detections')} / "
        f"{a.get('int8_detections')} / {a.get('matched')} |",
        f"| precision / recall / F1 | {_f(a.get('precision'))} / {_f(a.get('recall'))} / **{_f(a.get('f1'))}** "
        f"(min {rep.get('min_agreement')}) |",
        f"| mean IoU / mean score error | {_f(a.get('mean_iou'))} / {_f(a.get('mean_score_error'))} |",
        f"| int8 inference (median, this machine) | {_f((v.get('latency_ms') or {}).get('median'), 3)} ms |",
    ]
    for root, m in (v.get("map") or {}).items():
        lines.append(f"| mAP@0.5 VOC07 fp32 / int8 ({Path(root).name}, {m.get('classes', '?')} classes) | "
                     f"{m['fp32_map_voc07']:.4f} / {m['int8_map_voc07']:.4f} (delta {m['delta_points_voc07']:+.2f} "
                     "points) |")
    t = rep.get("timing", {})
    lines += [
        f"| conversion time | {_f(t.get('total_s'), 3)} s (onnx2tf {_f(t.get('onnx2tf_s'), 3)} s) |",
        f"| peak memory | onnx2tf {_f(t.get('onnx2tf_peak_rss_mb'), 4)} MB, edge-ssd "
        f"{_f(t.get('self_peak_rss_mb'), 4)} MB |",
    ]
    chosen = rep.get("converter", {}).get("attempt")
    for a_ in rep.get("attempts", []):
        measured = ""
        if "f1" in a_:
            measured = f", F1 {a_['f1']:.4f}" + (f", int8 mAP {a_['int8_map_voc07']:.4f}" if "int8_map_voc07" in a_
                                                  else "") + f", {a_['latency_ms']:.1f} ms/inference"
        name = a_.get("name", a_.get("quant_type"))
        lines.append(f"| attempt {name} | {'ok' if a_['ok'] else 'failed: ' + a_.get('error', '')[:120]} "
                     f"(onnx2tf {a_['seconds']:.1f} s{measured}){' <- kept' if name == chosen else ''} |")
    lines += _ecosystem_rows(rep)
    for w in rep.get("warnings", []):
        lines.append(f"| warning | {w} |")
    return "\n".join(lines) + "\n"


def _edgetpu_row(name: str, e: dict) -> str:
    if e.get("compiler") is None:
        return f"| Edge TPU ({name}) | not compiled: {e.get('note', '')} |"
    if e.get("ok") is False:
        return f"| Edge TPU ({name}) | FAILED: {e.get('failure', '')} |"
    lg = e.get("log") or {}
    mib = (lambda b: "-" if b is None else f"{b / 2**20:.2f} MiB")  # noqa: E731
    return (f"| Edge TPU ({name}) | {e.get('output')}: {lg.get('ops_on_tpu')} ops on the TPU, {lg.get('ops_on_cpu')} "
            f"on the CPU; parameters on-chip {mib(lg.get('on_chip_bytes'))}, off-chip {mib(lg.get('off_chip_bytes'))}"
            f" (compiler {lg.get('version')}) |")


def _ecosystem_rows(rep: dict) -> list[str]:
    """The Edge TPU compile and the TFLite_Detection_PostProcess model (``--postprocess-model``)."""
    rows = []
    if rep.get("edgetpu"):
        rows.append(_edgetpu_row("model.tflite", rep["edgetpu"]))
    pp = rep.get("postprocess_model")
    if pp:
        v = pp.get("validation", {})
        b, o = v.get("vs_bundle") or {}, v.get("vs_onnx") or {}
        rows.append(f"| post-process model | {pp['file']} + {pp.get('labelmap')}: input {pp['input_dtype']} "
                    f"(scale {_f(pp.get('input_scale'))}, zero point {pp.get('input_zero_point')}), "
                    f"{pp['num_classes']} classes, max {pp['op_options']['max_detections']} detections |")
        rows.append(f"| post-process model vs bundle / vs ONNX (F1, score > {v.get('score_threshold')}, "
                    f"{v.get('images')} images) | **{_f(b.get('f1'))}** / {_f(o.get('f1'))} "
                    f"(median invoke {_f((v.get('latency_ms') or {}).get('median'), 3)} ms) |")
        if pp.get("edgetpu"):
            rows.append(_edgetpu_row(pp["file"], pp["edgetpu"]))
    return rows


def _draw(img, det, labels, color):
    import cv2

    out = img.copy()
    h, w = out.shape[:2]
    for b, s, c in zip(det.scaled(w, h), det.scores, det.class_ids, strict=True):
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        name = labels[c] if labels and 0 <= c < len(labels) else str(c)
        cv2.putText(out, f"{name} {s:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1,
                    cv2.LINE_AA)
    return out


def draw_examples(examples, labels, path: Path, height: int = 240) -> Path | None:
    """Rows of (fp32 | int8) detections for a few validation images."""
    import cv2

    if not examples:
        return None
    rows = []
    for _p, img, d0, d1 in examples:
        a = _draw(img, d0, labels, (0, 200, 0))
        b = _draw(img, d1, labels, (0, 0, 230))
        cv2.putText(a, f"fp32 ONNX: {len(d0)}", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 200, 0), 2)
        cv2.putText(b, f"int8 TFLite: {len(d1)}", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 230), 2)
        pair = np.concatenate([a, np.full((a.shape[0], 6, 3), 255, np.uint8), b], axis=1)
        s = height / pair.shape[0]
        rows.append(cv2.resize(pair, (int(pair.shape[1] * s), height)))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    cv2.imwrite(str(path), np.concatenate(rows, axis=0))
    return path


def write_reports(bundle_dir: Path, rep: dict, examples, labels) -> None:
    (bundle_dir / "report.json").write_text(json.dumps(rep, indent=1, default=str))
    (bundle_dir / "report.md").write_text(format_markdown(rep))
    try:
        draw_examples(examples, labels, bundle_dir / "report.png")
    except Exception as e:  # a drawing problem must never lose the conversion
        rep.setdefault("warnings", []).append(f"report.png not written: {e}")

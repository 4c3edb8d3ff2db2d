"""``convert_model``: ONNX SSD -> calibrated int8 TFLite bundle with measured fidelity.

Default path (measured, see convert/README.md): cut the post-processing tail (softmax + box decode), convert
the body to int8 with onnx2tf's flatbuffer_direct backend, run the tail in float on the host. Every conversion
proves the cut on real images and validates fp32 vs int8 detections; agreement below ``min_agreement`` gives
``ok=False`` (the CLI exits 4) while keeping the artefacts.
"""

from __future__ import annotations

import logging
import platform
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model.bundle import InputSpec, Manifest, OutputSpec, Quant, is_bundle, sha256_file, write_manifest
from ..model.preprocess import Normalization, preprocess

log = logging.getLogger(__name__)

EXIT_LOW_AGREEMENT = 4
# Ops the Edge TPU compiler maps (coral.ai/docs/edgetpu/models-intro#supported-operations)
EDGETPU_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXP", "FULLY_CONNECTED",
    "GATHER", "HARD_SWISH", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAX_POOL_2D", "MAXIMUM", "MEAN", "MINIMUM",
    "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "DEQUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6",
    "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH",
    "TRANSPOSE", "TRANSPOSE_CONV", "LEAKY_RELU",
}


@dataclass
class ConvertResult:
    bundle_dir: Path
    report: dict
    ok: bool

    @property
    def manifest_path(self) -> Path:
        return self.bundle_dir / "manifest.json"


def _read_labels_file(path) -> list[str]:
    p = Path(path)
    try:
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise UserError(f"cannot read labels file {p}: {e.strerror}; pass a text file with one label per "
                        "line") from None
    if not names:
        raise UserError(f"labels file {p} is empty; write one label per line, BACKGROUND first")
    return names


def _resolve_labels(labels, info, val_images, calib_images) -> list[str]:
    c = info.tail.num_classes or 0
    if labels is not None:
        names = _read_labels_file(labels) if isinstance(labels, (str, Path)) else [str(x) for x in labels]
    elif info.labels:
        names = list(info.labels)
    else:
        names = None
        for s in (val_images, calib_images):
            cn = s.class_names() if s is not None else None
            if cn and len(cn) == c:
                names = cn
                break
        if names is None:
            names = ["BACKGROUND"] + [f"class{i}" for i in range(1, c)] if c else []
    if c and names and names[0] != "BACKGROUND" and len(names) == c - 1:
        names = ["BACKGROUND"] + names
    if c and len(names) != c:
        raise UserError(f"{len(names)} labels given but the model has {c} classes; the labels file needs one line "
                        "per class, BACKGROUND first")
    return names


def _labels_background(info, names: list[str]) -> int | None:
    """Column 0 is the background when the graph has no background of its own (sigmoid over every column)
    but the labels name column 0 so; else None (keep the graph's)."""
    if info.tail.background_class is None and names and names[0].strip().lower() in ("background", "???",
                                                                                    "__background__"):
        return 0
    return None


def _prepare_out(out_dir: Path, force: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"output {out_dir} exists and is not a directory; choose another -o")
        if any(out_dir.iterdir()) and not is_bundle(out_dir) and not force:
            raise UserError(f"output directory {out_dir} is not empty and not a bundle; choose another -o or pass "
                            "--force")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model.tflite", "manifest.json", "report.json", "report.md", "report.png"):
        (out_dir / name).unlink(missing_ok=True)


def _tflite_io(path: Path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # without the default XNNPACK delegate, so the op list names the model's own ops
    it = Interpreter(model_path=str(path),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    ops = sorted({d["op_name"] for d in it._get_ops_details()})
    return it.get_input_details(), it.get_output_details(), ops


def _find_output(outs, onnx_name: str, shape: list[int]) -> dict:
    """The .tflite output for an ONNX tensor: by name (onnx2tf keeps it, maybe behind a scope prefix such as
    ``wa/``), else the only output of that shape."""
    bare = onnx_name.lstrip("/")
    hits = [d for d in outs if d["name"] == onnx_name or d["name"] == bare or d["name"].endswith("/" + bare)
            or d["name"].startswith(onnx_name + ":")]
    if len(hits) == 1:
        return hits[0]
    shaped = [d for d in outs if [int(v) for v in d["shape"]] == list(shape)]
    if len(shaped) == 1:
        return shaped[0]
    raise UserError(f"cannot tell the converted model's outputs apart ({[d['name'] for d in outs]} for "
                    f"{onnx_name}); re-export the ONNX with distinct tensor names")


def _map_outputs(outs, names: list[str], shapes: dict[str, list[int]]) -> list[dict]:
    found = [_find_output(outs, n, shapes[n]) for n in names]
    if len({d["name"] for d in found}) != len(found):
        raise UserError(f"two ONNX tensors map to one .tflite output ({[d['name'] for d in found]}); "
                        "re-export the ONNX with distinct tensor names")
    return found


def _output_spec(parts: list[dict], name: str, n: int, k: int) -> OutputSpec:
    if len(parts) == 1:
        return OutputSpec(**_spec(parts[0]))
    specs = [OutputSpec(**_spec(d)) for d in parts]
    return OutputSpec(name=name, shape=[1, n, k], dtype=specs[0].dtype, parts=specs)


def _spec(d) -> dict:
    dt = np.dtype(d["dtype"]).name
    q = None
    if dt in ("int8", "uint8"):
        scale, zp = d["quantization"]
        q = Quant(scale=float(scale), zero_point=int(zp))
    return {"name": d["name"], "shape": [int(v) for v in d["shape"]], "dtype": dt, "quant": q}


def _edgetpu(tflite: Path, ops: list[str], bundle_dir: Path) -> dict:
    res = {"unsupported_ops": sorted(set(ops) - EDGETPU_OPS)}
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        res["compiler"] = None
        res["note"] = ("edgetpu_compiler not found: on an x86-64 Debian/Ubuntu host install it (apt-get install "
                       "edgetpu-compiler from packages.cloud.google.com/apt coral-edgetpu-stable) and run "
                       f"`edgetpu_compiler -s -o {bundle_dir} {bundle_dir / 'model.tflite'}`, then point the "
                       "manifest's model_file at model_edgetpu.tflite")
        return res
    import subprocess

    r = subprocess.run([exe, "-s", "-o", str(bundle_dir), str(tflite)], capture_output=True, text=True)
    res["compiler"] = exe
    res["returncode"] = r.returncode
    text = r.stdout + r.stderr
    (bundle_dir / "edgetpu_compiler.log").write_text(text)
    import re

    m = re.search(r"Number of operations that will run on Edge TPU:\s*(\d+)", text)
    m2 = re.search(r"Number of operations that will run on CPU:\s*(\d+)", text)
    res["ops_on_tpu"] = int(m.group(1)) if m else None
    res["ops_on_cpu"] = int(m2.group(1)) if m2 else None
    return res


def convert_model(onnx_path, out_dir, *, calib, calib_count: int = 200, val=None, labels=None,
                  target: str = "cpu", quant: str = "auto", min_agreement: float = 0.9, force: bool = False,
                  progress: bool = True, mean=None, std=None, input_shape=None, calib_split: str | None = None,
                  val_split: str | None = None, score_threshold: float = 0.5, keep_work: bool = False,
                  backend: str = "flatbuffer_direct", raw_outputs: tuple[str, str] | None = None) -> ConvertResult:
    """Convert ``onnx_path`` into the bundle directory ``out_dir``; see the module docstring."""
    from . import calibrate as cal
    from .cut import cut_input_name, cut_model, cut_outputs, save_cut, self_check, tail_postprocess
    from .inspect import load_and_inspect
    from .onnx2tf_runner import BACKENDS, find_onnx2tf, launcher, onnx2tf_version, run_onnx2tf
    from .report import write_reports
    from .validate import OnnxFp32, TfliteInt8, validate

    t_start = time.monotonic()
    if target not in ("cpu", "edgetpu"):
        raise UserError(f"--target {target!r}: use cpu or edgetpu")
    if quant not in ("auto", "per-channel", "per-tensor"):
        raise UserError(f"--quant {quant!r}: use auto, per-channel or per-tensor")
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: use {' or '.join(BACKENDS)}")
    find_onnx2tf(backend)  # a missing toolchain fails before minutes of calibration
    onnx_path = Path(onnx_path)
    out_dir = Path(out_dir)
    model, info = load_and_inspect(onnx_path, input_shape, raw_outputs=raw_outputs)
    # feed: what the source graph expects (its own normalisation in the graph -> raw pixels); body: what the
    # int8 body's input gets once that in-graph normalisation is folded into the bundle's input table
    feed = Normalization(tuple(mean) if mean else tuple(info.normalization["mean"]),
                         tuple(std) if std else tuple(info.normalization["std"]))
    norm = info.body_normalization(feed)
    h, w = info.input_hw()
    warnings: list[str] = []
    if not info.tail.recognised:
        # whole-graph int8 would need float outputs and failed on every real SSD we measured; refuse clearly
        raise UserError(f"{onnx_path}: post-processing tail not recognised ({info.tail.reason})")
    calib_images = cal.open_images(calib, split=calib_split)
    if val is not None:
        val_images = cal.open_images(val, split=val_split)
        overlap = len(val_images.ids() & calib_images.subset(calib_count).ids())
        val_source = "held-out --val" if overlap == 0 else f"--val ({overlap} images also used for calibration)"
        if overlap:
            warnings.append(f"{overlap} validation images are also calibration images; fidelity may be optimistic")
    else:
        val_images = calib_images.subset(min(len(calib_images), 50))
        val_source = "calibration images (no --val given)"
        warnings.append("no --val given: validated on calibration images; pass a held-out set for an honest figure")
    names = _resolve_labels(labels, info, val_images, calib_images)
    _prepare_out(out_dir, force)

    work_ctx = tempfile.TemporaryDirectory(prefix="edge-ssd-convert-")
    work = Path(work_ctx.name)
    try:
        # 1. calibration data (first: unreadable images fail fast)
        calib_data = cal.build_calibration(calib_images, w, h, norm, calib_count, force=force, progress=progress)
        warnings += calib_data.warnings
        npy = work / "calib.npy"
        np.save(npy, calib_data.data)
        del calib_data.data
        if val is None:
            log.warning(warnings[0])
        # 2. cut + self-check on real images
        cut = cut_model(model, info)
        cut_path = save_cut(cut, work / f"{onnx_path.stem}_body.onnx")
        check_imgs = []
        for k in range(len(val_images)):
            try:
                check_imgs.append(preprocess(val_images.load(k), w, h, feed, layout="NCHW"))
            except (UserError, ValueError, OSError):
                continue
            if len(check_imgs) >= 8:
                break
        if not check_imgs:
            raise UserError(f"no readable images in {', '.join(val_images.roots)}; point --val/--calib to real images")
        chk = self_check(model, cut, info, check_imgs)
        if not chk.ok:
            raise UserError(f"cutting the tail changed the outputs (scores {chk.scores_max_abs:.2g}, boxes "
                            f"{chk.boxes_max_abs:.2g} max abs); this export's tail is unusual - please report it")
        onnx_mean, onnx_std = cal.onnx2tf_scaling(norm)
        # 3. onnx2tf: with --quant auto both weight quantisations are converted and validated, and the one
        # that keeps accuracy best is kept (int8 mAP when ground truth exists, else detection F1; ties go to
        # per-channel)
        order = ["per-channel", "per-tensor"] if quant == "auto" else [quant]
        lg_names, of_names = cut_outputs(info)
        shapes = {o.name: [int(d.dim_value) for d in o.type.tensor_type.shape.dim] for o in cut.graph.output}
        t = info.tail
        label_bg = _labels_background(info, names)
        fp32 = OnnxFp32(model, info, feed, t.background_class if label_bg is None else label_bg)
        attempts, candidates, logs = [], [], []
        for qt in order:
            od = work / f"tf_{qt}"
            res = run_onnx2tf(cut_path, od, input_name=cut_input_name(info), calib_npy=npy, mean=onnx_mean,
                              std=onnx_std, quant_type=qt, input_dtype="int8", output_dtype="int8",
                              backend=backend, log_path=work / f"onnx2tf-{qt}.log", progress=progress)
            logs.append(res.log_path)
            f = res.files.get("full_integer_quant")
            attempts.append({"quant_type": qt, "ok": f is not None, "returncode": res.returncode,
                             "seconds": round(res.seconds, 2), "peak_rss_mb": round(res.peak_rss_mb, 1),
                             "error": res.error})
            if f is None:
                continue
            ins, outs, ops = _tflite_io(f)
            s_parts = _map_outputs(outs, lg_names, shapes)
            b_parts = _map_outputs(outs, of_names, shapes)
            q8 = TfliteInt8(f, norm, [d["name"] for d in s_parts], [d["name"] for d in b_parts], score_fn=t.score_fn,
                            priors=t.priors, coding=t.coding)
            v = validate(fp32, q8, val_images, score_threshold=score_threshold, progress=progress, labels=names)
            m0 = next(iter(v["map"].values())) if v.get("map") else None
            attempts[-1]["f1"] = v["agreement"]["f1"]
            if m0:
                attempts[-1]["int8_map_voc07"] = m0["int8_map_voc07"]
            rank = (m0["int8_map_voc07"] if m0 else v["agreement"]["f1"], -len(candidates))
            candidates.append((rank, qt, f, res, v, ins, ops, s_parts, b_parts))
        for lp in logs:
            shutil.copy(lp, out_dir / lp.name)
        if not candidates:
            raise UserError(f"onnx2tf could not produce an int8 model ({attempts[-1]['error'][:160]}); see "
                            f"{out_dir / logs[-1].name}")
        _, qt, tfl, res, v, ins, ops, s_parts, b_parts = max(candidates, key=lambda c: c[0])
        model_path = out_dir / "model.tflite"
        shutil.copy(tfl, model_path)
        in_spec = _spec(ins[0])
        examples = v.pop("_examples")
        f1 = v["agreement"]["f1"]
        ok = f1 >= min_agreement
        edgetpu = _edgetpu(model_path, ops, out_dir) if target == "edgetpu" else None
        self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        exe = find_onnx2tf(backend)
        converter = {"tool": "onnx2tf", "onnx2tf": onnx2tf_version(exe), "backend": backend,
                     "launcher": Path(res.command[1]).name if len(launcher(exe)) > 1 else "onnx2tf",
                     "quant_type": qt, "flags": res.command[len(launcher(exe)) + 2:],
                     "edge_ssd": _edge_ssd_version(), "python": platform.python_version(),
                     "calibration_images": calib_data.used, "tail": "host (float)"}
        converter["flags"] = [str(x).replace(str(work), "<work>") for x in converter["flags"]]
        rep = {
            "ok": ok, "failure": "" if ok else f"int8-vs-fp32 detection F1 {f1:.3f} < --min-agreement {min_agreement}",
            "source": {"path": str(onnx_path), "sha256": sha256_file(onnx_path), "opset": info.opset,
                       "input": info.input.shape},
            "mode": "cut", "tail_on_host": True, "target": target,
            "input_dtype": in_spec["dtype"], "output_dtype": _spec(s_parts[0])["dtype"],
            "head_outputs": {"scores": len(s_parts), "boxes": len(b_parts)},
            "converter": converter, "attempts": attempts, "ops": ops,
            "calibration": {"images": calib_data.used, "skipped": len(calib_data.skipped),
                            "roots": calib_images.roots, "scaling_error": calib_data.scaling_error,
                            "onnx2tf_mean": onnx_mean, "onnx2tf_std": onnx_std},
            "cut_check": {"images": chk.images, "scores_max_abs": chk.scores_max_abs,
                          "boxes_max_abs": chk.boxes_max_abs},
            "validation": v, "validation_source": val_source, "min_agreement": min_agreement,
            "edgetpu": edgetpu, "warnings": warnings,
            "timing": {"total_s": round(time.monotonic() - t_start, 2), "onnx2tf_s": round(res.seconds, 2),
                       "onnx2tf_peak_rss_mb": round(res.peak_rss_mb, 1), "self_peak_rss_mb": round(self_rss, 1)},
        }
        fidelity = {"f1": f1, "precision": v["agreement"]["precision"], "recall": v["agreement"]["recall"],
                    "mean_iou": v["agreement"]["mean_iou"], "scores_max_abs": v["scores_error"]["max_abs"],
                    "boxes_max_abs": v["boxes_error"]["max_abs"], "images": v["images"],
                    "validation_source": val_source, "cut_check_max_abs": max(chk.scores_max_abs, chk.boxes_max_abs),
                    "ok": ok}
        if v.get("map"):
            m0 = next(iter(v["map"].values()))
            fidelity.update(fp32_map=m0["fp32_map_voc07"], int8_map=m0["int8_map_voc07"],
                            map_delta_points=m0["delta_points_voc07"])
        manifest = Manifest(
            model_sha256=sha256_file(model_path), target=target,
            input=InputSpec(name=in_spec["name"], shape=in_spec["shape"], layout="NHWC", dtype=in_spec["dtype"],
                            color="RGB", mean=list(norm.mean), std=list(norm.std), quant=in_spec["quant"]),
            scores=_output_spec(s_parts, "scores", t.num_priors, t.num_classes),
            boxes=_output_spec(b_parts, "boxes", t.num_priors, 4),
            postprocess=tail_postprocess(info, score_threshold, label_bg),
            labels=names,
            source={"file": onnx_path.name, "sha256": rep["source"]["sha256"], "opset": info.opset,
                    "input_shape_nchw": info.input.shape, "priors_match_mobilenet_ssd_spec": t.priors_match_spec,
                    "raw_outputs": {"scores": t.logits_tensor, "boxes": t.offsets_tensor}, "family": t.family,
                    "input_layout": info.input_layout, "graph_normalization": info.graph_norm},
            converter=converter, fidelity=fidelity,
        )
        write_manifest(out_dir, manifest)
        write_reports(out_dir, rep, examples, names)
        return ConvertResult(out_dir, rep, ok)
    finally:
        if keep_work:
            log.info("work directory kept: %s", work)
        else:
            work_ctx.cleanup()


def _edge_ssd_version() -> str:
    try:
        from .. import __version__

        return __version__
    except ImportError:
        return "?"

"""``convert_model``: ONNX SSD -> calibrated int8 TFLite bundle with measured fidelity.

Default path (measured, see convert/README.md): cut the post-processing tail (softmax + box decode), convert
the body to int8 with onnx2tf's flatbuffer_direct backend, run the tail in float on the host. Every candidate is
written as a bundle first and then validated as the device runs it: loaded by ``edge_ssd.runtime.load_detector``
(the daemon's preprocessing, backend, head concatenation, dequantisation, decode and NMS) and compared with the
source ONNX in ONNX Runtime (the runtime's ``.onnx`` loader) on held-out images: ``--val``, or a seeded 25% of
``--calib`` never used for calibration. The cut itself is proved the same way (the float body as a bundle must
reproduce the source to 1e-4). ``--quant auto`` keeps the best attempt on those held-out images: the highest
detection F1 among the attempts within 1 mAP point of fp32 when they have ground truth (else the smallest mAP
drop), the highest F1 without ground truth. Agreement below ``min_agreement`` gives ``ok=False`` (the CLI exits
4) while keeping the artefacts.
"""

from __future__ import annotations

import functools
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
from ..model.preprocess import Normalization

log = logging.getLogger(__name__)

EXIT_LOW_AGREEMENT = 4
MAX_MAP_DROP = 1.0  # mAP points (VOC07) an attempt may lose against fp32 and still be chosen by F1
# Ops the Edge TPU compiler maps (coral.ai/docs/edgetpu/models-intro#supported-operations)
EDGETPU_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXP", "FULLY_CONNECTED",
    "GATHER", "HARD_SWISH", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAX_POOL_2D", "MAXIMUM", "MEAN", "MINIMUM",
    "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "DEQUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6",
    "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH",
    "TRANSPOSE", "TRANSPOSE_CONV", "LEAKY_RELU",
}


# written only with --postprocess-model / --target edgetpu: removed first so no stale file outlives a re-conversion
_OPTIONAL_FILES = ("model_postprocess.tflite", "labelmap.txt", "model_edgetpu.tflite",
                   "model_postprocess_edgetpu.tflite")


@dataclass
class ConvertResult:
    bundle_dir: Path
    report: dict
    ok: bool

    @property
    def manifest_path(self) -> Path:
        return self.bundle_dir / "manifest.json"


def _prepare_out(out_dir: Path, force: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"output {out_dir} exists and is not a directory; choose another -o")
        if any(out_dir.iterdir()) and not is_bundle(out_dir) and not force:
            raise UserError(f"output directory {out_dir} is not empty and not a bundle; choose another -o or pass "
                            "--force")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model.tflite", "manifest.json", "report.json", "report.md", "report.png", *_OPTIONAL_FILES):
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


def _edgetpu(tflite: Path, ops: list[str], bundle_dir: Path, allow_cpu_ops: bool = False) -> dict:
    from .edgetpu import compile_for_edgetpu

    res = compile_for_edgetpu(tflite, bundle_dir, allow_cpu_ops=allow_cpu_ops)
    res["unsupported_ops"] = sorted(set(ops) - EDGETPU_OPS)
    return res


@dataclass(frozen=True)
class Recipe:
    """One way to quantise: weight quantisation and activation calibration (min-max or a percentile)."""

    quant_type: str = "per-channel"
    calibration: str = "minmax"
    percentile: float = 99.999

    @property
    def name(self) -> str:
        return self.quant_type + ("" if self.calibration == "minmax" else f"+p{self.percentile:g}")


def recipes(quant: str, calibration: str | None, percentile: float = 99.999) -> list[Recipe]:
    """What to try. ``--quant auto`` alone: per-channel and per-tensor with min-max, and per-channel with
    percentile calibration (3 onnx2tf runs); an explicit choice narrows it."""
    if quant not in ("auto", "per-channel", "per-tensor"):
        raise UserError(f"--quant {quant!r}: use auto, per-channel or per-tensor")
    if calibration not in (None, "minmax", "percentile"):
        raise UserError(f"--calibration {calibration!r}: use minmax or percentile")
    if not 50.0 < percentile <= 100.0:
        raise UserError(f"--percentile {percentile}: give a percentile between 50 and 100, e.g. 99.999")
    qts = ["per-channel", "per-tensor"] if quant == "auto" else [quant]
    if calibration is not None:
        return [Recipe(q, calibration, percentile) for q in qts]
    out = [Recipe(q, "minmax", percentile) for q in qts]
    if quant == "auto":
        out.append(Recipe("per-channel", "percentile", percentile))
    return out


def _labels(labels, onnx_path: Path, info, model):
    """The model's class names, resolved exactly as ``load_detector`` resolves them for the ONNX model, so the
    ONNX model and its bundle name every class the same."""
    from ..model.labels import resolve_labels

    meta = {p.key: p.value for p in model.metadata_props}
    bg = info.tail.background_class
    try:
        return resolve_labels(onnx_path, info.tail.num_classes, explicit=labels, metadata=meta, background=bg)
    except UserError:
        if bg is not None:
            raise
        # sigmoid over every column and one label fewer than columns (a TF label map without its background):
        # column 0 is the background, as the TF OD API puts it; the labels say so, not a guess
        return resolve_labels(onnx_path, info.tail.num_classes, explicit=labels, metadata=meta, background=0)


def _labels_background(info, names: list[str]) -> int | None:
    """The background column: the graph's; or 0 when the graph has none of its own (sigmoid over every column)
    but the labels name column 0 BACKGROUND."""
    from ..model.labels import is_background

    t = info.tail
    if t.background_class is None and names and is_background(names[0]):
        return 0
    return t.background_class


def _images(calib, val, calib_count: int, calib_split, val_split, force: bool):
    """(calibration images, validation images, a sentence saying where validation comes from, warnings)."""
    from . import calibrate as cal

    calib_images = cal.open_images(calib, split=calib_split)
    warnings: list[str] = []
    if val is None:
        calib_images, val_images = cal.hold_out(calib_images, force=force)
        source = (f"held out: a seeded {cal.HOLDOUT_FRACTION:.0%} of --calib ({len(val_images)} images, never "
                  "used for calibration; pass --val for a separate set)")
        return calib_images, val_images, source, warnings
    val_images = cal.open_images(val, split=val_split)
    overlap = len(val_images.ids() & calib_images.subset(calib_count).ids())
    source = "held-out --val" if overlap == 0 else f"--val ({overlap} images also used for calibration)"
    if overlap:
        warnings.append(f"{overlap} validation images are also calibration images; fidelity may be optimistic")
    return calib_images, val_images, source, warnings


def _reference_model(onnx_path: Path, model, input_shape, work: Path) -> Path:
    """The source ONNX for ONNX Runtime: the file itself, or a copy with the input shape fixed."""
    if input_shape is None:
        import onnx

        src = onnx.load(str(onnx_path), load_external_data=False)
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in src.graph.input[0].type.tensor_type.shape.dim
                if src.graph.input]
        if dims and all(v > 0 for v in dims):
            return onnx_path
    import onnx

    p = work / f"{onnx_path.stem}_static.onnx"
    onnx.save(model, str(p))
    return p


def _manifest(model_file: Path, target: str, in_spec: InputSpec, scores: OutputSpec, boxes: OutputSpec, info,
              names: list[str], score_threshold: float, source: dict, converter: dict, fidelity: dict) -> Manifest:
    from .cut import tail_postprocess

    return Manifest(
        model_file=model_file.name, model_sha256=sha256_file(model_file), target=target, input=in_spec,
        scores=scores, boxes=boxes,
        postprocess=tail_postprocess(info, score_threshold, _labels_background(info, names)), labels=names,
        source=source, converter=converter, fidelity=fidelity)


def _float_bundle(cut, info, norm: Normalization, names: list[str], score_threshold: float, source: dict,
                  work: Path) -> Path:
    """The cut float body (ONNX) as a bundle: the runtime runs it with the bundle's concatenation and decode,
    which proves the cut plus the device's tail against the source model."""
    from .cut import cut_input_name, cut_outputs, save_cut

    d = work / "float.bundle"
    d.mkdir()
    body = save_cut(cut, d / "model.onnx")
    shapes = {o.name: [int(v.dim_value) for v in o.type.tensor_type.shape.dim] for o in cut.graph.output}
    lg, of = cut_outputs(info)

    def spec(group, name, k):
        parts = [{"name": n, "shape": shapes[n], "dtype": np.float32, "quantization": (0.0, 0)} for n in group]
        return _output_spec(parts, name, info.tail.num_priors, k)

    in_spec = InputSpec(name=cut_input_name(info), shape=[int(v) for v in info.body_shape], layout="NCHW",
                        dtype="float32", color="RGB", mean=list(norm.mean), std=list(norm.std))
    m = _manifest(body, "float", in_spec, spec(lg, "scores", info.tail.num_classes), spec(of, "boxes", 4), info,
                  names, score_threshold, source, {"tool": "edge-ssd cut (float ONNX body)"}, {})
    write_manifest(d, m)
    return d


@dataclass
class Attempt:
    recipe: Recipe
    row: dict  # what the report lists for this attempt
    bundle: Path | None = None
    validation: dict | None = None
    result: object = None  # Onnx2tfResult
    ops: list | None = None

    def rank(self) -> tuple:
        """Higher is better: detection F1 among the attempts whose mAP stays within :data:`MAX_MAP_DROP` points
        of fp32 (all of them without ground truth); below that, the smaller mAP drop."""
        v = self.validation
        f1 = v["agreement"]["f1"]
        m = next(iter(v["map"].values())) if v.get("map") else None
        if m is None:
            return (1, f1, 0.0)
        drop = m["delta_points_voc07"]
        return (1, f1, -drop) if drop <= MAX_MAP_DROP else (0, -drop, f1)


@dataclass
class _Job:
    """What every attempt shares."""

    info: object
    norm: Normalization
    names: list[str]
    work: Path
    npy: Path
    backend: str
    target: str
    score_threshold: float
    source: dict
    progress: bool
    postprocess_model: bool = False  # --postprocess-model
    allow_cpu_ops: bool = False  # --allow-cpu-ops
    reference: object = None  # the source ONNX through the runtime's loader


def _attempt(job: _Job, recipe: Recipe, cut_path: Path, reference, val_images) -> Attempt:
    """Convert with one recipe, write the bundle, load it with the runtime and validate it."""
    from .calibrate import onnx2tf_scaling
    from .cut import cut_input_name, cut_outputs
    from .onnx2tf_runner import run_onnx2tf
    from .validate import compare

    info = job.info
    mean, std = onnx2tf_scaling(job.norm)
    od = job.work / f"tf_{recipe.name}"
    res = run_onnx2tf(cut_path, od, input_name=cut_input_name(info), calib_npy=job.npy, mean=mean, std=std,
                      quant_type=recipe.quant_type, input_dtype="int8", output_dtype="int8", backend=job.backend,
                      log_path=job.work / f"onnx2tf-{recipe.name}.log", progress=job.progress,
                      activation_percentile=recipe.percentile if recipe.calibration == "percentile" else None)
    row = {"name": recipe.name, "quant_type": recipe.quant_type, "calibration": recipe.calibration,
           "percentile": recipe.percentile if recipe.calibration == "percentile" else None,
           "ok": "full_integer_quant" in res.files, "returncode": res.returncode, "seconds": round(res.seconds, 2),
           "peak_rss_mb": round(res.peak_rss_mb, 1), "error": res.error}
    a = Attempt(recipe, row, result=res)
    f = res.files.get("full_integer_quant")
    if f is None:
        return a
    ins, outs, a.ops = _tflite_io(f)
    lg, of = cut_outputs(info)
    shapes = _cut_shapes(cut_path)
    s_parts, b_parts = _map_outputs(outs, lg, shapes), _map_outputs(outs, of, shapes)
    d = job.work / f"attempt-{recipe.name}.bundle"
    d.mkdir()
    shutil.copy(f, d / "model.tflite")
    sp = _spec(ins[0])
    in_spec = InputSpec(name=sp["name"], shape=sp["shape"], layout="NHWC", dtype=sp["dtype"], color="RGB",
                        mean=list(job.norm.mean), std=list(job.norm.std), quant=sp["quant"])
    t = info.tail
    m = _manifest(d / "model.tflite", job.target, in_spec, _output_spec(s_parts, "scores", t.num_priors,
                  t.num_classes), _output_spec(b_parts, "boxes", t.num_priors, 4), info, job.names,
                  job.score_threshold, job.source, {}, {})
    write_manifest(d, m)
    a.bundle = d
    from ..runtime.detector import load_detector

    # an Edge TPU bundle's model.tflite is the uncompiled int8 model: validated on the CPU interpreter
    det = load_detector(d, score_threshold=job.score_threshold, backend="litert" if job.target == "edgetpu" else "auto")
    a.validation = compare(reference, det, val_images, score_threshold=job.score_threshold, progress=job.progress,
                           labels=job.names, desc=f"validating {recipe.name}")
    v = a.validation
    row.update(f1=v["agreement"]["f1"], latency_ms=v["latency_ms"]["median"],
               scores_max_abs=round(v["scores_error"]["max_abs"], 4))
    if v.get("map"):
        m0 = next(iter(v["map"].values()))
        row.update(fp32_map_voc07=round(m0["fp32_map_voc07"], 4), int8_map_voc07=round(m0["int8_map_voc07"], 4))
    return a


def _cut_shapes(cut_path: Path) -> dict[str, list[int]]:
    import onnx

    m = onnx.load(str(cut_path), load_external_data=False)
    return {o.name: [int(d.dim_value) for d in o.type.tensor_type.shape.dim] for o in m.graph.output}


def _cut_check(reference, float_bundle: Path, val_images, score_threshold: float, n: int = 8) -> dict:
    """The cut float body + the runtime's concatenation and decode against the source model (first ``n``
    validation images): must agree to ~1e-4, or the tail was not understood."""
    from ..runtime.detector import load_detector
    from .validate import Reference, compare

    head = Reference(reference.keys[:n], reference.index[:n], reference.outputs[:n], [])
    det = load_detector(float_bundle, score_threshold=score_threshold)
    v = compare(head, det, val_images, score_threshold=score_threshold, progress=False, keep=0,
                desc="checking the cut")
    chk = {"images": v["images"], "scores_max_abs": v["scores_error"]["max_abs"],
           "boxes_max_abs": v["boxes_error"]["max_abs"], "f1": v["agreement"]["f1"]}
    if chk["scores_max_abs"] > 1e-4 or chk["boxes_max_abs"] > 1e-4:
        raise UserError(f"cutting the tail changed the outputs (scores {chk['scores_max_abs']:.2g}, boxes "
                        f"{chk['boxes_max_abs']:.2g} max abs); this export's tail is unusual - please report it")
    return chk


def convert_model(onnx_path, out_dir, *, calib, calib_count: int = 200, val=None, labels=None,
                  target: str = "cpu", quant: str = "auto", min_agreement: float = 0.9, force: bool = False,
                  progress: bool = True, mean=None, std=None, input_shape=None, calib_split: str | None = None,
                  val_split: str | None = None, score_threshold: float = 0.5, keep_work: bool = False,
                  backend: str = "flatbuffer_direct", calibration: str | None = None,
                  percentile: float = 99.999, postprocess_model: bool = False,
                  allow_cpu_ops: bool = False, raw_outputs: tuple[str, str] | None = None) -> ConvertResult:
    """Convert ``onnx_path`` into the bundle directory ``out_dir``; see the module docstring."""
    from . import calibrate as cal
    from .cut import cut_model
    from .inspect import load_and_inspect
    from .onnx2tf_runner import BACKENDS, find_onnx2tf

    t_start = time.monotonic()
    if target not in ("cpu", "edgetpu"):
        raise UserError(f"--target {target!r}: use cpu or edgetpu")
    plan = recipes(quant, calibration, percentile)
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: use {' or '.join(BACKENDS)}")
    find_onnx2tf(backend)  # a missing toolchain fails before minutes of calibration
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    model, info = load_and_inspect(onnx_path, input_shape, raw_outputs=raw_outputs)
    if not info.tail.recognised:
        # whole-graph int8 would need float outputs and failed on every real SSD we measured; refuse clearly
        raise UserError(f"{onnx_path}: post-processing tail not recognised ({info.tail.reason})")
    # feed: what the source graph expects (raw pixels when it normalises itself); the int8 body starts after the
    # graph's own normalisation, so the bundle's input table applies both
    norm = Normalization(tuple(mean) if mean else tuple(info.normalization["mean"]),
                         tuple(std) if std else tuple(info.normalization["std"]))
    calib_images, val_images, val_source, warnings = _images(calib, val, calib_count, calib_split, val_split, force)
    lab = _labels(labels, onnx_path, info, model)
    if lab.source == "placeholder":
        warnings.append(f"no labels found: classes are named {', '.join(lab.names[1:3])}...; pass --labels FILE")
    _prepare_out(out_dir, force)
    work = Path(tempfile.mkdtemp(prefix="edge-ssd-convert-"))
    try:
        return _convert(onnx_path, out_dir, work, model, info, norm, lab.names, plan, calib_images, val_images,
                        val_source, warnings, calib_count=calib_count, input_shape=input_shape, target=target,
                        backend=backend, force=force, progress=progress, score_threshold=score_threshold,
                        min_agreement=min_agreement, t_start=t_start, cut_model=cut_model, cal=cal,
                        postprocess_model=postprocess_model, allow_cpu_ops=allow_cpu_ops)
    finally:
        if keep_work:
            log.info("work directory kept: %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _convert(onnx_path, out_dir, work, model, info, norm, names, plan, calib_images, val_images, val_source,
             warnings, *, calib_count, input_shape, target, backend, force, progress, score_threshold,
             min_agreement, t_start, cut_model, cal, postprocess_model=False, allow_cpu_ops=False) -> ConvertResult:
    from ..runtime.detector import load_detector
    from .cut import source_postprocess
    from .validate import reference_outputs

    # 1. the reference: the source ONNX through the runtime's own loader (loaded on first use, so unreadable
    # calibration images fail first, alone), its outputs read as the proved tail lays them out
    reference_model = functools.cache(lambda: load_detector(
        _reference_model(onnx_path, model, input_shape, work), backend="onnxruntime", labels=names,
        normalization=norm, score_threshold=score_threshold,
        postprocess=source_postprocess(info, _labels_background(info, names))))
    # 2. calibration data through the same preprocessing
    layout = info.input_layout
    calib_data = cal.build_calibration(calib_images, lambda img: reference_model().preprocess(img), norm,
                                       calib_count, force=force, progress=progress, layout=layout)
    ref = reference_model()
    warnings += calib_data.warnings
    npy = work / "calib.npy"
    np.save(npy, calib_data.data)
    del calib_data.data
    reference = reference_outputs(ref, val_images, score_threshold, progress=progress)
    # 3. cut; the float body as a bundle through the runtime must reproduce the source model
    source = {"file": onnx_path.name, "sha256": sha256_file(onnx_path), "opset": info.opset,
              "input_shape_nchw": info.input.shape, "priors_match_mobilenet_ssd_spec": info.tail.priors_match_spec,
              "raw_outputs": {"scores": info.tail.logits_tensor, "boxes": info.tail.offsets_tensor},
              "family": info.tail.family, "input_layout": info.input_layout, "graph_normalization": info.graph_norm}
    cut = cut_model(model, info)
    body = info.body_normalization(norm)  # the bundle's input normalisation
    fb = _float_bundle(cut, info, body, names, score_threshold, source, work)
    chk = _cut_check(reference, fb, val_images, score_threshold)
    # 4. each recipe: onnx2tf, a bundle, validated by the runtime against the reference
    job = _Job(info, body, names, work, npy, backend, target, score_threshold, source, progress,
               postprocess_model, allow_cpu_ops, ref)
    attempts = [_attempt(job, r, fb / "model.onnx", reference, val_images) for r in plan]
    for a in attempts:
        shutil.copy(a.result.log_path, out_dir / a.result.log_path.name)
    done = [a for a in attempts if a.validation is not None]
    if not done:
        last = attempts[-1].result
        raise UserError(f"onnx2tf could not produce an int8 model ({last.error[:160]}); see "
                        f"{out_dir / last.log_path.name}")
    best = max(done, key=lambda a: (a.rank(), -done.index(a)))
    return _finish(onnx_path, out_dir, best, attempts, job, chk, calib_data, calib_images, val_source, warnings,
                   min_agreement, t_start, val_images, reference.index)


def _finish(onnx_path, out_dir, best: Attempt, attempts, job: _Job, chk, calib_data, calib_images, val_source,
            warnings, min_agreement, t_start, val_images, reference_index) -> ConvertResult:
    from ..model.bundle import load_manifest
    from .onnx2tf_runner import find_onnx2tf, launcher, onnx2tf_version
    from .report import write_reports

    v, res = best.validation, best.result
    examples = v.pop("_examples")
    for a in attempts:
        if a.validation is not None:
            a.validation.pop("_examples", None)
    f1 = v["agreement"]["f1"]
    ok = f1 >= min_agreement
    model_path = out_dir / "model.tflite"
    shutil.copy(best.bundle / "model.tflite", model_path)
    edgetpu = _edgetpu(model_path, best.ops, out_dir, job.allow_cpu_ops) if job.target == "edgetpu" else None
    exe = find_onnx2tf(job.backend)
    n_launch = len(launcher(exe))
    converter = {"tool": "onnx2tf", "onnx2tf": onnx2tf_version(exe), "backend": job.backend,
                 "launcher": Path(res.command[1]).name if n_launch > 1 else "onnx2tf",
                 "quant_type": best.recipe.quant_type, "calibration": best.recipe.calibration,
                 "activation_percentile": best.row["percentile"], "attempt": best.recipe.name,
                 "flags": [str(x).replace(str(job.work), "<work>") for x in res.command[n_launch + 2:]],
                 "edge_ssd": _edge_ssd_version(), "python": platform.python_version(),
                 "calibration_images": calib_data.used, "tail": "host (float)"}
    m0 = next(iter(v["map"].values())) if v.get("map") else None
    fidelity = {"f1": f1, "precision": v["agreement"]["precision"], "recall": v["agreement"]["recall"],
                "mean_iou": v["agreement"]["mean_iou"], "scores_max_abs": v["scores_error"]["max_abs"],
                "boxes_max_abs": v["boxes_error"]["max_abs"], "images": v["images"],
                "validation_source": val_source, "cut_check_max_abs": max(chk["scores_max_abs"], chk["boxes_max_abs"]),
                "latency_ms": v["latency_ms"]["median"], "ok": ok}
    if m0:
        fidelity.update(fp32_map=m0["fp32_map_voc07"], int8_map=m0["int8_map_voc07"],
                        map_delta_points=m0["delta_points_voc07"])
    kept, _ = load_manifest(best.bundle)
    manifest = kept.model_copy(update={"converter": converter, "fidelity": fidelity})
    write_manifest(out_dir, manifest)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    onnx2tf_s = sum(a.result.seconds for a in attempts)
    rep = {
        "ok": ok, "failure": "" if ok else f"int8-vs-fp32 detection F1 {f1:.3f} < --min-agreement {min_agreement}",
        "source": {"path": str(onnx_path), "sha256": job.source["sha256"], "opset": job.info.opset,
                   "input": job.info.input.shape},
        "mode": "cut", "tail_on_host": True, "target": job.target,
        "input_dtype": manifest.input.dtype, "output_dtype": (manifest.scores.parts or [manifest.scores])[0].dtype,
        "head_outputs": {"scores": len(manifest.scores.tensor_names()), "boxes": len(manifest.boxes.tensor_names())},
        "converter": converter, "attempts": [a.row for a in attempts], "ops": best.ops,
        "calibration": {"images": calib_data.used, "skipped": len(calib_data.skipped), "roots": calib_images.roots,
                        "scaling_error": calib_data.scaling_error, "paths": calib_data.paths},
        "cut_check": chk, "validation": v, "validation_source": val_source, "min_agreement": min_agreement,
        "validation_images": [str(val_images.path(k)) for k in reference_index],
        "validated_on": "the bundle loaded by edge_ssd.runtime.load_detector (LiteRT) vs the source ONNX in ONNX "
                        "Runtime (the runtime's .onnx loader)",
        "labels": job.names, "edgetpu": edgetpu, "warnings": warnings,
        "timing": {"total_s": round(time.monotonic() - t_start, 2), "onnx2tf_s": round(onnx2tf_s, 2),
                   "onnx2tf_peak_rss_mb": round(max(a.result.peak_rss_mb for a in attempts), 1),
                   "self_peak_rss_mb": round(self_rss, 1)},
    }
    for extra in _ecosystem_models(out_dir, manifest, job, val_images, edgetpu, rep):
        if ok and extra.get("ok") is False:
            ok = False
            rep.update(ok=False, failure=extra["failure"])
    write_reports(out_dir, rep, examples, job.names)
    return ConvertResult(out_dir, rep, ok)


def _ecosystem_models(out_dir, manifest, job: _Job, val_images, edgetpu, rep: dict) -> list[dict]:
    """The Edge TPU compile of model.tflite and ``--postprocess-model``: their results (into ``rep``; the
    post-process model's file, sha256 and agreement also into the manifest's ``fidelity``)."""
    out = [edgetpu] if edgetpu else []
    if job.postprocess_model:
        from .postprocess_model import add_postprocess_model

        pp = add_postprocess_model(out_dir, job.reference, val_images, target=job.target,
                                   allow_cpu_ops=job.allow_cpu_ops, score_threshold=job.score_threshold)
        rep["postprocess_model"] = pp
        v = pp["validation"]
        manifest.fidelity["postprocess_model"] = {
            "file": pp["file"], "sha256": sha256_file(out_dir / pp["file"]), "labelmap": pp["labelmap"],
            "f1_vs_bundle": v["vs_bundle"]["f1"], "f1_vs_onnx": (v["vs_onnx"] or {}).get("f1"),
            "images": v["images"], "ok": pp["ok"]}
        write_manifest(out_dir, manifest)
        out.append(pp)
    return out

def _edge_ssd_version() -> str:
    try:
        from .. import __version__

        return __version__
    except ImportError:
        return "?"

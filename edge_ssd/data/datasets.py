"""Dataset readers: Pascal VOC, pytorch-ssd's Open Images CSV format, and a plain folder of images.

Every dataset yields :class:`Sample` objects whose boxes are corner form **normalised to 0..1** and whose labels
index ``dataset.class_names`` (0 is ``BACKGROUND`` and never a label). Annotations are read and validated when the
dataset is constructed (cheap: no image is decoded unless an XML lacks ``<size>``), so a bad file stops training or
evaluation before it starts, with a one-line :class:`~edge_ssd.errors.UserError` naming the file and the element.

VOC coordinates follow pytorch-ssd's ``VOCDataset``: the 1-based pixel coordinates are shifted by one
(``xmin - 1`` ...) and then divided by the image size (as its ``ToPercentCoords`` transform does). ``difficult``
objects are kept and flagged; a trainer that wants pytorch-ssd's ``keep_difficult=False`` filters them out.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model.labels import read_labels

VOC_CLASSES: tuple[str, ...] = (
    "BACKGROUND",
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
OPEN_IMAGES_COLUMNS = ("ImageID", "XMin", "XMax", "YMin", "YMax", "ClassName")
OPEN_IMAGES_LABELS = "open-images-model-labels.txt"
BOX_EPS = 1e-3  # tolerance for normalised coordinates slightly outside 0..1 (rounding in exported CSVs)


@dataclass
class Sample:
    image_id: str
    image_path: Path
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (K,4) normalised corners
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (K,) class ids, never 0
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))  # (K,)
    width: int = 0  # pixels; 0 if unknown until the image is read
    height: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ---------------------------------------------------------------------------------------------------- labels
def write_labels(path, names) -> Path:
    """Write ``names`` as a pytorch-ssd labels file (one per line)."""
    names = [str(n) for n in names]
    if not names:
        raise UserError(f"refusing to write an empty labels file {path} (give at least BACKGROUND and one class)")
    p = Path(path)
    p.write_text("\n".join(names) + "\n", encoding="utf-8")
    return p


def _class_dict(names: list[str]) -> dict[str, int]:
    return {n: i for i, n in enumerate(names)}


# --------------------------------------------------------------------------------------------- base class
class _Dataset:
    """Common behaviour: a list of validated samples plus image loading."""

    class_names: list[str]
    samples: list[Sample]
    root: Path

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def __iter__(self):
        return iter(self.samples)

    def load_image(self, i: int) -> np.ndarray:
        """The image of sample ``i`` as BGR uint8 (records its size on the sample if it was unknown)."""
        from ..model.preprocess import read_image

        s = self.samples[i]
        try:
            img = read_image(s.image_path)
        except ValueError as e:
            raise UserError(str(e)) from None
        if not s.width or not s.height:
            s.height, s.width = int(img.shape[0]), int(img.shape[1])
        return img

    @property
    def num_boxes(self) -> int:
        return int(sum(len(s) for s in self.samples))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.root)!r}, images={len(self)}, boxes={self.num_boxes}, "
                f"classes={len(self.class_names) - 1})")


# ---------------------------------------------------------------------------------------------------- VOC
def _voc_number(obj: ET.Element, tag: str, xml_path: Path, k: int) -> float:
    el = obj.find(f"bndbox/{tag}")
    if el is None or el.text is None:
        raise UserError(f"{xml_path}: object #{k} has no <bndbox>/<{tag}> (every object needs xmin/ymin/xmax/ymax)")
    try:
        return float(el.text)
    except ValueError:
        raise UserError(f"{xml_path}: object #{k} <{tag}> is {el.text.strip()!r}, not a number "
                        "(fix the annotation)") from None


class VOCDataset(_Dataset):
    """Pascal VOC layout: ``root/JPEGImages/<id>.jpg``, ``root/Annotations/<id>.xml`` and optionally
    ``root/ImageSets/Main/<split>.txt``.

    ``class_names``: the class list (default VOC's 20 + BACKGROUND); an object of another class is an error,
    unless ``add_unknown`` appends its name to the list (evaluation: a dataset may hold classes a model lacks).
    ``split`` is None (every XML in ``Annotations/``), a split name (``trainval``, ``test``, ...) or the path of
    a list file with one image id per line. Images without objects are kept as negatives.
    """

    def __init__(self, root, split: str | None = None, class_names: list[str] | None = None,
                 add_unknown: bool = False):
        self.root = Path(root)
        self.add_unknown = add_unknown
        ann_dir = self.root / "Annotations"
        img_dir = self.root / "JPEGImages"
        if not ann_dir.is_dir():
            raise UserError(f"{self.root} is not a VOC dataset: {ann_dir} is missing "
                            "(expected Annotations/ and JPEGImages/)")
        self.class_names = list(class_names) if class_names else list(VOC_CLASSES)
        self.split = split
        cdict = _class_dict(self.class_names)
        ids = self._image_ids(split, ann_dir)
        self.samples = []
        for image_id in ids:
            self.samples.append(self._read_sample(image_id, ann_dir / f"{image_id}.xml", img_dir, cdict))

    def _image_ids(self, split, ann_dir: Path) -> list[str]:
        if split is None:
            ids = sorted(p.stem for p in ann_dir.glob("*.xml"))
            if not ids:
                raise UserError(f"{ann_dir} holds no .xml annotation files (add VOC annotations or check the path)")
            return ids
        list_file = Path(split)
        if not (list_file.suffix == ".txt" and list_file.is_file()):
            list_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            sets = sorted(p.stem for p in (self.root / "ImageSets" / "Main").glob("*.txt"))
            hint = f"available: {', '.join(sets)}" if sets else "no ImageSets/Main/*.txt exist; omit --split"
            raise UserError(f"split {split!r} not found: {list_file} does not exist ({hint})")
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise UserError(f"split file {list_file} lists no image ids (one id per line)")
        return ids

    def _read_sample(self, image_id: str, xml_path: Path, img_dir: Path, cdict: dict[str, int]) -> Sample:
        if not xml_path.is_file():
            raise UserError(f"annotation {xml_path} is missing for image id {image_id!r} "
                            "(add it or remove the id from the split file)")
        try:
            tree = ET.parse(xml_path)
        except ET.ParseError as e:
            raise UserError(f"malformed XML {xml_path}: {e} (fix or remove the annotation)") from None
        ann = tree.getroot()
        fname = (ann.findtext("filename") or "").strip()
        image_path = img_dir / f"{image_id}.jpg"
        if not image_path.is_file() and fname and (img_dir / fname).is_file():
            image_path = img_dir / fname
        if not image_path.is_file():
            raise UserError(f"{xml_path}: image {image_path} is missing (add the image or remove the annotation)")
        width, height = self._size(ann, xml_path, image_path)
        boxes, labels, difficult = [], [], []
        for k, obj in enumerate(ann.findall("object")):
            name = (obj.findtext("name") or "").strip()
            if name and name not in cdict and self.add_unknown:
                cdict[name] = len(self.class_names)
                self.class_names.append(name)
            if name not in cdict or cdict[name] == 0:
                raise UserError(f"{xml_path}: object #{k} has unknown class {name!r} (known: "
                                f"{', '.join(self.class_names[1:6])}, ...; pass the right labels file)")
            x1, y1, x2, y2 = (_voc_number(obj, t, xml_path, k) for t in ("xmin", "ymin", "xmax", "ymax"))
            if x1 > x2 or y1 > y2:
                raise UserError(f"{xml_path}: object #{k} ({name}) has xmin > xmax or ymin > ymax "
                                f"({x1:g},{y1:g},{x2:g},{y2:g}); fix the box")
            if x1 < 0 or y1 < 0 or x2 > width + 1 or y2 > height + 1:
                raise UserError(f"{xml_path}: object #{k} ({name}) box ({x1:g},{y1:g},{x2:g},{y2:g}) lies outside "
                                f"the {width}x{height} image; fix the box or <size>")
            # pytorch-ssd: 1-based pixel coordinates minus one, then divided by the image size
            b = np.array([(x1 - 1) / width, (y1 - 1) / height, (x2 - 1) / width, (y2 - 1) / height], np.float32)
            boxes.append(np.clip(b, 0.0, 1.0))
            labels.append(cdict[name])
            d = (obj.findtext("difficult") or "0").strip()
            difficult.append(d not in ("", "0"))
        return Sample(
            image_id=image_id,
            image_path=image_path,
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            labels=np.asarray(labels, np.int64),
            difficult=np.asarray(difficult, bool),
            width=width,
            height=height,
        )

    @staticmethod
    def _size(ann: ET.Element, xml_path: Path, image_path: Path) -> tuple[int, int]:
        try:
            w = int(float(ann.findtext("size/width") or 0))
            h = int(float(ann.findtext("size/height") or 0))
        except ValueError:
            raise UserError(f"{xml_path}: <size> is not numeric (fix width/height)") from None
        if w > 0 and h > 0:
            return w, h
        # no usable <size>: read it from the image (rare, costs one decode)
        from ..model.preprocess import read_image

        try:
            img = read_image(image_path)
        except ValueError as e:
            raise UserError(f"{xml_path}: no <size> and {e}") from None
        return int(img.shape[1]), int(img.shape[0])


# --------------------------------------------------------------------------------------------- Open Images
class OpenImagesDataset(_Dataset):
    """pytorch-ssd's Open Images layout: ``root/sub-<split>-annotations-bbox.csv`` (normalised XMin/XMax/YMin/YMax
    and ClassName per row) and images ``root/<split>/<ImageID>.jpg``.

    Class names: ``class_names`` if given, else ``root/open-images-model-labels.txt`` if present, else
    ``BACKGROUND`` + the sorted unique ``ClassName`` values (as pytorch-ssd does). Images are ordered by ImageID.
    """

    def __init__(self, root, split: str = "train", class_names: list[str] | None = None,
                 add_unknown: bool = False):
        self.root = Path(root)
        self.split = split
        csv_path = self.root / f"sub-{split}-annotations-bbox.csv"
        if not csv_path.is_file():
            have = sorted(p.name[4:-len("-annotations-bbox.csv")] for p in self.root.glob("sub-*-annotations-bbox.csv"))
            hint = f"available splits: {', '.join(have)}" if have else "no sub-*-annotations-bbox.csv found"
            raise UserError(f"Open Images annotations {csv_path} not found ({hint})")
        rows = self._read_rows(csv_path)
        explicit = class_names is not None
        if class_names is None and (self.root / OPEN_IMAGES_LABELS).is_file():
            class_names = read_labels(self.root / OPEN_IMAGES_LABELS)
            explicit = True
        if class_names is None:
            class_names = ["BACKGROUND"] + sorted({r[5] for r in rows})
        self.class_names = list(class_names)
        cdict = _class_dict(self.class_names)
        groups: dict[str, list] = {}
        for line, image_id, x1, x2, y1, y2, name in ((r[6], *r[:6]) for r in rows):
            if name and name not in cdict and add_unknown:
                cdict[name] = len(self.class_names)
                self.class_names.append(name)
            if name not in cdict or cdict[name] == 0:
                src = "the labels given" if explicit else "the labels"
                raise UserError(f"{csv_path} row {line}: class {name!r} is not in {src} "
                                f"({len(self.class_names) - 1} classes; pass the matching labels file)")
            groups.setdefault(image_id, []).append((x1, y1, x2, y2, cdict[name]))
        self.samples = []
        img_dir = self.root / split
        for image_id in sorted(groups):
            path = img_dir / f"{image_id}.jpg"
            if not path.is_file():
                raise UserError(f"{csv_path}: image {path} is missing (add it or remove its rows)")
            g = np.asarray(groups[image_id], np.float64)
            self.samples.append(Sample(
                image_id=image_id,
                image_path=path,
                boxes=np.clip(g[:, :4], 0.0, 1.0).astype(np.float32),
                labels=g[:, 4].astype(np.int64),
                difficult=np.zeros(len(g), bool),
            ))

    @staticmethod
    def _read_rows(csv_path: Path) -> list[tuple]:
        rows = []
        try:
            with open(csv_path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = [c for c in OPEN_IMAGES_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise UserError(f"{csv_path}: missing column(s) {', '.join(missing)} "
                                    f"(need {', '.join(OPEN_IMAGES_COLUMNS)})")
                for row in reader:
                    line = reader.line_num
                    try:
                        x1, x2, y1, y2 = (float(row[c]) for c in ("XMin", "XMax", "YMin", "YMax"))
                    except (TypeError, ValueError):
                        raise UserError(f"{csv_path} row {line}: XMin/XMax/YMin/YMax must be numbers "
                                        "(fix the row)") from None
                    vals = (x1, x2, y1, y2)
                    if not all(np.isfinite(vals)) or min(vals) < -BOX_EPS or max(vals) > 1 + BOX_EPS:
                        raise UserError(f"{csv_path} row {line}: box ({x1:g},{y1:g},{x2:g},{y2:g}) is outside 0..1 "
                                        "(Open Images boxes are normalised; fix the row)")
                    if x1 > x2 or y1 > y2:
                        raise UserError(f"{csv_path} row {line}: XMin > XMax or YMin > YMax "
                                        f"({x1:g},{y1:g},{x2:g},{y2:g}); fix the row")
                    image_id = (row["ImageID"] or "").strip()
                    if not image_id:
                        raise UserError(f"{csv_path} row {line}: empty ImageID (fix the row)")
                    rows.append((image_id, x1, x2, y1, y2, (row["ClassName"] or "").strip(), line))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise UserError(f"cannot read {csv_path}: {e} (check the file is a UTF-8 CSV)") from None
        return rows


# ------------------------------------------------------------------------------------------- image folder
class ImageFolder(_Dataset):
    """A folder of images (recursive; jpg/jpeg/png/bmp) without boxes, for calibration and detection."""

    def __init__(self, root, class_names: list[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"image folder {self.root} does not exist (give a directory of .jpg/.png images)")
        paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise UserError(f"{self.root} holds no images ({'/'.join(IMAGE_EXTENSIONS)}); point to a folder of images")
        self.class_names = list(class_names) if class_names else ["BACKGROUND"]
        self.samples = [Sample(image_id=str(p.relative_to(self.root).with_suffix("")), image_path=p) for p in paths]


# ------------------------------------------------------------------------------------------- auto-detect
def dataset_format(path) -> str:
    """``"voc"``, ``"open-images"`` or ``"images"`` for a dataset directory (UserError otherwise)."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"dataset {p} is not a directory (give a VOC root, an Open Images root or an image folder)")
    if (p / "Annotations").is_dir():
        return "voc"
    if any(p.glob("sub-*-annotations-bbox.csv")):
        return "open-images"
    return "images"


def open_dataset(path, split: str | None = None, class_names: list[str] | None = None, add_unknown: bool = False):
    """Open a dataset, detecting its format: a VOC root (``Annotations/``), a pytorch-ssd Open Images root
    (``sub-<split>-annotations-bbox.csv``) or a plain folder of images.

    For Open Images without ``split``: the only split present, else ``UserError`` asking for one. ``add_unknown``:
    classes outside ``class_names`` are appended to the dataset's list instead of refused (see :class:`VOCDataset`).
    """
    fmt = dataset_format(path)
    p = Path(path)
    if fmt == "voc":
        return VOCDataset(p, split=split, class_names=class_names, add_unknown=add_unknown)
    if fmt == "open-images":
        if split is None:
            have = sorted(q.name[4:-len("-annotations-bbox.csv")] for q in p.glob("sub-*-annotations-bbox.csv"))
            if len(have) != 1:
                raise UserError(f"{p} has several Open Images splits ({', '.join(have)}); choose one with --split")
            split = have[0]
        return OpenImagesDataset(p, split=split, class_names=class_names, add_unknown=add_unknown)
    return ImageFolder(p, class_names=class_names)

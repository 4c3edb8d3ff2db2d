"""Dataset readers: VOC (real sample), Open Images CSV and image folders (built in tmp), and their errors."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_ssd.data import (
    VOC_CLASSES,
    ImageFolder,
    OpenImagesDataset,
    VOCDataset,
    dataset_format,
    open_dataset,
    read_labels,
    write_labels,
)
from edge_ssd.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared"
VOC = SHARED / "data" / "voc-sample"
HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
          "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside,id,ClassName")


def _voc_copy(tmp_path: Path, n: int = 3) -> Path:
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for xml in sorted((VOC / "Annotations").glob("*.xml"))[:n]:
        shutil.copy(xml, root / "Annotations" / xml.name)
        shutil.copy(VOC / "JPEGImages" / f"{xml.stem}.jpg", root / "JPEGImages" / f"{xml.stem}.jpg")
    return root


def _write_image(path: Path, w: int = 64, h: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def _oi(tmp_path: Path, rows: list[str], split: str = "test", images=("a", "b")) -> Path:
    root = tmp_path / "oi"
    root.mkdir(exist_ok=True)
    for i in images:
        _write_image(root / split / f"{i}.jpg")
    (root / f"sub-{split}-annotations-bbox.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return root


def _row(image_id, x1, x2, y1, y2, name):
    return f"{image_id},xclick,/m/0,1,{x1},{x2},{y1},{y2},0,0,0,0,0,/m/0,{name}"


# ------------------------------------------------------------------------------------------------- VOC
@pytest.mark.skipif(not VOC.is_dir(), reason="shared VOC sample missing")
def test_voc_sample_matches_xml_by_independent_parse():
    ds = open_dataset(VOC)
    assert isinstance(ds, VOCDataset)
    assert ds.class_names == list(VOC_CLASSES) and ds.class_names[0] == "BACKGROUND"
    assert len(ds) == len(list((VOC / "Annotations").glob("*.xml")))
    n_difficult = 0
    for s in ds:
        root = ET.parse(VOC / "Annotations" / f"{s.image_id}.xml").getroot()
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        assert (s.width, s.height) == (w, h)
        objs = root.findall("object")
        assert len(s) == len(objs) == s.boxes.shape[0] == s.difficult.shape[0]
        assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
        for k, o in enumerate(objs):
            assert VOC_CLASSES[s.labels[k]] == o.findtext("name")
            bb = [float(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
            expect = [(bb[0] - 1) / w, (bb[1] - 1) / h, (bb[2] - 1) / w, (bb[3] - 1) / h]
            np.testing.assert_allclose(s.boxes[k], np.clip(expect, 0, 1), atol=1e-6)
            assert bool(s.difficult[k]) == (o.findtext("difficult") == "1")
            n_difficult += int(s.difficult[k])
    assert n_difficult > 0  # the sample does contain difficult objects
    img = ds.load_image(0)
    assert img.dtype == np.uint8 and img.shape == (ds[0].height, ds[0].width, 3)


def test_voc_split_and_list_file(tmp_path):
    root = _voc_copy(tmp_path, 3)
    ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text(ids[1] + "\n")
    assert [s.image_id for s in VOCDataset(root, split="test")] == [ids[1]]
    lst = tmp_path / "mine.txt"
    lst.write_text(f"{ids[2]}\n{ids[0]}\n")
    assert [s.image_id for s in VOCDataset(root, split=str(lst))] == [ids[2], ids[0]]
    with pytest.raises(UserError, match="split 'trainval' not found.*available: test"):
        VOCDataset(root, split="trainval")


def test_voc_negative_image_without_objects_is_valid(tmp_path):
    root = _voc_copy(tmp_path, 1)
    xml = next((root / "Annotations").glob("*.xml"))
    tree = ET.parse(xml)
    for o in tree.getroot().findall("object"):
        tree.getroot().remove(o)
    tree.write(xml)
    s = VOCDataset(root)[0]
    assert len(s) == 0 and s.boxes.shape == (0, 4) and s.width > 0


def test_voc_without_size_reads_image(tmp_path):
    root = _voc_copy(tmp_path, 1)
    xml = next((root / "Annotations").glob("*.xml"))
    tree = ET.parse(xml)
    tree.getroot().remove(tree.getroot().find("size"))
    tree.write(xml)
    s = VOCDataset(root)[0]
    img = cv2.imread(str(s.image_path))
    assert (s.width, s.height) == (img.shape[1], img.shape[0])


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda p: p.write_text("<annotation><object>"), r"malformed XML .*\.xml"),
        (lambda p: p.write_text(p.read_text().replace("<name>", "<name>zebra", 1)), r"object #0 has unknown class"),
        (lambda p: p.write_text(_swap_x(p.read_text())), r"object #0 .* xmin > xmax"),
        (lambda p: p.write_text(p.read_text().replace("<xmax>", "<xmax>9999", 1)), r"object #0 .* outside"),
        (lambda p: p.write_text(p.read_text().replace("<ymin>", "<ymin>abc", 1)), r"<ymin> is 'abc.*', not a number"),
    ],
)
def test_voc_bad_annotations_name_the_file(tmp_path, mutate, pattern):
    root = _voc_copy(tmp_path, 2)
    xml = sorted((root / "Annotations").glob("*.xml"))[1]
    mutate(xml)
    with pytest.raises(UserError, match=pattern) as e:
        VOCDataset(root)
    assert xml.name in str(e.value) and "\n" not in str(e.value)


def _swap_x(text: str) -> str:
    root = ET.fromstring(text)
    bb = root.find("object/bndbox")
    a, b = bb.find("xmin"), bb.find("xmax")
    a.text, b.text = str(int(float(b.text)) + 5), a.text
    return ET.tostring(root, encoding="unicode")


def test_voc_missing_image_and_no_size(tmp_path):
    root = _voc_copy(tmp_path, 2)
    jpg = sorted((root / "JPEGImages").glob("*.jpg"))[0]
    jpg.unlink()
    with pytest.raises(UserError, match=rf"image .*{jpg.name} is missing"):
        VOCDataset(root)


def test_voc_corrupt_image_is_one_line_error_on_load(tmp_path):
    root = _voc_copy(tmp_path, 1)
    jpg = next((root / "JPEGImages").glob("*.jpg"))
    jpg.write_bytes(b"not a jpeg at all")
    ds = VOCDataset(root)  # size comes from the XML, so construction succeeds
    with pytest.raises(UserError, match=rf"cannot decode image .*{jpg.name}"):
        ds.load_image(0)


# ----------------------------------------------------------------------------------------- Open Images
def test_open_images_reads_groups_and_classes(tmp_path):
    rows = [_row("b", 0.1, 0.5, 0.2, 0.6, "Dog"), _row("a", 0, 1, 0, 1, "Cat"), _row("b", 0.3, 0.4, 0.3, 0.9, "Cat")]
    root = _oi(tmp_path, rows)
    ds = open_dataset(root)
    assert isinstance(ds, OpenImagesDataset) and dataset_format(root) == "open-images"
    assert ds.class_names == ["BACKGROUND", "Cat", "Dog"]
    assert [s.image_id for s in ds] == ["a", "b"]
    b = ds[1]
    np.testing.assert_allclose(b.boxes, [[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.4, 0.9]], atol=1e-7)
    assert b.labels.tolist() == [2, 1] and not b.difficult.any()
    assert ds.load_image(1).shape == (48, 64, 3) and (ds[1].width, ds[1].height) == (64, 48)


def test_open_images_labels_file_and_explicit_names(tmp_path):
    root = _oi(tmp_path, [_row("a", 0, 1, 0, 1, "Cat"), _row("b", 0, 1, 0, 1, "Dog")])
    write_labels(root / "open-images-model-labels.txt", ["BACKGROUND", "Dog", "Cat", "Bird"])
    ds = OpenImagesDataset(root, "test")
    assert ds.class_names == ["BACKGROUND", "Dog", "Cat", "Bird"] and ds[0].labels.tolist() == [2]
    with pytest.raises(UserError, match=r"row 3: class 'Dog' is not in the labels given"):
        OpenImagesDataset(root, "test", class_names=["BACKGROUND", "Cat"])


@pytest.mark.parametrize(
    "row, pattern",
    [
        (_row("a", 0.5, 0.2, 0, 1, "Cat"), r"row 2: XMin > XMax"),
        (_row("a", 0, 1, 0.6, 0.5, "Cat"), r"row 2: XMin > XMax or YMin > YMax"),
        (_row("a", 0, 1.2, 0, 1, "Cat"), r"row 2: box .* outside 0..1"),
        (_row("a", "x", 1, 0, 1, "Cat"), r"row 2: XMin/XMax/YMin/YMax must be numbers"),
        (_row("c", 0, 1, 0, 1, "Cat"), r"image .*c\.jpg is missing"),
    ],
)
def test_open_images_bad_rows(tmp_path, row, pattern):
    root = _oi(tmp_path, [row])
    with pytest.raises(UserError, match=pattern) as e:
        OpenImagesDataset(root, "test")
    assert "sub-test-annotations-bbox.csv" in str(e.value)


def test_open_images_tiny_epsilon_is_clipped(tmp_path):
    root = _oi(tmp_path, [_row("a", -0.0004, 1.0004, 0, 1, "Cat")])
    np.testing.assert_array_equal(OpenImagesDataset(root, "test")[0].boxes, [[0, 0, 1, 1]])


def test_open_images_missing_column_and_split_choice(tmp_path):
    root = tmp_path / "oi"
    _write_image(root / "train" / "a.jpg")
    (root / "sub-train-annotations-bbox.csv").write_text("ImageID,XMin,XMax,YMin,YMax\na,0,1,0,1\n")
    with pytest.raises(UserError, match="missing column.*ClassName"):
        OpenImagesDataset(root, "train")
    (root / "sub-test-annotations-bbox.csv").write_text("x")
    with pytest.raises(UserError, match="several Open Images splits.*--split"):
        open_dataset(root)
    with pytest.raises(UserError, match="available splits: test, train"):
        OpenImagesDataset(root, "validation")


# --------------------------------------------------------------------------------------- folders, labels
def test_image_folder_recursive(tmp_path):
    _write_image(tmp_path / "x" / "b.png")
    _write_image(tmp_path / "a.jpg")
    _write_image(tmp_path / "c.BMP")
    (tmp_path / "notes.txt").write_text("hi")
    ds = open_dataset(tmp_path)
    assert isinstance(ds, ImageFolder) and dataset_format(tmp_path) == "images"
    assert [s.image_id for s in ds] == ["a", "c", "x/b"]
    assert all(len(s) == 0 for s in ds) and ds.load_image(2).shape == (48, 64, 3)
    (tmp_path / "x" / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        ImageFolder(tmp_path / "x" / "empty")


def test_labels_roundtrip_and_errors(tmp_path):
    p = write_labels(tmp_path / "labels.txt", ["BACKGROUND", "face"])
    assert read_labels(p) == ["BACKGROUND", "face"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UserError, match="empty"):
        read_labels(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="cannot read labels file"):
        read_labels(tmp_path / "nope.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(UserError, match="cannot read labels file"):
        read_labels(tmp_path / "bin.txt")
    with pytest.raises(UserError, match="not a directory"):
        open_dataset(tmp_path / "labels.txt")


@pytest.mark.skipif(not (SHARED / "models" / "ultralight-face").is_dir(), reason="shared model missing")
def test_read_real_labels_file():
    assert read_labels(SHARED / "models" / "ultralight-face" / "voc-model-labels.txt") == ["BACKGROUND", "face"]

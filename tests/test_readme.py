"""The README cannot rot: every command in its ``sh`` blocks is either run here, verbatim, in a sandbox (a temp
working directory with the repo's .venv/deploy/convert linked in, the user's own files mapped to ../shared, and
a temp $HOME), or mapped to
the test that performs the same steps (commands that need root on a device, the internet, or minutes of work
another test already does)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# command regex -> the test that performs the same steps ("path::function")
MAPPED = {
    r"^make demo$": "tests/test_demo.py::test_demo_end_to_end",
    r"^make test$": "tests/test_readme.py::test_ci_runs_the_readme_test_command",
    r"edge-ssd detect edge-ssd-demo/": "tests/test_demo.py::test_demo_end_to_end",
    r"edge-ssd fetch-model ": "tests/test_fetch.py::test_cli_fetch_model",
    r"^sudo deploy/install\.sh$": "tests/test_install.py::test_every_written_file",
    r"edge-ssd config check /etc/edge-ssd/": "tests/test_config.py::test_cli_check_example_config_passes",
    r"edge-ssd doctor --config": "tests/test_doctor.py::test_cli_json_all_good",
    r"^mosquitto_sub ": "tests/test_daemon_e2e.py::test_detections_arrive_exactly_as_produced_with_notify",
    r"edge-ssd watch ": "tests/test_watch.py::test_watch_once",
    r"edge-ssd convert .* --postprocess-model": "tests/test_postprocess_model.py::test_face_file_as_consumers_see_it",
    r"edge-ssd keygen ": "tests/test_fleet_archive.py::test_cli_errors_are_one_line",
    r"edge-ssd push-bundle ": "tests/test_rollout.py::test_push_bundle_cli_rolls_out_to_three_daemons",
    r"bench/fleet_load\.py ": "tests/test_fleet_load.py::test_short_fleet_load_loses_nothing",
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    cmds: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        cur = ""
        for line in block.splitlines():
            if cur:
                cur += " " + line.strip()
            else:
                cur = line.strip()
            if cur.endswith("\\"):
                cur = cur[:-1].rstrip()
                continue
            if cur and not cur.startswith("#"):
                cmds.append(cur)
            cur = ""
    return cmds


def mapping(cmd: str) -> str | None:
    for pat, target in MAPPED.items():
        if re.search(pat, cmd):
            return target
    return None


def test_readme_has_commands_and_every_mapping_points_at_a_real_test():
    cmds = readme_commands()
    assert len(cmds) >= 10
    # written for someone who clones the repository alone: ../shared is not beside their checkout
    assert not [c for c in cmds if "../shared" in c]
    for cmd in cmds:
        target = mapping(cmd)
        if target is None:
            continue
        path, func = target.split("::")
        src = (ROOT / path).read_text()
        assert re.search(rf"^def {func}\(", src, flags=re.M), f"{cmd!r} maps to missing test {target}"
    # every mapping is used, so the table does not outlive the README
    for pat in MAPPED:
        assert any(re.search(pat, c) for c in cmds), f"mapping {pat!r} matches no README command"


def test_ci_runs_the_readme_test_command():
    cmds = readme_commands()
    assert "make test" in cmds
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: setup$", make, flags=re.M) and "pytest" in make and "scripts/setup.sh" in make


def _sandbox(tmp_path: Path) -> tuple[Path, dict]:
    (tmp_path / "shared").symlink_to(SHARED)
    work = tmp_path / "work"
    work.mkdir()
    # the README names the user's own files; here they are the shared sample data
    for name, target in (("my-photos", "data/photos"), ("my-faces", "data/faces"), ("my-voc", "data/voc-sample"),
                         ("version-slim-320.onnx", "models/ultralight-face/version-slim-320.onnx"),
                         ("voc-model-labels.txt", "models/ultralight-face/voc-model-labels.txt")):
        (work / name).symlink_to(SHARED / target)
    for name in (".venv", "deploy", "convert", "systemd", "docs", "pyproject.toml", "edge_ssd"):
        (work / name).symlink_to(ROOT / name)
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("EDGE_SSD_CACHE", None)
    # what `edge-ssd fetch-model mb1-ssd-voc` would have downloaded: an mb1-ssd VOC checkpoint (random weights
    # with the real key layout; the download itself is tested against a local server in test_fetch.py)
    import torch

    from edge_ssd.nets import create_net

    # the paths fetch-model itself writes (so a README that names other files fails here)
    from edge_ssd.nets.fetch import cached_paths

    weights, labels = cached_paths("mb1-ssd-voc", home / ".cache" / "edge-ssd" / "models")
    weights.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(create_net("mb1-ssd", 21).state_dict(), weights)
    from edge_ssd.data.datasets import VOC_CLASSES

    labels.write_text("\n".join(VOC_CLASSES) + "\n")
    return work, env


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    work, env = _sandbox(tmp_path)
    ran = []
    for cmd in readme_commands():
        if mapping(cmd):
            continue
        run = cmd
        if run.startswith("sudo "):
            if os.geteuid() != 0:
                pytest.skip("the README's sudo commands need root")
            run = run[len("sudo "):] if not shutil.which("sudo") else run
        r = subprocess.run(["bash", "-c", run], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"README command failed: {cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, f"{cmd}\n{r.stderr[-3000:]}"
        ran.append(cmd)
    assert len(ran) >= 8
    # and the outputs they promise exist
    assert (work / "mb1-ssd.onnx").is_file() and (work / "map.json").is_file()
    assert (work / "face.bundle" / "manifest.json").is_file() and (work / "face.bundle" / "report.md").is_file()
    assert any((work / "annotated").iterdir())
    assert list((work / "runs" / "shapes").glob("*.pth"))

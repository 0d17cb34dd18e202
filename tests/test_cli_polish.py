"""The command line as a whole: ``--version``, flags that look like flags, one description per
option, and files that are empty or of the wrong kind named as such (one line, exit code 2).

Every command runs in this process through the real console entry point, as a user runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer.main
from rasters import UTM, textured, write_tif
from segnext_geo.cli.app import app
from weights_files import run_cli

import segnext_geo


def _commands() -> list[tuple[list[str], Any]]:
    """Every leaf command of the app as ``(["models", "list"], click command)``."""
    found: list[tuple[list[str], Any]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            found.append((path, cmd))

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = _commands()


def test_the_command_tree_is_what_the_readme_lists() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert names == {
        "info",
        "batch",
        "demo",
        "export",
        "predict",
        "preview",
        "prepare-isaid",
        "train",
        "evaluate",
        "vectorize",
        "models list",
        "models info",
        "models download",
        "models import",
    }


def test_version(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_cli(["--version"], capfd, monkeypatch)
    assert (code, out, err) == (0, f"segnext-geo {segnext_geo.__version__}\n", "")
    code, out, _ = run_cli(["--help"], capfd, monkeypatch)
    assert code == 0 and "--version" in out


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_boolean_options_are_flags_in_every_command(
    path: list[str], cmd: Any, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A yes/no option is ``--flag`` (no value, no ``<bool>``); ``--flag true`` is refused, naming the value."""
    flags = [p for p in cmd.params if getattr(p, "is_flag", False)]
    bools = [p for p in cmd.params if p.param_type_name == "option" and isinstance(p.default, bool)]
    assert bools == flags, [p.opts for p in bools if p not in flags]
    for p in flags:
        assert p.opts[0].startswith("--") and not p.secondary_opts, p.opts  # one spelling: --flag
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli([*path, "--help"], capfd, monkeypatch)
    assert code == 0 and "Usage:" in out
    assert "<bool>" not in out and "BOOLEAN" not in out
    for p in flags:
        assert p.opts[0] in out
    if flags:
        code, _, err = run_cli([*path, flags[0].opts[0], "true"], capfd, monkeypatch)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_simplify_is_described_in_the_same_words_everywhere() -> None:
    helps = {
        " ".join(path): next(p.help for p in cmd.params if "--simplify" in getattr(p, "opts", ()))
        for path, cmd in COMMANDS
        if any("--simplify" in getattr(p, "opts", ()) for p in cmd.params)
    }
    assert set(helps) == {"predict", "batch", "vectorize"}
    tolerance = "tolerance in metres, or pixels with 'px' (2.5, 1.5px; 0: off)."
    assert helps["vectorize"].endswith(tolerance)
    assert helps["predict"] == helps["batch"] == f"Vector output: {helps['vectorize']}"


def test_predict_and_batch_share_every_vector_option() -> None:
    """batch writes polygons as predict does: the same vector flags, described in the same words."""
    opts = {
        " ".join(path): {p.opts[0]: p.help for p in cmd.params if p.param_type_name == "option"}
        for path, cmd in COMMANDS
    }
    vector = {"--min-area", "--fill-holes-below", "--simplify", "--connectivity", "--keep-background"}
    assert vector <= set(opts["predict"]) and vector <= set(opts["batch"])
    assert all(opts["predict"][f] == opts["batch"][f] for f in vector)


# --- empty files and files of the wrong kind ---------------------------------------------------


def _scene(tmp: Path) -> Path:
    return write_tif(tmp / "scene.tif", textured((3, 48, 64)))


def _one_line(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


EMPTY_CASES = [
    ("scene", ["predict", "{empty}.tif", "-c", "{ckpt}", "-o", "{tmp}/o.tif"], "{empty}.tif: is empty (0 bytes)"),
    (
        "checkpoint",
        ["predict", "{scene}", "-c", "{empty}.pth", "-o", "{tmp}/o.tif"],
        "{empty}.pth: checkpoint file is empty (0 bytes)",
    ),
    ("info", ["info", "{empty}.pth"], "{empty}.pth: checkpoint file is empty (0 bytes)"),
    ("vectorize mask", ["vectorize", "{empty}.tif", "-o", "{tmp}/o.gpkg"], "{empty}.tif: is empty (0 bytes)"),
    (
        "vectorize probs",
        ["vectorize", "{mask}", "--probs", "{empty}.tif", "-o", "{tmp}/o.gpkg"],
        "{empty}.tif: is empty (0 bytes)",
    ),
    ("config", ["train", "--config", "{empty}.yaml"], "{empty}.yaml: config file is empty (0 bytes)"),
    (
        "evaluate config",
        ["evaluate", "--config", "{empty}.yaml", "--checkpoint", "{ckpt}"],
        "{empty}.yaml: config file is empty (0 bytes)",
    ),
    (
        "preview scene",
        ["preview", "{empty}.tif", "--mask", "{mask}", "--out", "{tmp}/p.png"],
        "{empty}.tif: is empty (0 bytes)",
    ),
    (
        "preview mask",
        ["preview", "{scene}", "--mask", "{empty}.tif", "--out", "{tmp}/p.png"],
        "{empty}.tif: is empty (0 bytes)",
    ),
    (
        "preview truth",
        ["preview", "{scene}", "--mask", "{mask}", "--truth", "{empty}.tif", "--out", "{tmp}/p.png"],
        "{empty}.tif: is empty (0 bytes)",
    ),
    (
        "preview polygons",
        ["preview", "{scene}", "--polygons", "{empty}.gpkg", "--out", "{tmp}/p.png"],
        "{empty}.gpkg: is empty (0 bytes)",
    ),
    (
        "models import",
        ["models", "import", "segnext_t_isaid", "{empty}.pkl"],
        "{empty}.pkl: is not segnext_t_isaid (checkpoint file is empty (0 bytes))",
    ),
]


@pytest.mark.parametrize(("what", "argv", "message"), EMPTY_CASES, ids=[c[0] for c in EMPTY_CASES])
def test_an_empty_file_is_called_empty(
    what: str,
    argv: list[str],
    message: str,
    tmp_path: Path,
    tiny_checkpoint: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mask = write_tif(tmp_path / "mask.tif", np.ones((1, 48, 64), np.uint8))
    empty = tmp_path / "empty"
    for suffix in (".tif", ".pth", ".yaml", ".gpkg", ".pkl"):
        empty.with_suffix(suffix).write_bytes(b"")
    subs = {"tmp": tmp_path, "empty": empty, "ckpt": tiny_checkpoint, "scene": _scene(tmp_path), "mask": mask}
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli([a.format(**subs) for a in argv], capfd, monkeypatch)
    _one_line(code, err, message.format(**subs))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary


def test_an_empty_area_of_interest_is_called_empty(tmp_path: Path) -> None:
    from segnext_geo.errors import UserError
    from segnext_geo.raster.aoi import read_aoi

    (tmp_path / "aoi.geojson").write_bytes(b"")
    with pytest.raises(UserError, match=r"^--aoi: .*aoi\.geojson: is empty \(0 bytes\)$"):
        read_aoi(tmp_path / "aoi.geojson")


@pytest.mark.parametrize("command", ["predict", "info", "export", "evaluate"])
def test_a_geotiff_given_as_a_checkpoint_is_called_a_raster(
    command: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scene = _scene(tmp_path)
    argv = {
        "predict": ["predict", str(scene), "-c", str(scene), "-o", str(tmp_path / "o.tif")],
        "info": ["info", str(scene)],
        "export": ["export", str(scene), "--out", str(tmp_path / "m.onnx")],
        "evaluate": [
            "evaluate",
            "--config",
            str(Path(__file__).resolve().parents[1] / "configs" / "cpu_smoke.yaml"),
            "--checkpoint",
            str(scene),
            "--out",
            str(tmp_path / "m.json"),
        ],
    }[command]
    code, _, err = run_cli(argv, capfd, monkeypatch)
    _one_line(code, err, f"{scene}: is a TIFF image (a raster?), not a model checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


@pytest.mark.parametrize("kind", ["polygons", "mask", "no-class-id"])
def test_preview_of_a_file_that_is_not_what_it_claims(
    kind: str, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    scene = _scene(tmp_path)
    bad = tmp_path / ("bad.tif" if kind == "mask" else "bad.gpkg")
    if kind == "no-class-id":
        gpd.GeoDataFrame({"name": ["a"]}, geometry=[box(500_000, 5_999_990, 500_010, 6_000_000)], crs=UTM).to_file(bad)
    else:
        bad.write_text("hello, I am text\n")
    flag = "--mask" if kind == "mask" else "--polygons"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(
        ["preview", str(scene), flag, str(bad), "--out", str(tmp_path / "p.png")], capfd, monkeypatch
    )
    problem = {
        "polygons": "not a vector file GDAL can read",
        "mask": "not a raster GDAL can read",
        "no-class-id": "has no class_id column",
    }[kind]
    _one_line(code, err, str(bad), problem)
    assert sorted(p.name for p in tmp_path.iterdir()) == before

"""`benchmarks/run_all.py`: runs every benchmark script, reports failures and gaps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "run_all", Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

RECORDER = """import json, sys
from pathlib import Path
Path(__file__).with_suffix('.args').write_text(json.dumps(sys.argv[1:]))
# takes --data and --quick
sys.exit({code})
"""


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_speed.py").write_text(RECORDER.format(code=0))
    (folder / "bench_train.py").write_text(RECORDER.format(code=3).replace(" and --quick", ""))
    (folder / "bench_download.py").write_text(RECORDER.format(code=0).replace("--data and ", ""))
    monkeypatch.setattr(bench, "benchmarks_dir", lambda: folder)
    return folder


def args_of(folder: Path, name: str) -> list[str]:
    return json.loads((folder / f"bench_{name}.args").read_text())


def test_runs_scripts_and_passes_quick_only_where_taken(scripts: Path, tmp_path: Path) -> None:
    data, dataset = str(tmp_path / "data"), str(tmp_path / "dataset")
    names = ["train", "speed", "quality", "download"]
    outcomes = bench.run_all(names, tmp_path / "data", quick=True, dataset=tmp_path / "dataset")
    assert outcomes == {"train": "failed (exit 3)", "speed": "ok", "quality": "missing",
                        "download": "ok"}
    assert args_of(scripts, "speed") == ["--data", data, "--quick"]
    assert args_of(scripts, "train") == ["--data", dataset]  # reads a prepared dataset
    assert args_of(scripts, "download") == [data, "--quick"]  # takes DATA as an argument


def test_main_exit_code_and_selection(scripts: Path) -> None:
    assert bench.main(["--only", "speed"]) == 0
    assert not (scripts / "bench_train.args").exists()
    assert bench.main(["--only", "speed", "train"]) == 1
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--skip", "nope"])
    assert exit_info.value.code == 2


def test_run_all_runs_every_script_in_benchmarks() -> None:
    folder = Path(bench.__file__).parent
    scripts = {p.stem.removeprefix("bench_") for p in folder.glob("bench_*.py")}
    assert scripts == set(bench.BENCHMARKS)  # a script make bench skips is not a benchmark

"""fedbench-report on damaged and hostile folders: every bad run folder is skipped with a
warning naming it, link loops end, and links out of the given folders are not followed."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import TINY_MLP, run_cli, run_report

TINY = TINY_MLP


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    res = run_cli([*TINY, f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    return root / "run"


def test_damaged_and_hostile_folders_are_skipped_by_name(one_run, tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    shutil.copytree(one_run, root / "good")
    bad = {}
    # truncated parquet (a copy cut short)
    d = shutil.copytree(one_run, root / "truncated")
    pq = d / "metrics.parquet"
    pq.write_bytes(pq.read_bytes()[:100])
    bad["truncated"] = "unreadable metrics"
    # non-numeric cells in the CSV (no parquet)
    d = shutil.copytree(one_run, root / "text_cells")
    (d / "metrics.parquet").unlink()
    lines = (d / "metrics.csv").read_text().splitlines()
    head = lines[0].split(",")
    cells = lines[1].split(",")
    cells[head.index("accuracy")] = "abc"
    (d / "metrics.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    bad["text_cells"] = "non-numeric"
    # summary.json that is not an object
    d = shutil.copytree(one_run, root / "list_summary")
    (d / "summary.json").write_text(json.dumps([1, 2, 3]))
    bad["list_summary"] = "not a JSON object"
    # a link loop, and a link to a complete run outside the given folder
    (root / "nest").mkdir()
    (root / "nest" / "loop").symlink_to(root, target_is_directory=True)
    outside = tmp_path / "elsewhere"
    shutil.copytree(one_run, outside / "foreign")
    (root / "escape").symlink_to(outside, target_is_directory=True)

    res = run_report(
        [str(root), "--out", str(tmp_path / "report"), "--no-figures"], cwd=tmp_path, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 run(s), 1 configuration(s)" in res.stderr
    for name, why in bad.items():
        line = next(
            (x for x in res.stderr.splitlines() if f"skipping {root / name}" in x or f"/{name}:" in x), ""
        )
        assert why in line, (name, res.stderr)
    assert "escape: a link to" in res.stderr and "outside the given folders" in res.stderr
    assert "loop: a link to a folder already searched" in res.stderr
    assert "foreign" not in (tmp_path / "report" / "runs.csv").read_text()

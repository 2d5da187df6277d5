"""benchmarks/digits_nfe_table.py (the digits card's quality-per-NFE table): every flag checked at the door."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import digits_nfe_table  # noqa: E402
from conftest import assert_refused  # noqa: E402

BAD = [
    (["--seed", "-1"], "--seed"),
    (["--rmse-samples", "0"], "--rmse-samples"),
    (["--num-samples", "5"], "--num-samples"),
    (["--num-samples", "4001"], "--num-samples"),
    (["--guidance-scale", "nan"], "--guidance-scale"),
    (["--guidance-scale", "0.5"], "--guidance-scale"),
    (["--threads", "0"], "--threads"),
    (["--model", "/nonexistent/folder"], "/nonexistent/folder"),
    (["--bogus"], "--bogus"),
]


@pytest.mark.parametrize("argv, named", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_exit_2_naming_the_flag(argv, named, tmp_path, capsys):
    err = assert_refused(digits_nfe_table.main, [*argv, "--json", str(tmp_path / "table.json")], tmp_path, capsys,
                         digits_nfe_table.PROG)
    assert named in err, err


def test_json_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = assert_refused(digits_nfe_table.main, ["--json", str(tmp_path / "file" / "t.json")], tmp_path, capsys,
                         digits_nfe_table.PROG)
    assert "--json" in err, err

"""benchmarks/digits_nfe_table.py (the digits card's quality-per-NFE table): every flag checked at the door."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import digits_nfe_table  # noqa: E402

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
    out = tmp_path / "table.json"
    code = digits_nfe_table.main([*argv, "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_json_under_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert digits_nfe_table.main(["--json", str(blocker / "t.json")]) == 2
    assert "--json" in capsys.readouterr().err

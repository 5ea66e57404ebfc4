"""``score`` runs validate-submission's checks; bounded mask decompression (issue 16, items 9 and 10)."""

from __future__ import annotations

import base64
import logging
import tracemalloc
import zlib

import numpy as np
import pytest

from hpa_kernel.submission.rle import decode_mask, encode_mask
from hpa_kernel.submission import check_submission, read_sample_submission


def _bomb(n_bytes: int = 64_000_000) -> str:
    return base64.b64encode(zlib.compress(b"0" * n_bytes, 9)).decode("ascii")


def test_zlib_bomb_is_refused_without_inflating_it():
    bomb = _bomb()
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="zlib bomb"):
            decode_mask(bomb, 64, 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"decoding a {len(bomb)}-character bomb allocated {peak} bytes"


def test_the_bound_holds_for_the_worst_masks():
    from hpa_kernel.submission.rle import max_counts_length

    for shape in [(1, 1), (3, 5), (64, 64), (31, 17)]:
        checker = (np.indices(shape).sum(0) % 2).astype(bool)
        stripes = (np.arange(shape[0] * shape[1]).reshape(shape, order="F") % 3 == 0)
        for mask in (checker, stripes, np.ones(shape, bool), np.zeros(shape, bool)):
            text = zlib.decompress(base64.b64decode(encode_mask(mask)))
            assert len(text) <= max_counts_length(*shape)
            assert np.array_equal(decode_mask(encode_mask(mask), *shape), mask)


def test_validator_reports_a_bomb_as_a_problem(synthetic_competition, tmp_path):
    comp = synthetic_competition
    sample = read_sample_submission(comp.sample_submission)
    lines = ["ID,ImageWidth,ImageHeight,PredictionString"]
    for k, (i, w, h) in enumerate(zip(sample["ID"], sample["ImageWidth"], sample["ImageHeight"])):
        lines.append(f"{i},{w},{h}," + (f"0 0.5 {_bomb(20_000_000)}" if k == 0 else ""))
    path = tmp_path / "bomb.csv"
    path.write_text("\n".join(lines) + "\n")
    report = check_submission(path, comp.sample_submission)
    assert len(report.problems) == 1 and "zlib bomb" in str(report.problems[0])


def _score(args, caplog):
    from hpa_kernel.cli import main

    with caplog.at_level(logging.WARNING):
        rc = main(["score", *args])
    return rc, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _write_submission(comp, path, conf="0.5", crlf=False, drop_last=False, extra_row=None, bom=False):
    sample = read_sample_submission(comp.sample_submission)
    mask = encode_mask(np.ones((int(sample["ImageHeight"].iloc[0]), int(sample["ImageWidth"].iloc[0])), bool))
    rows = [f"{i},{w},{h},3 {conf} {mask}" if k == 0 else f"{i},{w},{h},"
            for k, (i, w, h) in enumerate(zip(sample["ID"], sample["ImageWidth"], sample["ImageHeight"]))]  # fmt: skip
    if drop_last:
        rows = rows[:-1]
    if extra_row:
        rows.append(extra_row)
    end = "\r\n" if crlf else "\n"
    text = end.join(["ID,ImageWidth,ImageHeight,PredictionString", *rows]) + end
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


@pytest.mark.parametrize(
    "case, kwargs",
    [
        ("negative confidence", {"conf": "-0.5"}),
        ("confidence above 1", {"conf": "1.5"}),
        ("missing row", {"drop_last": True}),
        ("unknown id", {"extra_row": "not-an-id,512,512,"}),
        ("crlf", {"crlf": True}),
        ("bom", {"bom": True}),
        ("five fields", {"extra_row": "x,512,512,,extra"}),
    ],
)
def test_score_refuses_what_validate_submission_rejects(synthetic_competition, tmp_path, caplog, case, kwargs):
    path = _write_submission(synthetic_competition, tmp_path / "s.csv", **kwargs)
    assert not check_submission(path, synthetic_competition.sample_submission).ok
    rc, errors = _score(["--submission", str(path), "--data", str(synthetic_competition.root)], caplog)
    assert rc == 1, case
    assert any(str(path) in e and "validate-submission" in e for e in errors), errors
    assert not any("ID 256" in e or "ID 512" in e for e in errors)


def test_score_accepts_a_valid_file_and_lenient_scores_a_bad_one(synthetic_competition, tmp_path, caplog, capsys):
    good = _write_submission(synthetic_competition, tmp_path / "good.csv")
    rc, _ = _score(["--submission", str(good), "--data", str(synthetic_competition.root), "--json"], caplog)
    assert rc == 0 and '"map"' in capsys.readouterr().out.lower()
    bad = _write_submission(synthetic_competition, tmp_path / "bad.csv", crlf=True)
    rc, warnings = _score(["--submission", str(bad), "--data", str(synthetic_competition.root), "--lenient"], caplog)
    assert rc == 0 and any("CRLF" in w for w in warnings)


@pytest.mark.parametrize("content", [b"", b"ID,ImageWidth,ImageHeight,PredictionString\n", b"\xff\xfe\x00bad"])
def test_score_names_the_file_when_it_is_empty_or_not_utf8(synthetic_competition, tmp_path, caplog, content):
    path = tmp_path / "odd.csv"
    path.write_bytes(content)
    rc, errors = _score(["--submission", str(path), "--data", str(synthetic_competition.root)], caplog)
    assert rc == 1 and any(str(path) in e for e in errors)


def test_a_row_claiming_a_huge_size_is_not_decoded(synthetic_competition, tmp_path):
    """The bound follows the row's size: a row claiming 100000 x 100000 must not raise it."""
    from hpa_kernel.metric import score_submission

    comp = synthetic_competition
    sample = read_sample_submission(comp.sample_submission)
    lines = ["ID,ImageWidth,ImageHeight,PredictionString"]
    for k, (i, w, h) in enumerate(zip(sample["ID"], sample["ImageWidth"], sample["ImageHeight"])):
        lines.append(f"{i},100000,100000,0 0.5 {_bomb(40_000_000)}" if k == 0 else f"{i},{w},{h},")
    path = tmp_path / "huge.csv"
    path.write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    try:
        report = check_submission(path, comp.sample_submission)
        with pytest.raises(ValueError, match="times the pixels of its GT"):
            score_submission(path, comp.truth_cells("test"), comp.truth_masks("test"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert any("masks not checked" in str(p) for p in report.problems)
    assert peak < 30_000_000, peak

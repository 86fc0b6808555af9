import pytest

from course_lib.metrics import exact_match_report, json_exact_match, parse_json

REF = {"name": "Ana", "age": 34, "city": None, "job": "nurse"}


def test_exact_match():
    assert json_exact_match('{"name": "Ana", "age": 34, "city": null, "job": "nurse"}', REF)
    assert json_exact_match(' {"job": "nurse", "city": null, "age": 34, "name": "Ana"}\n', REF)
    assert not json_exact_match('{"name": "Ana", "age": "34", "city": null, "job": "nurse"}', REF)
    assert not json_exact_match('{"name": "Ana"}', REF)
    assert parse_json("[1]") is None and parse_json("not json") is None


def test_report_counts_parse_failures_as_wrong():
    report = exact_match_report(['{"name": "Ana", "age": 34, "city": null, "job": "nurse"}', "oops", "{}"], [REF] * 3)
    assert (report.n, report.correct, report.parse_failures) == (3, 1, 1)
    assert report.accuracy == pytest.approx(1 / 3)
    assert "1/3" in str(report)


def test_report_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match_report(["a", "b"], [REF])

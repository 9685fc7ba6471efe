"""`drover host metrics` pieces that need no appliance: the sparkline and the --since check."""

from __future__ import annotations

import argparse

import pytest

from appliance.cli.host_cmd import host_metrics, sparkline
from appliance.errors import UsageError


def test_sparkline_spans_its_range() -> None:
    assert sparkline([]) == ""
    assert sparkline([5, 5, 5]) == "▁▁▁"
    line = sparkline([0, 1, 2, 3, 4, 5, 6, 7])
    assert line == "▁▂▃▄▅▆▇█"
    assert sparkline([10, 0]) == "█▁"


@pytest.mark.parametrize("since", ["yesterday", "5", "-", "m5", ""])
def test_bad_since_is_a_usage_error_before_any_request(since: str) -> None:
    args = argparse.Namespace(host="n1", series=[], since=since, json=False)
    with pytest.raises(UsageError, match="--since"):
        host_metrics(args)

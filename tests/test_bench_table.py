"""The `make bench` summary table: figures with their baseline, a dash and the reason otherwise."""

from __future__ import annotations

from bench import table


def test_a_figure_reads_with_its_baseline_and_a_gap_says_why() -> None:
    merged = {
        "finished_at": "2026-11-30T10:00:00Z",
        "taskengine": {"tasks_per_s": 0.91, "ratio_queue_vs_raw": 0.963, "finished_at": "2026-11-30T10:00:00Z"},
        "monitor": {"error": "collectd not installed", "finished_at": "2026-11-30T10:00:00Z"},
        "ui": {"hosts_page_ms": 27.0, "finished_at": "2026-11-29T09:00:00Z"},
        "machine": {"cpus": 2, "python": "3.11.7"},
    }
    out = table.render(merged)
    assert "| tasks (start+stop) through the queue | 0.91/s | 0.963x raw libvirt calls |" in out
    assert "| monitor values received (Sign) | — | section monitor failed: collectd not installed |" in out
    assert "| node image payload | — | section image not run |" in out
    # A figure without its comparison is not shown half: the row names the missing figure.
    assert "| hosts page, 1,000 hosts (p95) | — | no figure 'hosts_page/vs_health_median' |" in out
    # A section kept from an earlier run says when it ran.
    merged["ui"] = {
        "hosts_page_ms": 27.0,
        "hosts_page": {"vs_health_median": 9.5},
        "finished_at": "2026-11-29T09:00:00Z",
    }
    assert (
        "| hosts page, 1,000 hosts (p95) | 27 ms | 9.5x health (median) (run 2026-11-29T09:00:00Z) |"
        in table.render(merged)
    )
    assert "on 2 CPUs, Python 3.11.7" in out

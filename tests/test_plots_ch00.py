"""The gate heatmap's "common" / "task-specific" headers are readable at the book's size
(chapter 00's reader found them too small): at least 8 points."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cgc_edu.course import plots  # noqa: E402
from fixtures.gate_data import synthetic_recording  # noqa: E402


def test_gate_heatmap_headers_are_at_least_8_points():
    fig = plots.gate_heatmap(synthetic_recording(), module=0, step=-1)
    try:
        headers = [t for t in fig.axes[0].texts if t.get_text() in ("common", "task-specific")]
        assert {t.get_text() for t in headers} == {"common", "task-specific"}
        assert all(t.get_fontsize() >= 8 for t in headers)
    finally:
        plt.close(fig)

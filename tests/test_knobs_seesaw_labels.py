"""Chapter 03 numbers its two tasks 0 and 1, as the code does: the seesaw widget says the same."""
import numpy as np

from cgc_edu.course.knobs import SeesawKnobs


def test_seesaw_widget_numbers_the_tasks_from_zero():
    front = {"weights": [0.2, 0.5, 0.8], "losses": np.array([[0.3, 0.1], [0.2, 0.2], [0.1, 0.3]]),
             "alone": np.array([0.09, 0.08]), "correlation": 0.0}
    knobs = SeesawKnobs(front=front)
    assert knobs.weight.description == "w (task 0)"
    assert "task 0 0.200, task 1 0.200" in knobs.state["summary"]
    ax = knobs.figure.axes[0]
    assert ax.get_xlabel().startswith("task 0") and ax.get_ylabel().startswith("task 1")
    assert "task 2" not in knobs.state["summary"] + ax.get_xlabel() + ax.get_ylabel()

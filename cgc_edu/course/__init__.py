"""The course's helpers: what the notebooks draw and turn: gate recording (`recording`),
plots (`plots`), architecture diagrams (`diagrams`), the gate inspector (`widgets`), the
knob widgets (`knobs`), gate overrides (`counterfactual`), self-checking exercises
(`exercises`) and the one-minute demo (`demo`). Import the module you need: the widgets
pull in ipywidgets.

Taught in: notebooks/08_gate_lab.ipynb.
"""

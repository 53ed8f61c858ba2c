# The browser test's fixture notebook is driven in JupyterLab by tests/test_browser_lab.py;
# it is not a chapter, so nbval does not collect it.
collect_ignore = ["fixtures"]

"""``pckd analyze``: the paper's figures and the field's analysis plots from run folders (work in progress: the
numeric functions and plots of centres, correlation and calibration; the command is not wired yet)."""

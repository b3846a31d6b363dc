"""``pckd analyze``: the paper's figures (Figs. 1, 7, 8) and the field's analysis plots (class-correlation
difference, calibration) from run folders or checkpoints; see docs/analyze.md."""

"""``pckd analyze``: the paper's figures and the field's analysis plots from run folders. Work in progress:
the numeric functions of every figure and the centres/correlation/calibration/t-SNE plots; the command is not wired
yet (docs/analyze.md)."""

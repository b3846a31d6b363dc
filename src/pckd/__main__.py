"""Allows `python -m pckd ...` (and `torchrun -m pckd train ...`)."""

from pckd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

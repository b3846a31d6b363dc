"""docs/adding-a-method.md: its worked example runs exactly as written and trains through the one trainer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding-a-method.md"

CHECK = r'''
import sys, json
sys.path.insert(0, sys.argv[1])
import torch
import example_method as m
from pckd.config import load_config
from pckd.engine.trainer import Trainer
from pckd.errors import UserError

# the loss against a naive loop
s, t = torch.randn(3, 4), torch.randn(3, 4)
naive = [sum((float(s[i, k]) - float(t[i, k])) ** 2 for k in range(4)) / 4 for i in range(3)]
assert torch.allclose(m.logit_mse_per_sample(s, t), torch.tensor(naive), atol=1e-6)
# the declared rule names the key
try:
    load_config(None, ["method=logit_mse", "logit_mse.mse_weight=-1"])
    raise SystemExit("no error for a negative weight")
except UserError as exc:
    assert "'logit_mse.mse_weight'=-1.0 must be >= 0" in str(exc), exc
cfg = load_config(None, ["method=logit_mse", "student.arch=resnet8", "teacher.arch=resnet8",
    f"teacher.checkpoint={sys.argv[2]}", "data.name=digits", "data.train_limit=32", "data.test_limit=16",
    "train.epochs=1", "train.batch_size=16", "train.device=cpu", "train.progress=false", "train.log_interval=1",
    "train.eval_teacher=false", f"output_dir={sys.argv[3]}", "logit_mse.weighting.mode=preview"])
summary = Trainer(cfg).fit()
steps = [json.loads(l) for l in open(f"{sys.argv[3]}/metrics.jsonl") if '"step"' in l]
assert all("train/mse" in r and "train/ce" in r for r in steps), steps[0]
print("ok", summary["epochs"])
'''


def test_worked_example_runs_as_written(tmp_path: Path, random_teacher: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "the page has no python example"
    (tmp_path / "example_method.py").write_text(blocks[0])
    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path), str(random_teacher), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok 1")

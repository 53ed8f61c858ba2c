"""The cost of sharing a bottom (chapter 03's seesaw) over ten training seeds, stored for the
chapter to read: ``python scripts/seesaw_seeds.py`` (about 4 minutes on one core).

For each training seed k (CGC_EDU_TRAINING_SEED=k: the models' initialisation and batches;
the two tasks stay the same) and each width of the shared bottom, `seesaw_front` trains one
shared-bottom model per loss weight and one model per task alone; the cost of sharing is the
least, over the weights, of the larger excess of a task's loss over its loss alone. Writes
``results/seesaw/costs.csv`` (seed, hidden, cost).
"""
import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch

from cgc_edu.course.knobs import seesaw_front
from cgc_edu.utils import TRAINING_SEED_VARIABLE

ROOT = Path(__file__).resolve().parents[1]


def sharing_cost(front) -> float:
    """min over w of the larger excess of a task's loss over its alone loss."""
    return float((front["losses"] - front["alone"]).max(1).min())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--hidden", default="2,4,8")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "seesaw" / "costs.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows, start = [], time.perf_counter()
    for seed in map(int, args.seeds.split(",")):
        os.environ[TRAINING_SEED_VARIABLE] = str(seed)
        for hidden in map(int, args.hidden.split(",")):
            front = seesaw_front(correlation=0.0, hidden=hidden)
            rows.append({"seed": seed, "hidden": hidden, "cost": round(sharing_cost(front), 6)})
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    print(f"{len(rows)} fronts in {time.perf_counter() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()

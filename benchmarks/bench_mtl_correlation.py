"""Task correlation sweep of the MMoE paper (Ma et al. 2018, fig. 4) with all four chapter-3 models.

For each correlation p and seed: draw the two synthetic tasks (cgc_edu.data.synthetic), train
shared-bottom, MMoE, CGC and PLE with the same budget, and report the test loss as MSE divided
by the label variance (1 - R^2, so seeds with harder sine shapes are comparable), mean ± std
over seeds. The last column is the paired per-seed gap shared-bottom - MMoE: the paper's
finding is that it grows as the tasks become less related.

Each seed draws its own sine shape (shape_seed=seed), as a fresh synthetic problem per run;
the measured label correlation (mean over seeds) is printed beside p.
The paper uses in_features=100; 20 keeps the sweep to a few minutes on 2 CPU cores.
By default every model has 32 hidden units below its towers (shared-bottom: one layer of 32;
the others: four experts of 8); --bottom-hidden 16 starves the shared bottom instead.

Usage: python benchmarks/bench_mtl_correlation.py [--seeds 3] [--steps 1000] [--bottom-hidden 32]
"""
import argparse
import time

import numpy as np
import torch

from cgc_edu.mtl import CGC, MMoE, PLE, SharedBottom, task_losses, train_multitask
from cgc_edu.data.synthetic import make_correlated_tasks

D, N_TRAIN, N_TEST = 20, 8000, 2000
MODELS = {  # 32 hidden units below the towers in each model (see --bottom-hidden)
    "shared-bottom": lambda hidden: SharedBottom(D, 2, hidden=hidden, tower_hidden=8),
    "MMoE": lambda _: MMoE(D, 2, n_experts=4, expert_hidden=8, tower_hidden=8),
    "CGC": lambda _: CGC(D, 2, n_shared=2, n_specific=1, expert_hidden=8, tower_hidden=8),
    "PLE": lambda _: PLE(D, 2, n_shared=2, n_specific=1, expert_hidden=8, tower_hidden=8, n_levels=2),
}


def run(correlation: float, seed: int, steps: int, bottom_hidden: int) -> tuple[dict, float]:
    x, y = make_correlated_tasks(N_TRAIN + N_TEST, correlation, in_features=D, seed=seed, shape_seed=seed)
    (x_tr, x_te), (y_tr, y_te) = x.split([N_TRAIN, N_TEST]), y.split([N_TRAIN, N_TEST])
    variance = y_te.var(0)
    losses = {}
    for name, make in MODELS.items():
        torch.manual_seed(seed)
        model = make(bottom_hidden)
        train_multitask(model, x_tr, y_tr, steps=steps, batch_size=256, lr=3e-3, seed=seed)
        losses[name] = float(np.mean(np.array(task_losses(model, x_te, y_te)) / variance.numpy()))
    return losses, float(np.corrcoef(y_te.T.numpy())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bottom-hidden", type=int, default=32, help="width of the shared bottom")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--correlations", type=float, nargs="+", default=[1.0, 0.9, 0.5, 0.0, -0.5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    names = list(MODELS)
    print(f"test MSE / Var(y), mean ± std over {args.seeds} seeds; {args.steps} Adam steps per model; "
          f"shared bottom {args.bottom_hidden} units, other models 4 experts x 8 units")
    print(f"| p | label corr | {' | '.join(names)} | gap SB - MMoE |")
    print("|---" * (len(names) + 3) + "|")
    for p in args.correlations:
        results = [run(p, seed, args.steps, args.bottom_hidden) for seed in range(args.seeds)]
        table = {name: np.array([r[0][name] for r in results]) for name in names}
        gap = table["shared-bottom"] - table["MMoE"]
        cells = [f"{v.mean():.3f} ± {v.std():.3f}" for v in table.values()]
        label_corr = np.mean([r[1] for r in results])
        print(f"| {p:+.1f} | {label_corr:+.2f} | {' | '.join(cells)} | {gap.mean():+.3f} ± {gap.std():.3f} |",
              flush=True)
    print(f"wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

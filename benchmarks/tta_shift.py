"""Test-time adaptation on a shifted synthetic classification stream: error before and after.

A small MLP with LayerNorm is trained on Gaussian class blobs, then meets a test stream whose
features are rescaled and shifted per dimension (a covariate shift it never saw). Three
runs over the same stream, batch by batch: the source model unchanged, plain TENT, and TENT
with the wisdom-of-crowds filter (ours). Reported per shift severity, mean over seeds:

* online error: each batch predicted before the update it triggers (how TENT is scored);
* final error: the whole stream again after adaptation (what the adapted model learned);
* kept: share of samples the filter let into the loss.

Run: ``python benchmarks/tta_shift.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from tokenwise.training.tta import EntropyMinimization, tent


def blobs(gen: torch.Generator, means: torch.Tensor, n: int, noise: float):
    labels = torch.randint(0, means.shape[0], (n,), generator=gen)
    x = means[labels] + noise * torch.randn(n, means.shape[1], generator=gen)
    return x, labels


def make_model(dim: int, classes: int, width: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, width), nn.LayerNorm(width), nn.ReLU(),
                         nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(),
                         nn.Linear(width, classes))


def error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) != y).float().mean())


def one_seed(seed: int, severities: list[float], args) -> dict:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(args.classes, args.dim, generator=gen) * args.separation
    x_train, y_train = blobs(gen, means, 20_000, args.noise)
    torch.manual_seed(seed)
    source = make_model(args.dim, args.classes)
    opt = torch.optim.Adam(source.parameters(), lr=3e-3)
    for _ in range(args.train_steps):
        idx = torch.randint(0, x_train.shape[0], (256,), generator=gen)
        loss = nn.functional.cross_entropy(source(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    source.eval()
    x_clean, y_clean = blobs(gen, means, args.stream, args.noise)
    out = {"clean_error": error(source, x_clean, y_clean), "severities": {}}
    for severity in severities:
        # per-dimension rescaling in [1/(1+s), 1+s] and an offset of s * noise per dimension
        log_scale = (torch.rand(args.dim, generator=gen) * 2 - 1) * torch.log1p(
            torch.tensor(severity))
        offset = severity * args.noise * torch.randn(args.dim, generator=gen)
        x_test = x_clean * log_scale.exp() + offset
        row = {"source": {"online": error(source, x_test, y_clean),
                          "final": error(source, x_test, y_clean)}}
        for name in ("tent", "ours"):
            model = make_model(args.dim, args.classes)
            model.load_state_dict(source.state_dict())
            maker = tent if name == "tent" else EntropyMinimization
            adapter = maker(model, lr=args.lr)
            wrong = 0
            for _ in range(args.passes):
                for start in range(0, args.stream, args.batch):
                    xb, yb = x_test[start:start + args.batch], y_clean[start:start + args.batch]
                    wrong += int((adapter(xb).argmax(-1) != yb).sum())
            row[name] = {"online": wrong / (args.stream * args.passes),
                         "final": error(model, x_test, y_clean),
                         "kept": adapter.kept_total / max(1, adapter.seen_total)}
        out["severities"][str(severity)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--severities", default="0.5,1.0,2.0")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--separation", type=float, default=1.5)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--stream", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--passes", type=int, default=3, help="times the stream is replayed")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--json", default=None, help="write the per-seed results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    severities = [float(s) for s in args.severities.split(",")]
    start = time.perf_counter()
    runs = [one_seed(seed, severities, args) for seed in range(args.seeds)]
    clean = sum(r["clean_error"] for r in runs) / len(runs)
    print(f"source model, unshifted test error: {clean:.3f} (mean of {len(runs)} seeds)")
    print(f"{'severity':>8} {'method':>7} {'online err':>10} {'final err':>10} {'kept':>6}"
          f" {'final err per seed':>30}")
    summary = {}
    for sev in severities:
        for name in ("source", "tent", "ours"):
            rows = [r["severities"][str(sev)][name] for r in runs]
            online = sum(r["online"] for r in rows) / len(rows)
            final = sum(r["final"] for r in rows) / len(rows)
            kept = sum(r.get("kept", 1.0) for r in rows) / len(rows)
            per_seed = " ".join(f"{r['final']:.3f}" for r in rows)
            summary[f"{sev}/{name}"] = {"online": online, "final": final, "kept": kept}
            print(f"{sev:>8} {name:>7} {online:>10.3f} {final:>10.3f} {kept:>6.2f} {per_seed:>30}")
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "runs": runs, "summary": summary}, fh, indent=1)


if __name__ == "__main__":
    main()

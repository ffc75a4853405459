"""A small classifier on prompt features: DiffAdapt's difficulty probe.

Logistic regression (multinomial, L2, full-batch L-BFGS: a convex fit, the same answer every
run) or a one-hidden-layer MLP (AdamW, seeded). Features are standardised with the training
set's mean and deviation, stored with the weights, so a saved probe needs nothing else. Class
weights can balance rare classes ("hard" questions are often few). The base model is never
touched: only the probe is trained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tokenwise.errors import TokenwiseError

Kind = Literal["logistic", "mlp"]


class DifficultyProbe:
    """Classify prompt features into labels (e.g. ``easy``/``normal``/``hard``, or
    ``right``/``wrong``).

    Args:
        kind: ``"logistic"`` or ``"mlp"`` (one hidden layer, ReLU).
        l2: weight decay (> 0 keeps the fit finite when classes separate perfectly).
        hidden: MLP width.
        epochs: MLP training steps (full batch).
        balanced: weight each class by ``n / (classes x count)`` in the loss.
        seed: MLP initialisation seed.
        meta: free-form facts stored with the probe (feature model, layer, ...).

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.0], [0.1], [0.9], [1.0]])
        >>> probe = DifficultyProbe().fit(x, ["easy", "easy", "hard", "hard"])
        >>> probe.predict(np.array([[0.05], [0.95]]))
        ['easy', 'hard']
    """

    def __init__(self, kind: Kind = "logistic", *, l2: float = 1e-2, hidden: int = 64,
                 epochs: int = 300, balanced: bool = True, seed: int = 0,
                 meta: dict[str, Any] | None = None) -> None:
        if kind not in ("logistic", "mlp"):
            raise TokenwiseError(f"probe kind must be 'logistic' or 'mlp', got {kind!r}")
        for name, value, low in (("hidden", hidden, 1), ("epochs", epochs, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TokenwiseError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not l2 >= 0:
            raise TokenwiseError(f"l2 must be a number >= 0, got {l2!r}")
        self.kind: Kind = kind
        self.l2, self.hidden, self.epochs = float(l2), hidden, epochs
        self.balanced, self.seed = balanced, seed
        self.meta: dict[str, Any] = dict(meta or {})
        self.classes: list[str] = []
        self._mean: torch.Tensor | None = None
        self._std: torch.Tensor | None = None
        self._net: torch.nn.Module | None = None

    def __repr__(self) -> str:
        state = f"classes={self.classes}" if self.classes else "unfitted"
        return f"DifficultyProbe({self.kind!r}, {state})"

    @property
    def fitted(self) -> bool:
        """True once :meth:`fit` (or :meth:`load`) has run."""
        return self._net is not None

    def _make_net(self, dim: int) -> torch.nn.Module:
        k = len(self.classes)
        # seeded initialisation without touching the caller's global random stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.kind == "logistic":
                return torch.nn.Linear(dim, k)
            return torch.nn.Sequential(torch.nn.Linear(dim, self.hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(self.hidden, k))

    def fit(self, features: np.ndarray, labels: Sequence[Any]) -> DifficultyProbe:
        """Fit on ``(N, D)`` features and N labels (any hashables, stored as strings).

        Args:
            features: one row per question.
            labels: one label per row; at least two distinct labels.

        Returns:
            The probe itself, fitted.
        """
        x = _check_features(features)
        labels = [str(v) for v in labels]
        if len(labels) != len(x):
            raise TokenwiseError(f"{len(x)} feature rows but {len(labels)} labels")
        self.classes = sorted(set(labels))
        if len(self.classes) < 2:
            raise TokenwiseError(f"a probe needs at least two distinct labels to learn from, "
                                 f"got only {self.classes}")
        y = torch.tensor([self.classes.index(v) for v in labels])
        xt = torch.from_numpy(x).double()
        self._mean = xt.mean(0)
        self._std = xt.std(0, unbiased=False).clamp_min(1e-6)
        z = ((xt - self._mean) / self._std).float()
        counts = torch.bincount(y, minlength=len(self.classes)).float()
        weight = (len(y) / (len(self.classes) * counts)) if self.balanced else None
        net = self._make_net(z.shape[1])
        loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
        params = [p for n, p in net.named_parameters() if n.endswith("weight")]
        if self.kind == "logistic":
            opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=500,
                                    line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = loss_fn(net(z), y) + 0.5 * self.l2 * sum(p.square().sum() for p in params)
                loss.backward()
                return loss

            opt.step(closure)
        else:
            opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=self.l2)
            for _ in range(self.epochs):
                opt.zero_grad()
                loss_fn(net(z), y).backward()
                opt.step()
        net.eval()
        self._net = net
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """``(N, classes)`` probabilities, columns in :attr:`classes` order.

        Args:
            features: ``(N, D)`` rows, or one ``(D,)`` row.
        """
        if self._net is None or self._mean is None or self._std is None:
            raise TokenwiseError("the probe is not fitted; call fit() or DifficultyProbe.load()")
        x = _check_features(np.atleast_2d(features))
        if x.shape[1] != self._mean.shape[0]:
            raise TokenwiseError(f"the probe was fitted on {self._mean.shape[0]} features, "
                                 f"got {x.shape[1]} (a different model or layer?)")
        z = ((torch.from_numpy(x).double() - self._mean) / self._std).float()
        with torch.no_grad():
            return torch.softmax(self._net(z), -1).double().numpy()

    def predict(self, features: np.ndarray) -> list[str]:
        """The most probable label of each row.

        Args:
            features: ``(N, D)`` rows.
        """
        return [self.classes[i] for i in self.predict_proba(features).argmax(1)]

    def score(self, features: np.ndarray, label: str) -> np.ndarray:
        """Probability of one label per row (e.g. ``"wrong"`` for an AUROC).

        Args:
            features: ``(N, D)`` rows.
            label: one of :attr:`classes`.
        """
        if label not in self.classes:
            raise TokenwiseError(f"label {label!r} is not one of the probe's classes "
                                 f"{self.classes}")
        return self.predict_proba(features)[:, self.classes.index(label)]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the probe to one ``.safetensors`` file (settings and classes in its header).

        Args:
            path: the file to write.
        """
        if self._net is None or self._mean is None or self._std is None:
            raise TokenwiseError("cannot save an unfitted probe")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self._net.state_dict().items()}
        tensors["mean"], tensors["std"] = self._mean.contiguous(), self._std.contiguous()
        header = {"kind": self.kind, "l2": self.l2, "hidden": self.hidden, "epochs": self.epochs,
                  "balanced": self.balanced, "seed": self.seed, "classes": self.classes,
                  "meta": self.meta}
        save_file(tensors, str(path), metadata={"tokenwise_probe": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DifficultyProbe:
        """Read a probe written by :meth:`save`.

        Args:
            path: the ``.safetensors`` file.
        """
        path = Path(path)
        if not path.is_file():
            raise TokenwiseError(f"probe file {str(path)!r} does not exist")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("tokenwise_probe")
        if raw is None:
            raise TokenwiseError(f"{str(path)!r} is not a tokenwise probe (no probe header)")
        h = json.loads(raw)
        probe = cls(h["kind"], l2=h["l2"], hidden=h["hidden"], epochs=h["epochs"],
                    balanced=h["balanced"], seed=h["seed"], meta=h.get("meta"))
        probe.classes = list(h["classes"])
        tensors = load_file(str(path))
        probe._mean, probe._std = tensors["mean"], tensors["std"]
        net = probe._make_net(int(probe._mean.shape[0]))
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        net.eval()
        probe._net = net
        return probe


def _check_features(features: Any) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise TokenwiseError(f"features must be a non-empty (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise TokenwiseError("features contain NaN or infinity")
    return x

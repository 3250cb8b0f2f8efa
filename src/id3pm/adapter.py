"""Adapters: invert a new FR model's templates with a model trained on another one's.

A model is conditioned on one black box's vectors (dlib for the shipped one). To invert
templates of another FR model ("NEW") without retraining, map NEW's vectors into the
model's conditioning space with a map fitted on photos encoded by both (both black boxes
are queried, neither is differentiated). A single linear map between FR embedding spaces
carries most of the identity (Otroshi Shahreza, George & Marcel 2024); a small MLP may
carry more where the spaces differ non-linearly. `fit_adapter` fits both and keeps the one
with the higher held-out cosine in the target space.

    adapter = fit_adapter(x_new, y_model, source={"name": "mobilefacenet"}, source_dim=192,
                          target={"name": "dlib"}, target_dim=128).adapter
    adapter.save("adapters/mfn-to-dlib")
    y = Adapter.load("adapters/mfn-to-dlib")(x_new)          # (N, 128)

An adapter folder holds `adapter.safetensors` and `adapter.json` (both encoders, their
vector lengths, the kind of map, how well it fitted); `check` refuses an adapter whose
ends do not match the encoder and model it is used with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter.json"
FORMAT = "id3pm-adapter/1"
RIDGE_ALPHAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # times the mean eigenvalue of the standardised X'X / n
# The MLP is kept only when it beats the ridge map by this much held-out cosine: on
# MobileFaceNet -> dlib (2,000 CelebA photos) it won by 0.00005, nothing a user would see,
# at the price of a map that extrapolates less predictably.
SIMPLER_UNLESS_BEATEN_BY = 0.002


@dataclass
class AdapterConfig:
    source: dict  # spec of the encoder whose templates come in (make_encoder rebuilds it)
    source_dim: int
    target: dict  # spec of the encoder the model is conditioned on
    target_dim: int
    kind: str = "ridge"  # "ridge" (one linear map) or "mlp" (linear map + a small residual MLP)
    hidden: int = 0  # width of the MLP's hidden layer (0 for ridge)
    fit: dict = field(default_factory=dict)  # how it was fitted: photos, held-out cosine, ...


class Adapter(torch.nn.Module):
    """y = linear(z) + mlp(z), z = (x - mean) / scale; the MLP term is absent for ridge."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        self.register_buffer("x_mean", torch.zeros(config.source_dim))
        self.register_buffer("x_scale", torch.ones(config.source_dim))
        self.linear = torch.nn.Linear(config.source_dim, config.target_dim)
        self.mlp = None
        if config.kind == "mlp":
            self.mlp = torch.nn.Sequential(torch.nn.Linear(config.source_dim, config.hidden), torch.nn.GELU(),
                                           torch.nn.Linear(config.hidden, config.target_dim))
        elif config.kind != "ridge":
            raise ValueError(f"adapter kind must be ridge or mlp, got {config.kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.x_mean) / self.x_scale
        y = self.linear(z)
        return y if self.mlp is None else y + self.mlp(z)

    @torch.no_grad()
    def __call__(self, x):
        """numpy in, numpy out (float32); tensors in, tensors out."""
        if isinstance(x, torch.Tensor):
            return super().__call__(x.float())
        x = np.asarray(x, np.float32)
        if x.shape[-1] != self.config.source_dim:
            raise ValueError(f"the adapter takes {self.config.source_dim}-d {self.config.source['name']} vectors, "
                             f"got length {x.shape[-1]}")
        return super().__call__(torch.from_numpy(x)).numpy()

    # -- both ends must match -------------------------------------------------------------
    def check(self, source_name: str | None, target: dict, target_dim: int, where: str = "the adapter") -> None:
        """Refuse use with another encoder than it was fitted on, or a model conditioned on
        another space: a one-line ValueError that says which end does not match."""
        c = self.config
        if source_name is not None and source_name != c.source["name"]:
            raise ValueError(f"{where} maps {c.source['name']} vectors, not {source_name}: fit one with "
                             f"`id3pm adapt --encoder {source_name}`")
        if target.get("name") != c.target["name"] or int(target_dim) != c.target_dim:
            raise ValueError(f"{where} maps into {c.target['name']} ({c.target_dim}-d), but the model is conditioned "
                             f"on {target.get('name')} ({target_dim}-d)")

    # -- a folder -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / WEIGHTS_FILE))
        (path / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **asdict(self.config)}, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Adapter:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path}: not an adapter folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
                                    "`id3pm adapt` writes one)")
        raw = json.loads((path / CONFIG_FILE).read_text())
        if raw.pop("format", None) != FORMAT:
            raise ValueError(f"{path / CONFIG_FILE}: not an {FORMAT} file")
        adapter = cls(AdapterConfig(**raw))
        adapter.load_state_dict(load_file(str(path / WEIGHTS_FILE)))  # shapes are checked against the config
        return adapter.eval()


# -- fitting -------------------------------------------------------------------------------------
def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).mean())


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), x.std(0) + 1e-6


def ridge_weights(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge on standardised inputs: (W (D_out, D_in), b). alpha is relative to
    the mean eigenvalue of Z'Z / n, so that one grid suits any vector length."""
    n, d = z.shape
    gram = z.T @ z / n
    lam = alpha * np.trace(gram) / d
    y_mean = y.mean(0)
    w = np.linalg.solve(gram + lam * np.eye(d), z.T @ (y - y_mean) / n)
    return w.T, y_mean  # z has zero mean, so the intercept is y's mean


def fit_ridge(config: AdapterConfig, x, y, x_val, y_val) -> Adapter:
    """The ridge whose strength (RIDGE_ALPHAS) gives the highest held-out cosine."""
    mean, scale = standardise(x)
    z, z_val = (x - mean) / scale, (x_val - mean) / scale
    best = None
    for alpha in RIDGE_ALPHAS:
        w, b = ridge_weights(z, y, alpha)
        score = mean_cosine(z_val @ w.T + b, y_val)
        if best is None or score > best[0]:
            best = (score, alpha, w, b)
    adapter = Adapter(AdapterConfig(**{**asdict(config), "kind": "ridge", "hidden": 0}))
    with torch.no_grad():
        adapter.x_mean.copy_(torch.from_numpy(mean))
        adapter.x_scale.copy_(torch.from_numpy(scale))
        adapter.linear.weight.copy_(torch.from_numpy(best[2]))
        adapter.linear.bias.copy_(torch.from_numpy(best[3]))
    adapter.config.fit = {"alpha": best[1]}
    return adapter.eval()


def fit_mlp(config: AdapterConfig, x, y, x_val, y_val, hidden: int = 512, steps: int = 2000, lr: float = 1e-3,
            weight_decay: float = 1e-4, seed: int = 0) -> Adapter:
    """The ridge map plus a residual MLP trained (AdamW, MSE, full batch) on what it leaves;
    the step with the best held-out cosine is kept (early stopping, checked every 50 steps)."""
    ridge = fit_ridge(config, x, y, x_val, y_val)
    torch.manual_seed(seed)
    adapter = Adapter(AdapterConfig(**{**asdict(config), "kind": "mlp", "hidden": hidden}))
    adapter.load_state_dict(ridge.state_dict(), strict=False)  # starts as the ridge map (the MLP's last layer is 0)
    torch.nn.init.zeros_(adapter.mlp[2].weight)
    torch.nn.init.zeros_(adapter.mlp[2].bias)
    opt = torch.optim.AdamW(adapter.mlp.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.float32))
    xv = torch.from_numpy(np.asarray(x_val, np.float32))
    best = (mean_cosine(ridge(x_val), y_val), 0, {k: v.clone() for k, v in adapter.state_dict().items()})
    adapter.train()
    for step in range(1, steps + 1):
        loss = torch.nn.functional.mse_loss(adapter.forward(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                score = mean_cosine(adapter.forward(xv).numpy(), y_val)
            if score > best[0]:
                best = (score, step, {k: v.clone() for k, v in adapter.state_dict().items()})
    adapter.load_state_dict(best[2])
    adapter.config.fit = {"alpha": ridge.config.fit["alpha"], "steps": best[1]}
    return adapter.eval()


@dataclass
class FitResult:
    adapter: Adapter  # the chosen one, fitted on all the fitting photos
    scores: dict  # {kind: held-out cosine}
    curve: list  # [{"photos": n, "ridge": cosine, "mlp": cosine}, ...]


def fit_adapter(x, y, source: dict, source_dim: int, target: dict, target_dim: int, groups=None,
                kinds=("ridge", "mlp"), curve_sizes=(500, 2000, 8000, None), val_fraction: float = 0.1,
                seed: int = 0, mlp_steps: int = 2000) -> FitResult:
    """Fit every kind on the photos' (x = NEW vectors, y = target vectors), hold out
    val_fraction of them (by group, e.g. identity, where given) to choose, and measure the
    curve of held-out cosine against the number of fitting photos (None = all)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape[1] != source_dim or y.shape[1] != target_dim or len(x) != len(y):
        raise ValueError(f"need (N, {source_dim}) source and (N, {target_dim}) target vectors, got {x.shape}, {y.shape}")
    fit_idx, val_idx = split_by_group(len(x), groups, val_fraction, seed)
    config = AdapterConfig(source=dict(source), source_dim=source_dim, target=dict(target), target_dim=target_dim)
    fitters = {"ridge": lambda i: fit_ridge(config, x[i], y[i], x[val_idx], y[val_idx]),
               "mlp": lambda i: fit_mlp(config, x[i], y[i], x[val_idx], y[val_idx], steps=mlp_steps, seed=seed)}
    order = np.random.default_rng(seed).permutation(fit_idx)  # nested subsets: the curve is monotone in data
    curve, chosen = [], {}
    sizes = sorted({len(order) if n is None else min(int(n), len(order)) for n in curve_sizes})
    for n in sizes:
        row = {"photos": n}
        for kind in kinds:
            adapter = fitters[kind](order[:n])
            row[kind] = mean_cosine(adapter(x[val_idx]), y[val_idx])
            if n == len(order):
                chosen[kind] = adapter
        curve.append(row)
    scores = {kind: curve[-1][kind] for kind in kinds}
    top = max(scores.values())  # kinds are listed simplest first: keep the first within the margin of the best
    best = next(k for k in kinds if scores[k] >= top - SIMPLER_UNLESS_BEATEN_BY)
    adapter = chosen[best]
    adapter.config.fit.update({"photos": int(len(order)), "held_out_photos": int(len(val_idx)),
                               "held_out_cosine": scores,
                               "chosen_by": f"held-out cosine in the target space (simpler unless beaten by "
                                            f"{SIMPLER_UNLESS_BEATEN_BY})"})
    return FitResult(adapter, scores, curve)


def split_by_group(n: int, groups, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) indices; all photos of a group (a person) fall on one side."""
    rng = np.random.default_rng(seed)
    groups = np.arange(n) if groups is None else np.asarray(groups, dtype=object)
    names = sorted(set(groups.tolist()), key=str)
    held = set(rng.permutation(len(names))[: max(1, int(round(val_fraction * len(names))))].tolist())
    lookup = {g: i in held for i, g in enumerate(names)}
    is_val = np.array([lookup[g] for g in groups.tolist()])
    if is_val.all() or not is_val.any():
        raise ValueError(f"cannot hold out {val_fraction:.0%} of {len(names)} groups and keep some to fit on")
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)

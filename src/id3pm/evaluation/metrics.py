"""Image-set metrics: MS-SSIM, Frechet distance, precision/recall of manifolds, and
mean pairwise differences for diversity."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor):
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ch = x.shape[1]
    w = window.expand(ch, 1, *window.shape)
    mu_x, mu_y = F.conv2d(x, w, groups=ch), F.conv2d(y, w, groups=ch)
    sxx = F.conv2d(x * x, w, groups=ch) - mu_x**2
    syy = F.conv2d(y * y, w, groups=ch) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=ch) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> np.ndarray:
    """Single-scale SSIM of uint8 image pairs (N, H, W, 3) -> (N,), Gaussian window
    (sigma 1.5), valid region only, averaged over channels."""
    x = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32).permute(0, 3, 1, 2)
    y = torch.as_tensor(np.ascontiguousarray(b), dtype=torch.float32).permute(0, 3, 1, 2)
    return _ssim_parts(x, y, _gaussian_window(window))[0].numpy()


def ms_ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> np.ndarray:
    """MS-SSIM of uint8 image pairs (N, H, W, 3) -> (N,). Small images (64x64) cannot
    hold 5 scales of an 11-pixel window, so the window is 7 and the number of scales
    is as many as fit (>= window pixels at the coarsest), weights renormalised."""
    x = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32).permute(0, 3, 1, 2)
    y = torch.as_tensor(np.ascontiguousarray(b), dtype=torch.float32).permute(0, 3, 1, 2)
    side = min(x.shape[2:])
    scales = max(1, min(5, int(np.floor(np.log2(side / window))) + 1))
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    win = _gaussian_window(window)
    values = []
    for s in range(scales):
        ssim, cs = _ssim_parts(x, y, win)
        values.append(ssim if s == scales - 1 else cs)
        if s < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stack = torch.stack(values, dim=1).clamp(min=1e-8)
    return torch.prod(stack ** weights, dim=1).numpy()


LUMA_BT601 = (0.299, 0.587, 0.114)
# the mean and contrast every image's luminance is set to before the colour-blind MS-SSIM:
# mid-grey, and a contrast typical of a face crop (what the SSIM constants were made for)
STANDARD_MEAN, STANDARD_STD = 128.0, 48.0


def standardised_luminance(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W, 1) float32: the luminance of each image, shifted and
    scaled to one mean and contrast. A colour cast, an exposure or a contrast change then
    leaves an image as it was; shape, pose, expression and the layout of light remain."""
    y = np.asarray(images, dtype=np.float32) @ np.asarray(LUMA_BT601, dtype=np.float32)
    mean = y.mean(axis=(1, 2), keepdims=True)
    std = y.std(axis=(1, 2), keepdims=True)
    y = (y - mean) / np.maximum(std, 1e-3) * STANDARD_STD + STANDARD_MEAN
    return y[..., None]


def structural_ms_ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> np.ndarray:
    """MS-SSIM of uint8 image pairs (N, H, W, 3) -> (N,) that cannot see colour, exposure
    or global contrast: both sides' standardised luminance. A sampler whose samples differ
    mostly by colour cast scores high on 1 - MS-SSIM and not on this (what period 23
    suspected of sampling from pure noise, prior start 1.0)."""
    return ms_ssim(standardised_luminance(a), standardised_luminance(b), window)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussian fits."""
    from scipy import linalg

    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    s_a, s_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)  # (disp=False is deprecated and goes away in SciPy 1.18)
    if not np.isfinite(covmean).all():  # near-singular products: regularise (as pytorch-fid does)
        eps = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al., 2018): the unbiased estimate of the squared MMD between two
    feature sets under the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged
    over random subsets of both sets (as torch-fidelity computes it). Unlike FID it has no
    bias at small n, so a few hundred images compare fairly. Returns (mean, std over subsets)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(len(real), len(fake), subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    values = [_mmd2_unbiased(real[rng.choice(len(real), m, replace=False)], fake[rng.choice(len(fake), m, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off = m * (m - 1)  # the diagonal (each point with itself) is left out of the within-set means
    return float((k_xx.sum() - np.trace(k_xx)) / off + (k_yy.sum() - np.trace(k_yy)) / off - 2 * k_xy.mean())


def _knn_radii(feats: np.ndarray, k: int) -> np.ndarray:
    d = torch.cdist(torch.as_tensor(feats), torch.as_tensor(feats))
    return d.kthvalue(k + 1, dim=1).values.numpy()  # +1: the point itself is at distance 0


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. (2019): precision = share of fake samples inside the real
    manifold (union of k-NN balls of real samples); recall the other way round. NaN for
    sets of one image."""
    real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
    k = min(k, len(real) - 1, len(fake) - 1)  # a handful of images: fewer neighbours than asked
    if k < 1:
        return float("nan"), float("nan")
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    d = torch.cdist(torch.as_tensor(fake), torch.as_tensor(real)).numpy()  # (fake, real)
    precision = float((d <= r_real[None, :]).any(axis=1).mean())
    recall = float((d.T <= r_fake[None, :]).any(axis=1).mean())
    return precision, recall


def mean_pairwise(values: np.ndarray, distance=None) -> float:
    """Mean over all unordered pairs (i < j) of distance(values[i], values[j]);
    default: Euclidean distance between rows."""
    n = len(values)
    if n < 2:
        return float("nan")
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            out.append(distance(values[i], values[j]) if distance else np.linalg.norm(values[i] - values[j]))
    return float(np.nanmean(out))

"""Canonical-correlation alignment loss: L_CCA = -sum of the top-k squared canonical correlations.

The canonical correlations of two batches of embeddings X (n, p) and Y (n, q) are the singular values
of T = Sxx^-1/2 Sxy Syy^-1/2. Two choices keep this safe in float32 with batches of ~50 and
embeddings wider than the batch (covariances of rank < n):

- Ridge: S + r * (tr(S)/p) * I. Relative to the mean variance, so the regulariser means the same
  whatever the embeddings' scale; without it Sxx is singular whenever p >= n.
- Whitening with the Cholesky factor instead of the symmetric inverse square root. For Sxx = L L^T,
  L^-1 = Q Sxx^-1/2 with Q orthogonal, so L_x^-1 Sxy L_y^-T has exactly the singular values of T.
  The symmetric root needs an eigendecomposition whose gradient divides by eigenvalue gaps; with
  rank-deficient covariances many eigenvalues equal the ridge and those gaps are zero (NaN
  gradients). Cholesky and triangular solves have no such terms, and `svdvals`' gradient is
  stable for repeated singular values.
"""

from __future__ import annotations

import torch


def _ridged_covariance(a: torch.Tensor, ridge: float) -> torch.Tensor:
    n, p = a.shape
    cov = a.T @ a / (n - 1)
    scale = torch.diagonal(cov).mean().clamp_min(1e-12)
    return cov + (ridge * scale) * torch.eye(p, dtype=a.dtype, device=a.device)


def canonical_correlations(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """All min(p, q) canonical correlations of x (n, p) and y (n, q), descending, in [0, 1]."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"CCA needs two (n, dim) batches with the same n, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError("CCA needs a batch of at least 2 samples")
    if ridge <= 0:
        raise ValueError(f"CCA ridge must be positive, got {ridge}")
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    n = x.shape[0]
    sxx = _ridged_covariance(x, ridge)
    syy = _ridged_covariance(y, ridge)
    sxy = x.T @ y / (n - 1)
    lx = torch.linalg.cholesky(sxx)
    ly = torch.linalg.cholesky(syy)
    left = torch.linalg.solve_triangular(lx, sxy, upper=False)  # Lx^-1 Sxy
    t = torch.linalg.solve_triangular(ly, left.T, upper=False).T  # Lx^-1 Sxy Ly^-T
    return torch.linalg.svdvals(t)


def cca_loss(x: torch.Tensor, y: torch.Tensor, k: int = 5, ridge: float = 1e-3) -> torch.Tensor:
    """-sum_{i<=k} rho_i^2 over the k largest canonical correlations (k is capped at min(p, q))."""
    rho = canonical_correlations(x, y, ridge)
    return -(rho[: max(1, k)] ** 2).sum()


__all__ = ["canonical_correlations", "cca_loss"]

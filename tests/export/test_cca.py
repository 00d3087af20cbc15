"""L_CCA: float32 torch agrees with a float64 numpy reference built from the definition, and its gradient
stays finite where the textbook symmetric inverse square root fails (embeddings wider than the batch)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vrclip.export.cca import canonical_correlations, cca_loss  # noqa: E402


def reference_correlations(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """Singular values of Sxx^-1/2 Sxy Syy^-1/2 (symmetric roots by eigh), float64, same relative ridge."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    n = x.shape[0]

    def cov(a: np.ndarray) -> np.ndarray:
        c = a.T @ a / (n - 1)
        return c + ridge * np.trace(c) / c.shape[0] * np.eye(c.shape[0])

    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(c)
        return (v / np.sqrt(w)) @ v.T

    t = inv_sqrt(cov(x)) @ (x.T @ y / (n - 1)) @ inv_sqrt(cov(y))
    return np.linalg.svd(t, compute_uv=False)


def correlated(n: int, p: int, q: int, shared: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, shared))
    x = rng.normal(size=(n, p)) + z @ rng.normal(size=(shared, p)) * 2.0
    y = rng.normal(size=(n, q)) + z @ rng.normal(size=(shared, q)) * 2.0
    scale = rng.uniform(0.01, 100.0, size=p)  # badly scaled features: float32 must cope
    return x * scale, y


@pytest.mark.parametrize(
    ("n", "p", "q", "ridge"),
    [(500, 8, 6, 1e-3), (200, 16, 16, 1e-2), (50, 64, 64, 1.0), (50, 32, 20, 0.1)],
)
def test_float32_matches_float64_reference(n: int, p: int, q: int, ridge: float) -> None:
    x, y = correlated(n, p, q, shared=5, seed=n + p)
    expected = reference_correlations(x, y, ridge)
    got = canonical_correlations(
        torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), ridge
    )
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected[: got.numel()], atol=2e-4)
    loss = cca_loss(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), 5, ridge)
    assert float(loss) == pytest.approx(-np.sum(expected[:5] ** 2), abs=1e-3)


def test_correlated_data_scores_higher_than_independent_data() -> None:
    x, y = correlated(400, 10, 10, shared=5, seed=1)
    rng = np.random.default_rng(2)
    rho_shared = canonical_correlations(torch.tensor(x).float(), torch.tensor(y).float())
    rho_none = canonical_correlations(
        torch.tensor(rng.normal(size=(400, 10))).float(), torch.tensor(y).float()
    )
    assert float(rho_shared[4]) > 0.8 > 0.3 > float(rho_none[0])


def test_gradient_is_finite_with_rank_deficient_covariances() -> None:
    """Batch 50, 64-dim embeddings: many equal (ridge) eigenvalues, which break eigh's backward."""
    torch.manual_seed(0)
    x = torch.randn(50, 64, requires_grad=True)
    y = (x.detach()[:, :32] @ torch.randn(32, 64) + 0.1 * torch.randn(50, 64)).requires_grad_(True)
    loss = cca_loss(x, y, k=5, ridge=1e-3)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert float(x.grad.abs().sum()) > 0


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="same n"):
        canonical_correlations(torch.zeros(5, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="ridge"):
        canonical_correlations(torch.randn(5, 3), torch.randn(5, 3), ridge=0.0)

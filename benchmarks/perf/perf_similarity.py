"""Similarity measures vs public implementations: time, peak extra memory and error vs float64.

Cases (float32 representations, y a noisy nonlinear read-out of post-ReLU-like x):
- "cka N=.. D=..": linear CKA, biased HSIC. Peers: a plain numpy reference following Kornblith et
  al. (feature space, float64; and their Gram form at N=2,000), ckatorch.cka_base (float64 N x N
  Grams), and "bare mm": only the float32 products our route needs (full, not triangular), through torch.mm
  and through numpy's BLAS, which similarity/ uses on the CPU (the limit).
- "cka-debiased N=.. D=..": debiased HSIC. Peers: numpy (Kornblith's debiased feature form),
  ckatorch (unbiased=True), torch_cka (its CKA.compare on identity models, one batch of N, i.e. its
  unbiased HSIC; only at N=2,000: its trace(K @ L) costs N^3).
- "layers 8x8 N=5000": an 8 x 8 layer matrix (widths 64..4,096) vs looping the fastest exact peer (numpy,
  Kornblith's feature or Gram form, whichever is cheaper for the pair); quick: N=1,000, widths 16..1,024.
- "rsa N=2000 D=..": correlation RDM + Spearman vs rsatoolbox (calc_rdm + compare), with every core and
  (", 1 thread") with torch and BLAS held to one thread, where our two RDMs are built one after the other.
Errors are absolute differences from a float64 reference of the same estimator on the same data.
Peak memory is the largest resident-set growth seen during the call (sampled every 2 ms from a thread,
which costs CPU time): with repeats > 1 that first call is an untimed warm-up and the time is the
median of the repeats that follow.
"""

from __future__ import annotations

import contextlib
import gc
import io
import statistics
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

TOPIC = "similarity"


# --- measurement helpers --------------------------------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _peak_extra_mb(fn: Callable[[], object]) -> tuple[object, float]:
    """fn() and the largest RSS growth above the level before the call, polled from a thread."""
    gc.collect()
    base = _rss_mb()
    peak = [base]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    return out, max(peak[0], _rss_mb()) - base


def _measure(impl: str, case: str, fn: Callable[[], float], reference: float | None, repeats: int,
             note: str = "") -> dict:
    start = time.perf_counter()
    value, peak = _peak_extra_mb(fn)  # a first call with memory polling (which costs CPU time) ...
    times = [time.perf_counter() - start]
    if repeats > 1:  # ... is a warm-up when the call is timed again
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - start)
    row = dict(topic=TOPIC, case=case, impl=impl, seconds=statistics.median(times), peak_mb=round(peak, 1))
    if reference is not None and value is not None:
        row["error"] = abs(float(value) - reference)
    if note or repeats > 1:
        row["note"] = (note + "; " if note else "") + (f"median of {repeats} after a warm-up" if repeats > 1
                                                      else "one call")
    return row


# --- data and float64 references -------------------------------------------------------------------

def make_pair(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 x: ReLU of a rank-64 signal plus noise (offset, like real activations); y reads x out noisily."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    x = torch.relu(z @ torch.randn(64, d, generator=g) + 0.3 * torch.randn(n, d, generator=g) + 0.5)
    y = torch.relu(x @ (torch.randn(d, d, generator=g) / d**0.5) + torch.randn(n, d, generator=g))
    return x.contiguous(), y.contiguous()


def reference_linear_cka(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(biased, debiased) float64 feature-space linear CKA (Kornblith et al.'s debiasing), in torch float64."""
    x64, y64 = x.double(), y.double()
    x64 -= x64.mean(0)
    y64 -= y64.mean(0)
    n = x64.shape[0]
    xy, xx, yy = ((a.T @ b).square().sum().item() for a, b in ((x64, y64), (x64, x64), (y64, y64)))
    kx, ky = x64.square().sum(1), y64.square().sum(1)

    def fix(s: float, a: torch.Tensor, b: torch.Tensor) -> float:
        return s - n / (n - 2) * float(a @ b) + float(a.sum()) * float(b.sum()) / ((n - 1) * (n - 2))

    debiased = fix(xy, kx, ky) / (fix(xx, kx, kx) ** 0.5 * fix(yy, ky, ky) ** 0.5)
    return xy / (xx**0.5 * yy**0.5), debiased


# --- peers ---------------------------------------------------------------------------------------

def numpy_feature_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """Kornblith et al.'s feature_space_linear_cka (google-research/representation_similarity), float64."""
    x = x.astype(np.float64) - x.astype(np.float64).mean(0, keepdims=True)
    y = y.astype(np.float64) - y.astype(np.float64).mean(0, keepdims=True)
    dot = np.linalg.norm(x.T @ y) ** 2
    norm_x, norm_y = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if debiased:
        n = x.shape[0]
        sx, sy = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        tx, ty = sx.sum(), sy.sum()

        def helper(xty: float, a: np.ndarray, b: np.ndarray, ta: float, tb: float) -> float:
            return xty - n / (n - 2.0) * a.dot(b) + ta * tb / ((n - 1) * (n - 2))

        dot = helper(dot, sx, sy, tx, ty)
        norm_x = np.sqrt(helper(norm_x**2, sx, sx, tx, tx))
        norm_y = np.sqrt(helper(norm_y**2, sy, sy, ty, ty))
    return float(dot / (norm_x * norm_y))


def numpy_gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s cka(gram_linear(x), gram_linear(y)) with center_gram, float64 N x N."""
    def centred_gram(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        g = a @ a.T
        means = g.mean(0)
        means -= means.mean() / 2
        g -= means[:, None]
        g -= means[None, :]
        return g

    gx, gy = centred_gram(x), centred_gram(y)
    return float(gx.ravel().dot(gy.ravel()) / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def torch_cka_value(x: torch.Tensor, y: torch.Tensor) -> float:
    """torch_cka.CKA.compare on two identity models fed x and y as one batch of N (its unbiased HSIC)."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA

    def model() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Identity())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cka = CKA(model(), model(), model1_name="x", model2_name="y", model1_layers=["0"], model2_layers=["0"])
        loader_x = DataLoader(TensorDataset(x), batch_size=len(x))
        loader_y = DataLoader(TensorDataset(y), batch_size=len(y))
        with contextlib.redirect_stderr(io.StringIO()):
            cka.compare(loader_x, loader_y)
    return float(cka.export()["CKA"][0, 0])


def _route_products(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (left, right) operands of the products our linear CKA route multiplies (full, not triangular)."""
    from similarity import linear_cka_route

    n, d = x.shape
    if linear_cka_route(n, d, d) == "feature":
        return [(x.T, x), (y.T, y), (x.T, y)]
    return [(x, x.T), (y, y.T)]


def bare_mm(x: torch.Tensor, y: torch.Tensor) -> float:
    """The float32 torch.mm calls of our route, nothing else: X^T X, Y^T Y, X^T Y (or X X^T, Y Y^T for Gram)."""
    products = [torch.mm(a, b) for a, b in _route_products(x, y)]
    return float(products[0][0, 0])


def bare_numpy_mm(x: torch.Tensor, y: torch.Tensor) -> float:
    """The same products through numpy's BLAS (what similarity/ uses on the CPU): the limit on this machine."""
    products = [np.matmul(a.numpy(), b.numpy()) for a, b in _route_products(x, y)]
    return float(products[0][0, 0])


# --- cases ---------------------------------------------------------------------------------------

def linear_rows(n: int, d: int) -> list[dict]:
    import ckatorch

    from similarity import linear_cka

    x, y = make_pair(n, d)
    xn, yn = x.numpy(), y.numpy()
    big = n * d >= 10_000 * 4096
    repeats = 1 if n >= 10_000 else 3
    rows = []
    references = reference_linear_cka(x, y)
    for debiased in (False, True):
        case = f"{'cka-debiased' if debiased else 'cka'} N={n} D={d}"
        ref = references[debiased]
        rows.append(_measure("ours", case, lambda d=debiased: linear_cka(x, y, debiased=d), ref, 3))
        if not debiased:
            rows.append(_measure("bare mm", case, lambda: bare_mm(x, y), None, 3,
                                 "float32 torch.mm of the products our route needs, full (not triangular)"))
            rows.append(_measure("bare mm (numpy BLAS)", case, lambda: bare_numpy_mm(x, y), None, 3,
                                 "the same products, float32, through numpy's BLAS"))
        rows.append(_measure("numpy (Kornblith)", case, lambda d=debiased: numpy_feature_cka(xn, yn, d), ref,
                             repeats, "feature space, float64"))
        if not debiased and n <= 2000:
            rows.append(_measure("numpy gram (Kornblith)", case, lambda: numpy_gram_cka(xn, yn), ref, repeats,
                                 "N x N Grams, float64"))
        rows.append(_measure("ckatorch", case, lambda d=debiased: float(ckatorch.cka_base(x, y, unbiased=d)), ref,
                             1 if big else repeats, "float64 N x N Grams"))
        if debiased and n <= 2000:
            rows.append(_measure("torch_cka", case, lambda: torch_cka_value(x, y), ref, repeats,
                                 "one batch of N; float32; trace(K @ L) is N^3"))
    return rows


def numpy_fastest_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s float64 code in the cheaper of its two forms for these shapes (the fastest exact peer)."""
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    if n * (dx * dx + dy * dy + dx * dy) <= n * n * (dx + dy):
        return numpy_feature_cka(x, y)
    return numpy_gram_cka(x, y)


LAYER_WIDTHS = (64, 128, 256, 512, 1024, 2048, 3072, 4096)


def layer_matrix_rows(n: int = 5000, widths: tuple[int, ...] = LAYER_WIDTHS) -> list[dict]:
    """8 x 8 linear CKA matrix between two 'networks' (one layer per width) vs looping the fastest exact peer."""
    from similarity import similarity_matrix

    g = torch.Generator().manual_seed(1)
    base = torch.randn(n, 64, generator=g)

    def network(seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return {f"layer{i}": torch.relu(base @ torch.randn(64, w, generator=gen) + torch.randn(n, w, generator=gen))
                for i, w in enumerate(widths)}

    reps_a, reps_b = network(2), network(3)
    case = f"layers {len(widths)}x{len(widths)} N={n} D={min(widths)}..{max(widths)}"
    ours_matrix: list[torch.Tensor] = []
    loop_matrix: list[torch.Tensor] = []

    def ours() -> float:
        ours_matrix[:] = [similarity_matrix(reps_a, reps_b, "linear_cka")[0]]
        return 0.0

    def loop() -> float:
        values = [[numpy_fastest_cka(a.numpy(), b.numpy()) for b in reps_b.values()] for a in reps_a.values()]
        loop_matrix[:] = [torch.tensor(values, dtype=torch.float64)]
        return 0.0

    row_ours = _measure("ours", case, ours, None, 3, "similarity_matrix, Grams/feature products reused")
    row_loop = _measure("numpy (Kornblith) x64", case, loop, None, 1,
                        "fastest exact peer (float64, feature or Gram form, whichever is cheaper) looped over pairs")
    row_ours["error"] = float((ours_matrix[0] - loop_matrix[0]).abs().max())  # vs the float64 loop
    return [row_ours, row_loop]


@contextlib.contextmanager
def _threads(count: int | None):
    """torch and every BLAS held to `count` threads inside the block (None: leave them as they are)."""
    if count is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        torch.set_num_threads(previous)


def rsa_rows(n: int, d: int, threads: int | None = None) -> list[dict]:
    import rsatoolbox
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    from similarity import rsa_similarity

    x, y = make_pair(n, d, seed=4)
    xn, yn = x.numpy(), y.numpy()
    ref = float(spearmanr(pdist(xn.astype(np.float64), "correlation"),
                          pdist(yn.astype(np.float64), "correlation")).statistic)

    def toolbox() -> float:
        rdm_x = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(xn), method="correlation")
        rdm_y = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(yn), method="correlation")
        return float(rsatoolbox.rdm.compare(rdm_x, rdm_y, method="spearman").item())

    case = f"rsa N={n} D={d}" + (f", {threads} thread{'s' * (threads > 1)}" if threads else "")
    values: dict[str, float] = {}

    def ours() -> float:
        values["ours"] = rsa_similarity(x, y)
        return values["ours"]

    def theirs() -> float:
        values["rsatoolbox"] = toolbox()
        return values["rsatoolbox"]

    with _threads(threads):
        row_ours = _measure("ours", case, ours, ref, 3, "1 - Pearson RDM (float32 products), Spearman")
        row_toolbox = _measure("rsatoolbox", case, theirs, ref, 3,
                               "calc_rdm(correlation) + compare(spearman); float32 data stay float32 in its RDM")
    row_ours["note"] += f"; |ours - rsatoolbox| = {abs(values['ours'] - values['rsatoolbox']):.1e}"
    return [row_ours, row_toolbox]


def run(quick: bool = False) -> list[dict]:
    """All similarity perf rows; quick=True runs the N=2,000, D=512 cases and a small layer matrix (~1-2 min)."""
    sizes = [(2000, 512)] if quick else [(2000, 512), (2000, 4096), (10_000, 512), (10_000, 4096)]
    rows: list[dict] = []
    for n, d in sizes:
        rows += linear_rows(n, d)
    rows += rsa_rows(2000, 512)
    rows += rsa_rows(2000, 512, threads=1)  # rsatoolbox uses one core; so do we here
    if quick:
        rows += layer_matrix_rows(1000, tuple(w // 4 for w in LAYER_WIDTHS))
    else:
        rows += rsa_rows(2000, 4096)
        rows += layer_matrix_rows()
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks.perf.__main__ import ratio_lines

    for line in ratio_lines(run(quick="--quick" in sys.argv)):
        print(line)

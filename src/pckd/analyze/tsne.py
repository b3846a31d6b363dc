"""Fig. 8: scikit-learn's t-SNE of penultimate features, coloured by class (the command is not written yet).

Features wider than 50 are first reduced to 50 dimensions by PCA (the usual t-SNE preprocessing; it keeps the
run time of 2,000 points near 12 s on a 2-core CPU), then embedded with a fixed seed and PCA initialisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pckd.analyze.output import class_label, new_figure, save_figure
from pckd.errors import UserError

PCA_DIMS = 50


def select_points(labels: np.ndarray, classes: list[int], limit: int) -> np.ndarray:
    """Positions of at most ``limit`` images of ``classes``, balanced: taken round-robin over the classes, each
    class's images in dataset order; returned in ascending position."""
    y = np.asarray(labels)
    queues = [list(np.flatnonzero(y == k)) for k in classes]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(int(q[depth]))
        depth += 1
    return np.array(sorted(chosen), dtype=np.int64)


def embed(features: np.ndarray, seed: int, perplexity: float, iterations: int) -> np.ndarray:
    """2-D t-SNE coordinates [N, 2] of ``features`` [N, d] (PCA to 50 dims first when d > 50); the perplexity is
    lowered to (N - 1) / 3 when there are few points. UserError for fewer than 5 points."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    if x.shape[0] < 5:
        raise UserError(f"the t-SNE needs at least 5 test images of the chosen classes, got {x.shape[0]}; "
                        "set analyze.classes=... or raise data.test_limit")
    if x.shape[1] > PCA_DIMS and x.shape[0] > PCA_DIMS:
        x = PCA(PCA_DIMS, random_state=seed).fit_transform(x).astype(np.float32)
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (x.shape[0] - 1) / 3), init="pca",
                random_state=seed, max_iter=iterations)
    return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def neighbour_agreement(coords: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Mean over points of the share of its ``k`` nearest neighbours (Euclidean, itself excluded) with its
    class: 1 when the classes form separate clusters, about 1/K for a random map."""
    c = np.asarray(coords, dtype=np.float64)
    y = np.asarray(labels)
    k = min(k, c.shape[0] - 1)
    dist = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return float((y[nearest] == y[:, None]).mean())


def plot_tsne(panels: list[tuple[str, np.ndarray, np.ndarray]], names: list[str], path: Path, title: str) -> Path:
    """One scatter per (name, coords [N, 2], labels [N]) panel, side by side, coloured by class, with one class
    legend; each panel's title gives its k-NN class agreement."""
    from matplotlib import colormaps

    classes = sorted({int(k) for _, _, y in panels for k in np.asarray(y)})
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    fig = new_figure(4.6 * len(panels) + 2.2, 5.0)
    handles = []
    for n, (who, coords, labels) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), n + 1)
        c, y = np.asarray(coords), np.asarray(labels)
        for i, k in enumerate(classes):
            pick = y == k
            dots = ax.scatter(c[pick, 0], c[pick, 1], s=6, alpha=0.75, color=cmap(i % cmap.N), label=class_label(names, k))
            if n == 0:
                handles.append(dots)
        ax.set_title(f"{who}\n5-NN class agreement {neighbour_agreement(c, y):.3f}", fontsize=10)
        ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2" if n == 0 else None, xticks=[], yticks=[])
    fig.legend(handles, [h.get_label() for h in handles], loc="center right", title="class", fontsize=8,
               markerscale=2.5, frameon=False)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.05, right=1 - 1.5 / fig.get_figwidth(), top=0.84, bottom=0.08, wspace=0.08)
    return save_figure(fig, path)

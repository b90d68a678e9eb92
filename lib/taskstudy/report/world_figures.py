"""Figures of the data: every task's label drawn as an image, galleries of scenes and objects with their labels, and
a task network's predictions beside the targets (chapters 01 and 02)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from taskstudy.world import data, scenes
from taskstudy.world import tasks as taskdict

GROUPS = ("2D", "3D", "geometry", "semantic", "held_out")


def _as_image(task: taskdict.Task, label: np.ndarray) -> tuple[np.ndarray, dict]:
    """A displayable image for one sample's label and the imshow arguments."""
    if task.kind == "pixel_classification":
        return label, {"cmap": "tab20", "vmin": 0, "vmax": 19, "interpolation": "nearest"}
    x = np.asarray(label, dtype=np.float32)
    if x.shape[0] == 3:
        if task.name == "normals":
            x = (x + 1) / 2
        return np.clip(x.transpose(1, 2, 0), 0, 1), {}
    if x.shape[0] == 2:  # curvature: the first principal curvature
        x = x[0:1]
    return x[0], {"cmap": "magma"}


def label_panel(ax: plt.Axes, task: taskdict.Task, label: np.ndarray) -> None:
    """Draw one sample's label of `task` on `ax`: an image for pixel tasks, bars or text otherwise."""
    ax.set_xticks([])
    ax.set_yticks([])
    if task.kind.startswith("pixel"):
        img, kw = _as_image(task, label)
        ax.imshow(img, **kw)
    elif task.kind in ("regression", "distribution"):
        v = np.ravel(label)
        ax.bar(range(len(v)), v, color="tab:blue")
        ax.axhline(0, color="k", lw=0.5)
        if task.name == "class_object":
            ax.set_xticks(range(len(v)), [c[:3] for c in scenes.OBJECT_CLASSES], fontsize=5, rotation=90)
    else:
        name = scenes.ROOM_TYPES[int(label)] if task.name == "class_scene" else f"class {int(label)}"
        ax.text(0.5, 0.5, name, ha="center", va="center", fontsize=8, transform=ax.transAxes)


def task_gallery(split_data: dict[str, np.ndarray], group: str, indices: Sequence[int], seed: int) -> plt.Figure:
    """Rows = scenes, columns = the clean image, then each task of `group`: its input when it is not the clean
    image (denoising, colorization, inpainting, jigsaw) and its target."""
    names = [n for n, t in taskdict.TASKS.items() if t.group == group]
    cols: list[tuple[str, str]] = [("rgb", "image")]
    for n in names:
        if taskdict.TASKS[n].input != "rgb":
            cols.append((n, "input"))
        cols.append((n, "target"))
    fig, axes = plt.subplots(len(indices), len(cols), figsize=(1.25 * len(cols), 1.35 * len(indices)),
                             squeeze=False)
    for r, i in enumerate(indices):
        for c, (name, what) in enumerate(cols):
            ax = axes[r, c]
            if name == "rgb":
                label_panel(ax, taskdict.TASKS["autoencoding"], split_data["rgb"][i])
            elif what == "input":
                x = data.task_input({k: v[i : i + 1] for k, v in split_data.items() if k != "rgb_targets"},
                                    name, seed)[0].numpy()
                label_panel(ax, taskdict.TASKS["autoencoding"], x)
            else:
                label_panel(ax, taskdict.TASKS[name], data.target(split_data, name)[i].numpy())
            if r == 0:
                ax.set_title(f"{name}\n({what})" if what == "input" else name, fontsize=7)
    fig.suptitle(f"{group} tasks", fontsize=10)
    fig.tight_layout()
    return fig


def _as_label(task: taskdict.Task, pred: np.ndarray) -> np.ndarray:
    """A network output turned into the label's form: class ids from logits, a distribution from logits."""
    if task.loss_name == "ce":
        return pred.argmax(0)
    if task.loss_name == "kl":
        e = np.exp(pred - pred.max())
        return e / e.sum()
    return pred


def prediction_gallery(results: dict, test: dict[str, np.ndarray], task_names: Sequence[str], n: int) -> plt.Figure:
    """Rows = tasks; for each of `n` test scenes the target and the task network's prediction side by side."""
    fig, axes = plt.subplots(len(task_names), 2 * n + 1, figsize=(1.2 * (2 * n + 1), 1.2 * len(task_names)),
                             squeeze=False)
    for r, name in enumerate(task_names):
        task = taskdict.TASKS[name]
        target = data.target(test, name).numpy()
        preds = results[name]["predictions"]
        axes[r, 0].text(0.5, 0.5, name, ha="center", va="center", fontsize=7, transform=axes[r, 0].transAxes)
        axes[r, 0].axis("off")
        for i in range(n):
            label_panel(axes[r, 1 + 2 * i], task, target[i])
            label_panel(axes[r, 2 + 2 * i], task, _as_label(task, preds[i]))
            if r == 0:
                axes[r, 1 + 2 * i].set_title(f"scene {i}\ntarget", fontsize=7)
                axes[r, 2 + 2 * i].set_title(f"scene {i}\nprediction", fontsize=7)
    fig.tight_layout()
    return fig


def object_gallery(images: np.ndarray, labels: np.ndarray, names: Sequence[str], columns: int, title: str
                   ) -> plt.Figure:
    """One image per class of an object world (images (N, 3, H, W) in [0, 1]; the first image of each label),
    in class order, `columns` per row, each titled with its class name."""
    first = [int(np.flatnonzero(labels == k)[0]) for k in range(len(names)) if (labels == k).any()]
    rows = -(-len(first) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.65 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, first, strict=False):
        ax.imshow(images[i].transpose(1, 2, 0).clip(0, 1), interpolation="nearest")
        ax.set_title(names[int(labels[i])], fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig

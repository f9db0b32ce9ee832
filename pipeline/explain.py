"""Attention heat-maps per face: what each head of the network looked at.

DAN: each head's multi-scale spatial map (the ReLU'd sum over channels that multiplies x);
MACA-Net: each head's sigmoid gate; MHAN: each head's map (channel mean of a_h ⊗ a_w · s);
HAFEM: CBAM's spatial attention. An optimised DAN or MACA-Net gives the maps its fused op
computes (`ferfuse.engine.attention_maps`); otherwise they are read off the modules with forward
hooks, as a Grad-CAM script would, without replacing anything by hand."""
from dataclasses import dataclass

import numpy as np
import torch

from .. import engine
from .predict import FacePipeline
from .sources import Frame, read_image


def _hooks(model):
    """(module, how its output becomes a B×H×W map) for each attention module of `model`."""
    found = []
    for _, m in model.named_modules():
        sa = getattr(m, "sa", None)
        if isinstance(getattr(sa, "gate", None), torch.nn.Module):
            found.append((sa.gate, lambda out: out[:, 0]))
        elif isinstance(getattr(sa, "relu", None), torch.nn.Module):
            found.append((sa.relu, lambda out: out.sum(dim=1)))
        elif isinstance(getattr(m, "spatial", None), torch.nn.Conv2d) and hasattr(m, "mlp"):
            found.append((m.spatial, lambda out: torch.sigmoid(out)[:, 0]))
    return found


@torch.no_grad()
def attention_maps(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """B×K×H×W attention maps of `model` (optimised or not) for preprocessed `images`."""
    fused = engine.attention_maps(model, images)
    if fused is not None:
        return fused.float()
    # one map per attention module, the last call's: an optimised model's first call at a new shape
    # runs its forward more than once (it times its executors there), each run calling the hooks
    captured, handles = {}, []
    for i, (module, to_map) in enumerate(_hooks(model)):
        handles.append(module.register_forward_hook(lambda mod, inp, out, i=i, f=to_map: captured.__setitem__(i, f(out))))
    try:
        output = model(images)
    finally:
        for handle in handles:
            handle.remove()
    if captured:
        return torch.stack([captured[i] for i in sorted(captured)], dim=1).float()
    heads = output[2] if isinstance(output, (tuple, list)) and len(output) == 3 else None
    if isinstance(heads, (list, tuple)) and heads and heads[0].dim() == 4:  # MHAN: per-head C×H×W maps
        return torch.stack([h.mean(dim=1) for h in heads], dim=1).float()
    raise ValueError(f"{type(model).__name__}: no attention maps found (DAN/MACA-Net heads, MHAN heads or CBAM)")


@dataclass
class Explanation:
    box: list[int]
    crop: np.ndarray              # RGB uint8, the face as found
    maps: np.ndarray              # K×h×w float32, at the network's map resolution
    label: str
    scores: dict[str, float]


def explain(pipeline: FacePipeline, image) -> list[Explanation]:
    """Per face in `image` (a path or an RGB array): its crop, its K maps, its label and scores."""
    rgb = read_image(image) if isinstance(image, str) else np.asarray(image)
    prepared = pipeline.prepare(Frame(str(image) if isinstance(image, str) else "image", rgb))
    if not len(prepared.boxes):
        return []
    maps = attention_maps(pipeline.model, prepared.crops.to(pipeline.device)).cpu()
    logits = pipeline.infer(prepared.crops)
    out = []
    for box, m, (label, scores) in zip(prepared.boxes.tolist(), maps, pipeline.classify(logits)):
        x1, y1, x2, y2 = box
        out.append(Explanation(box, rgb[y1:y2, x1:x2].copy(), m.numpy(), label, scores))
    return out


def render(explanations: list[Explanation], path: str, title: str = "") -> str:
    """One row per face: the crop with its top scores, then each head's map over the crop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not explanations:
        raise ValueError("no face to explain")
    k = max(len(e.maps) for e in explanations)
    fig, axes = plt.subplots(len(explanations), k + 1, figsize=(2.6 * (k + 1), 2.9 * len(explanations)), squeeze=False)
    for row, e in zip(axes, explanations):
        row[0].imshow(e.crop)
        top = sorted(e.scores.items(), key=lambda kv: -kv[1])[:3]
        row[0].set_title("\n".join(f"{name} {p:.2f}" for name, p in top), fontsize=8)
        h, w = e.crop.shape[:2]
        for i, ax in enumerate(row[1:]):
            ax.axis("off")
            if i >= len(e.maps):
                continue
            ax.imshow(e.crop)
            ax.imshow(e.maps[i], cmap="jet", alpha=0.45, extent=(0, w, h, 0), interpolation="bilinear")
            ax.set_title(f"head {i}: [{e.maps[i].min():.2g}, {e.maps[i].max():.2g}]", fontsize=8)
        row[0].axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

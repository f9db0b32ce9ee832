"""What every ferfuse network shares: checkpoint loading, label orders, and `optimize()`."""
import os

import torch
import torch.nn as nn

from .checkpoint import load_into, load_state_dict

# Label orders are contracts with users' checkpoints (../shared/spec/models.md).
LABELS = {
    "rafdb": ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"),
    "affectnet8": ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"),
    "affectnet7": ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"),
    "ferplus": ("Neutral", "Happiness", "Surprise", "Sadness", "Anger", "Disgust", "Fear", "Contempt"),
    "fer2013": ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FERModel(nn.Module):
    """Base of ferfuse's networks. `input_size` is (channels, height, width) of eval inputs."""

    input_size: tuple[int, int, int] = (3, 224, 224)

    @classmethod
    def config_from_state_dict(cls, state: dict[str, torch.Tensor]) -> dict:
        """Constructor arguments that a state_dict implies: heads and classes for the multi-head
        networks; overridden where a model has other arguments."""
        return cls.heads_and_classes(state)

    @staticmethod
    def heads_and_classes(state: dict[str, torch.Tensor]) -> dict:
        """`num_heads` from the `cat_head<i>` keys and `num_classes` from `fc.weight`."""
        config = {"num_heads": len({k.split(".")[0] for k in state if k.startswith("cat_head")})}
        if "fc.weight" in state:
            config["num_classes"] = state["fc.weight"].shape[0]
        return config

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs):
        """Build the model from a local checkpoint (weights_only load, upstream wrappers stripped).

        Constructor arguments not given are read off the checkpoint's shapes; given ones that
        disagree with it raise a CheckpointError naming both sizes.
        """
        state = load_state_dict(path)
        config = {**cls.config_from_state_dict(state), **kwargs}
        return load_into(cls(**config), state, source=os.fspath(path))

    def optimize(self, **options):
        """Fuse this model in place for inference; see `ferfuse.engine.optimize`."""
        from ferfuse.engine import optimize  # the one place models reach the engine

        return optimize(self, **options)

    @staticmethod
    def preprocess_transform(size: int | tuple[int, int]):
        """Eval preprocessing of a PIL RGB image: bilinear resize to `size` (H, W), [0, 1],
        ImageNet mean and std."""
        from torchvision import transforms

        size = (size, size) if isinstance(size, int) else tuple(size)
        return transforms.Compose([
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as a trained model has
    (fresh BNs are the identity in eval mode, which would hide folding mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            if m.affine:
                m.weight.copy_(0.75 + 0.5 * torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model

"""The user's job around the engine: faces found in images, folders, videos and cameras,
classified by one batched optimised model; evaluation on labelled data; attention heat-maps."""
from .detect import HaarDetector, whole_image
from .predict import Face, FacePipeline, FrameResult, resolve_labels
from .sources import Failure, Frame

__all__ = ["FacePipeline", "Face", "FrameResult", "Frame", "Failure", "HaarDetector", "whole_image",
           "resolve_labels"]

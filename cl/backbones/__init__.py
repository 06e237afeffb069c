"""Backbones: timm models wrapped to expose features, tokens and their blocks."""

from cl.backbones.timm_backbone import Backbone, BackboneWeightsError

__all__ = ["Backbone", "BackboneWeightsError"]

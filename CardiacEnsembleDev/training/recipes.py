"""The member zoo as data: which networks we train, and how.

Different smp architectures on light encoders, and 2D or 2.5D input, so that they make
different mistakes (the point of an ensemble) while the shipped five stay under 20 M parameters:
40 MB in fp16, the shipping budget, and fast enough for a 2-core CPU.
"""
from __future__ import annotations

import re

from CardiacEnsembleLib.inference.members import MemberSpec
from CardiacEnsembleLib.inference.preprocess import PreprocessSpec

PREPROCESS = PreprocessSpec(spacing_mm=1.5, clip_percentiles=(0.5, 99.5), size_multiple=32)

RECIPES: dict[str, dict] = {
    "unet-mnv2": {"arch": "Unet", "encoder": "mobilenet_v2",
                  "model_kwargs": {"decoder_channels": [128, 64, 32, 16, 8]}},
    "linknet-mnv2": {"arch": "Linknet", "encoder": "mobilenet_v2", "model_kwargs": {}},
    "fpn-mnv2": {"arch": "FPN", "encoder": "mobilenet_v2",
                 "model_kwargs": {"decoder_segmentation_channels": 64}},
    "deeplabv3plus-mnv2": {"arch": "DeepLabV3Plus", "encoder": "mobilenet_v2",
                           "model_kwargs": {}},
    # Nested skip paths: a second full-resolution decoder unlike the U-Net's, slim enough
    # (6.5 MB in fp16) that five members still fit the 40 MB budget.
    "unetpp-mnv2": {"arch": "UnetPlusPlus", "encoder": "mobilenet_v2",
                    "model_kwargs": {"decoder_channels": [64, 32, 16, 16, 8]}},
    # The same nested decoder with squeeze-and-excitation attention on every block, started from
    # another member's encoder and seed: a second strong full-resolution member whose errors
    # differ from the first's (7.0 MB in fp16; it takes DeepLabV3+'s place in the budget). The
    # last block has 16 channels, not 8: attention squeezes channels 16-fold.
    "unetpp-scse-mnv2": {"arch": "UnetPlusPlus", "encoder": "mobilenet_v2",
                         "model_kwargs": {"decoder_channels": [64, 32, 16, 16, 16],
                                          "decoder_attention_type": "scse"}},
    # 2.5D versions of the 2D members: the slices below and above as two more
    # input channels (`context_slices`), fine-tuned from the 2D member with its first
    # convolution inflated (the neighbours' weights start at zero). Same size as the 2D member
    # (+0.001 MB), so one can take the other's place in the budget.
    "unet25d-mnv2": {"arch": "Unet", "encoder": "mobilenet_v2", "context_slices": 1,
                     "model_kwargs": {"decoder_channels": [128, 64, 32, 16, 8]}},
    "unetpp25d-mnv2": {"arch": "UnetPlusPlus", "encoder": "mobilenet_v2", "context_slices": 1,
                       "model_kwargs": {"decoder_channels": [64, 32, 16, 16, 8]}},
    "unetpp-scse25d-mnv2": {"arch": "UnetPlusPlus", "encoder": "mobilenet_v2",
                            "context_slices": 1,
                            "model_kwargs": {"decoder_channels": [64, 32, 16, 16, 16],
                                             "decoder_attention_type": "scse"}},
    "fpn25d-mnv2": {"arch": "FPN", "encoder": "mobilenet_v2", "context_slices": 1,
                    "model_kwargs": {"decoder_segmentation_channels": 64}},
    "linknet25d-mnv2": {"arch": "Linknet", "encoder": "mobilenet_v2", "context_slices": 1,
                        "model_kwargs": {}},
    # A transformer encoder (SegFormer's MiT-B0, 3.7 M parameters, 7.4 MB in fp16) with an
    # all-MLP head at 1/4 resolution: every other member is a MobileNetV2 CNN, and the 1.4
    # ensemble no longer gains from more members of that family (research/member_pool.py),
    # so the next member has to err differently. 2.5D from the start; trained from scratch
    # (no downloads here).
    "segformer25d-mitb0": {"arch": "Segformer", "encoder": "mit_b0", "context_slices": 1,
                           "model_kwargs": {}},
}


def recipe_spec(name: str, version: str = "0", member_name: str = "") -> MemberSpec:
    """A fresh spec for a named recipe (an unknown name raises ValueError listing the known
    ones: the command line prints it as one line, exit status 2).

    The member is named after its recipe unless `member_name` says otherwise: two members of one
    recipe trained from different seeds (a deep ensemble's independent draws) need two names
    to sit in one ensemble.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown member recipe {name!r}; known: {', '.join(RECIPES)}")
    if member_name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", member_name):
        raise ValueError(f"member name {member_name!r}: use letters, digits, '.', '_' and '-' "
                         "only (it names folders and archives)")
    recipe = RECIPES[name]
    return MemberSpec(name=member_name or name, arch=recipe["arch"], encoder=recipe["encoder"],
                      model_kwargs=dict(recipe["model_kwargs"]), preprocess=PREPROCESS,
                      context_slices=recipe.get("context_slices", 0), version=version)

"""OpenAI's ``clip`` API on clip_tf (``import clip_tf as clip``): the TensorFlow tensor adapter of
:func:`conversion.openai_api.openai_api`, which builds ``available_models``, ``tokenize`` and ``load``."""
from __future__ import annotations

import numpy as np

from conversion.openai_api import TensorAdapter, openai_api

__all__ = ["load", "tokenize", "available_models"]

available_models, tokenize, load = openai_api(TensorAdapter("clip_tf", "tf", np.int32))

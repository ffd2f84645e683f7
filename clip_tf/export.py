"""SavedModel export with serving signatures for text and image features."""
from __future__ import annotations

import os
from typing import Union

import tensorflow as tf

__all__ = ["export_saved_model"]


def export_saved_model(model, path: Union[str, os.PathLike]) -> str:
    """Write a SavedModel with signatures ``get_text_features`` (int ``input_ids`` (B, T) and
    ``attention_mask`` in) and ``get_image_features`` (float32 pixels (B, C, H, W) in), each returning
    ``{"text_embeds" | "image_embeds": (B, projection_dim)}``. Text runs only up to the last EOT.

    Reload with ``tf.saved_model.load(path).signatures["get_text_features"](input_ids=..., attention_mask=...)``.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    if hasattr(model, "_text_embeds_prefix"):
        archive.add_endpoint(
            "get_text_features",
            lambda input_ids, attention_mask: {"text_embeds": model._text_embeds_prefix(input_ids, attention_mask)},
            input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                             tf.TensorSpec([None, None], tf.int32, name="attention_mask")])
    if hasattr(model, "_image_embeds"):
        archive.add_endpoint(
            "get_image_features", lambda pixel_values: {"image_embeds": model._image_embeds(pixel_values)},
            input_signature=[model._pixel_spec()])
    archive.write_out(str(path), verbose=False)
    return str(path)

"""Helpers shared by the command-line tests."""
from __future__ import annotations

from clip_zoo.__main__ import main


def run_cli(capsys, *argv):
    """``main(argv)`` in-process → (exit status, stdout, stderr); a SystemExit's code is the status."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exit_:
        rc = exit_.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def tiny_pipeline_model(directory):
    """A tiny random ViT checkpoint at 16 px (patch 8) written under ``directory``: for tests about the
    embedding pipeline, not the model."""
    import conversion
    from clip_core.config import CLIPConfig
    from clip_core.testing import random_weights, tiny_vit_config

    base = tiny_vit_config(image_size=16, patch_size=8)
    cfg = CLIPConfig(text_config=base.text_config, vision_config=base.vision_config, projection_dim=16)
    path = directory / "tiny"
    conversion.save_checkpoint(path, cfg, random_weights(cfg, seed=2))
    return path

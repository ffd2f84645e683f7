"""clip_flax (work in progress)."""

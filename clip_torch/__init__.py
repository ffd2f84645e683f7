"""clip_torch (work in progress)."""

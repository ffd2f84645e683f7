"""clip_zoo (work in progress)."""

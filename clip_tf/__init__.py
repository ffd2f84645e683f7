"""clip_tf (work in progress)."""

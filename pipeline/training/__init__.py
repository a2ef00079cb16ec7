"""training: see README, "Where things live"."""

"""sampling: see README, "Where things live"."""

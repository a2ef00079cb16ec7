"""core: see README, "Where things live"."""

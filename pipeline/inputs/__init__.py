"""inputs: see README, "Where things live"."""

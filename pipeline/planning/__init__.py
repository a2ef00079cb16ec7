"""planning: see README, "Where things live"."""

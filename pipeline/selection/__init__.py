"""selection: see README, "Where things live"."""

"""evaluation: see README, "Where things live"."""

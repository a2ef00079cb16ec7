"""ttft: see README, "Where things live"."""

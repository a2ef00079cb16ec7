"""kaggle: see README, "Where things live"."""

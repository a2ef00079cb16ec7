"""arc-ttft: an ARC Prize pipeline (multi-task LoRA fine-tuning, per-task test-time fine-tuning,
augmented sampling, voting, offline Kaggle notebook). Run `python -m pipeline --help` for stages."""

__version__ = "0.1.0"

"""Build the Kaggle notebooks from `pipeline/` and `kaggle/configs/*.yaml`; run one locally.

    python -m notebook_builder build --config kaggle/configs/arc-prize-2025.yaml --output build/arc-prize-2025.ipynb
    python -m notebook_builder run --config kaggle/configs/local.yaml --workdir runs/dry-run
"""

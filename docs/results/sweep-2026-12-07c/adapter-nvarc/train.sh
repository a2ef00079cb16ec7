# issue 25 item 2: the ARC adapter retrained in the nvarc format on the reduced vocabulary (the dry run's model:
# shrink-vocab of the embedded SmolLM2-135M for nvarc from synthetic grids), SmolLM's lr 1e-3, bf16, 1 thread.
cd /work/wt/s4b
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec .venv/bin/python -m pipeline finetune --model_path /work/adapter-nvarc/model --format nvarc \
  --train_datasets data/training/arc-train.json nvarc \
  --val_dataset /work/adapter-nvarc/bench20.json nvarc \
  --max_seq_len 1024 --remove_train_samples_to_fit_max_seq_len \
  --lora_r 32 --lora_target all-linear --lora_dropout 0 \
  --per_device_train_batch_size 4 --batch_size 4 --learning_rate 1e-3 --lr_scheduler_type cosine \
  --warmup_ratio 0.1 --max_steps "${STEPS:-100}" --logging_steps 5 --eval_steps 25 --save_steps 25 --save_total_limit 4 \
  --torch_dtype bfloat16 --random_seed 4 --output_dir "${OUT:-/work/adapter-nvarc/run}"

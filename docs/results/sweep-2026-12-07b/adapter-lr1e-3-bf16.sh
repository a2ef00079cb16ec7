cd /work/wt/s3
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pipeline finetune --model_path embedded --adapter_path models/smollm2-135m-arc-lora \
  --train_datasets data/training/arc-train.json output-from-examples-v1 \
  --train_datasets data/training/arc-train.json input-from-inputs-v0 \
  --val_dataset runs/bench20.json output-from-examples-v1 \
  --max_seq_len 1024 --remove_train_samples_to_fit_max_seq_len \
  --per_device_train_batch_size 4 --batch_size 4 --learning_rate 1e-3 --lr_scheduler_type cosine \
  --warmup_ratio 0.1 --max_steps 100 --logging_steps 5 --eval_steps 25 --save_steps 25 --save_total_limit 4 \
  --torch_dtype bfloat16 --random_seed 3 --output_dir runs/arc-lora-3

"""The GPU fast path: packed batches, varlen attention, fused LoRA, CUDA graphs. Only `training.finetune` calls it.

settings (FastSettings, FastResult), engine (`train_fast`), packing, lora (fused LoRA layers), ops (kernels),
graphs (CUDA graphs), baseline (the textbook Trainer recipe the benchmarks compare against).
"""

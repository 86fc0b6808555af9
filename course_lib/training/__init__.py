"""Module 04, training: the Hugging Face Trainer configured by hand, and the course's fine-tuning entry points.

config (TrainConfig onto TrainingArguments), callbacks, trainer (`train`, `evaluate_loss`), finetune
(`finetune_lora`, `finetune_qlora`), methods (full, freezing, BitFit, prompt tuning, LoRA, IA3, prefix tuning, DoRA), sweep, resume, plots.
"""

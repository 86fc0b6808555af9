"""Module 06, deployment: save, merge and prove it, load safely, quantize, switch adapters, write a model card.

adapters (save/load, merge and verify, quantized variants, adapter switching), qlora_merge (a QLoRA adapter merged
into NF4(W) and into W, measured against the unmerged model), model_card, serving.
"""

"""Module 06, deployment: save, merge and prove it, load safely, quantize, switch adapters, write a model card.

adapters (save/load, merge and verify, quantized variants, adapter switching), model_card, serving.
"""

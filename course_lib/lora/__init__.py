"""Module 02, LoRA math: low rank from the SVD, LoRA written by hand and matched against peft.

lowrank (SVD, Eckart-Young), layer (LoRALinear, inject, merge, parameter counts), experiments (the short loops of
notebook 02: ours next to peft, the rsLoRA rank experiment).
"""

"""Module 03, QLoRA: quantization by hand, 4-bit loading with bitsandbytes, and memory planning.

quantize (absmax, NF4, double quantization by hand), bnb (4-bit NF4 loading, k-bit preparation), memory (the one
memory planner), memory_check (measure peaks and compare them with the planner), provenance (where the course
model's weights come from: the offline file's Q4_1 grid).
"""

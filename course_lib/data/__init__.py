"""Module 01, data formatting: raw rows to training tokens.

formats (completion, instruction, chat), validate (reject bad rows by name), tokenize (chat template, loss masks),
packing, splits (dedup, leakage-free splits), pipeline (files to tokenized splits), plots.
"""

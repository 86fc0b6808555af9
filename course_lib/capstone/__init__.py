"""Module 08, the capstone: a task no other notebook uses, and the grading of a learner's adapter on hidden data.

support (support-ticket triage: the generator, public splits, the hidden test split, the score), adapter_check (what
a submitted LoRA adapter folder may hold), evaluate (an adapter's score on tickets; `python -m` runs one job).
"""

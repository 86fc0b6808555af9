"""Module 05, evaluation: metrics with intervals, the one generation loop, and classification.

metrics (exact match, perplexity, JSON fields, ROUGE/BLEU/chrF), intervals (bootstrap, paired comparison), generate
(batched generation with safe defaults), classify (an encoder classifier and its metrics), plots.
"""

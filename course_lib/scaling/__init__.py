"""Module 07, scaling up: the same training under `accelerate` on several processes (DDP, FSDP)."""

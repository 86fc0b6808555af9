"""How the fast path trains: the optimisation both paths honour, and the fast path's engineering switches."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from course_lib.core.models import ALL_LINEAR


@dataclass
class FastSettings:
    """How to fine-tune: the optimisation (same for both paths) and the fast path's engineering switches."""

    # the optimisation: both paths honour these
    steps: int = 50
    batch_size: int = 8  # examples per optimizer step (the recipe: micro_batch_size × accumulation)
    learning_rate: float = 2e-3
    warmup_steps: int = 5
    schedule: str = "linear"  # any transformers scheduler name: linear, cosine, constant_with_warmup, ...
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    max_length: int = 256  # longer examples are truncated
    seed: int = 0
    shuffle: bool = True
    # which path
    recipe: bool = False  # True: the textbook Trainer recipe (padding to max_length, micro-batches, plain AdamW)
    micro_batch_size: int = 8  # recipe only: examples per forward pass; accumulation = batch_size // this
    # fast path switches ("auto" decides from the device and the model)
    max_tokens: int | None = None  # micro-batch token budget; None: a whole step if memory allows
    memory_limit_gib: float | None = None  # GPU memory to stay under (default: 85 % of the GPU)
    gradient_checkpointing: bool | float | str = "auto"  # auto: only as many layers as memory demands
    offload: bool | str = "auto"  # layer inputs in host memory, MLP recomputed in chunks (fast.longctx); auto: when
    # even checkpointing every layer does not fit the longest example
    mlp_chunk_tokens: int = 8192  # with offload: tokens per MLP recomputation
    fused_lora: bool = True  # run LoRA layers through fast.lora (needs dropout 0)
    grouped_lora: bool = True  # and q/k/v, gate/up of a layer as one group: their shared input read once
    dense_cache: bool = True  # 4-bit base: keep dequantized weights in whatever memory the limit leaves spare
    optimizer: str = "auto"  # "fused" AdamW, "paged8bit" (bitsandbytes), "plain", or auto
    flash_varlen: bool = True  # flash attention's varlen kernel where it runs (Ampere+, bf16/fp16); False: padded
    # SDPA everywhere, as on a T4 (the benchmarks' stand-in for one)
    liger: bool | str = "auto"
    compile: bool | str = False  # torch.compile each decoder layer (dynamic shapes; turns Liger off); a run did
    # not finish within the benchmark's timeout, so it has no measured speed (tests/benchmarks/README.md)
    cuda_graphs: bool | str = "auto"  # replay each micro-batch's forward+backward as a CUDA graph (fast.graphs);
    # auto: on a GPU with flash attention and no dropout. True on a CPU runs the same padded shapes without graphs
    max_graphs: int = 8  # at most this many graph sizes; micro-batches are padded up to the nearest
    log_every: int = 10  # show the loss every this many steps (each read waits for the GPU; all steps are kept)
    time_from_step: int | None = None  # benchmark: time steady-state throughput from this step on

    @classmethod
    def textbook(cls, **changes) -> "FastSettings":
        """The plain recipe as most tutorials write it: Trainer + peft, pad to 512, 8 × 4 examples, dropout 0.05."""
        base = dict(recipe=True, batch_size=32, micro_batch_size=8, max_length=512, dropout=0.05,
                    learning_rate=2e-4, warmup_steps=0)
        return cls(**{**base, **changes})

    def replace(self, **changes) -> "FastSettings":
        """A copy with some fields changed."""
        return replace(self, **changes)

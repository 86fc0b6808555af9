"""CUDA graphs for the fast path: a micro-batch's whole forward and backward pass launched as one graph.

A LoRA step over 32 instruction examples is thousands of small kernels. On a fast GPU the host (Python, autograd
and the kernel launches of a step) takes longer than the GPU, which then waits (the profile is in
tests/benchmarks/README.md). A CUDA graph records the kernels of one forward-and-backward pass once; a replay launches
all of them at once, so the host stops setting the pace.

Graphs replay fixed shapes, so:

* each micro-batch is padded to its bucket's fixed size. The padding tokens form examples of their own (the
  varlen attention never mixes them with real ones) and their loss rows are ignored, so the gradients are those of
  the unpadded batch;
* the buckets come from the whole run's plan, which is known before the first step: at most `max_graphs` sizes,
  chosen by dynamic programming to pad as little as possible;
* a replay reads only fixed buffers (token ids, positions, example boundaries, targets, 1 / learned tokens), refilled
  before it, and writes only into buffers allocated once outside the graphs: the adapters' flat gradient buffer
  (`fast.ops.MasterWeights`) and a loss accumulator.

All graphs share one memory pool: one runs at a time and none leaves a tensor behind that another needs.
`StaticSteps(..., capture=False)` runs the same padded computation without graphs, which is how a CPU tests it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from course_lib.data.tokenize import IGNORE_INDEX
from course_lib.fast.ops import forward_backward
from course_lib.fast.packing import PackedBatch, learned_positions, pack_rows

ALIGN = 64  # bucket sizes are multiples of this: tensor-core friendly, and one Triton specialisation for all


@dataclass(frozen=True)
class MicroShape:
    """What fixes a micro-batch's graph: tokens, examples, learned tokens and the longest example."""

    tokens: int
    examples: int
    labels: int
    longest: int


def learned_tokens(row: dict) -> int:
    """How many positions of a row learn a token (the next label is not ignored): its rows in the loss."""
    return len(learned_positions(row.get("labels", row["input_ids"])))


def shape_of(group: Sequence[dict]) -> MicroShape:
    """The MicroShape of a micro-batch given as its rows."""
    lengths = [len(row["input_ids"]) for row in group]
    return MicroShape(sum(lengths), len(lengths), sum(learned_tokens(row) for row in group), max(lengths))


def choose_budgets(sizes: Sequence[int], max_buckets: int, align: int = ALIGN) -> list[int]:
    """At most `max_buckets` token budgets covering every size, with the least total padding (sorted ascending).

    Sizes are rounded up to `align` first; a size goes to the smallest budget that holds it. Dynamic programming
    over the distinct rounded sizes: best[k][j] is the least padding that covers the j smallest with k budgets.
    """
    if not sizes:
        raise ValueError("no micro-batch sizes to bucket")
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be at least 1, not {max_buckets}")
    while True:
        values = sorted({-(-s // align) * align for s in sizes})
        if len(values) <= 256:  # keeps the O(buckets x values^2) search well under a second
            break
        align *= 2
    counts = {v: 0 for v in values}
    for s in sizes:
        counts[-(-s // align) * align] += 1
    n = len(values)
    cnt_prefix, sum_prefix = [0] * (n + 1), [0] * (n + 1)
    for j, v in enumerate(values):
        cnt_prefix[j + 1] = cnt_prefix[j] + counts[v]
        sum_prefix[j + 1] = sum_prefix[j] + counts[v] * v

    def pad(i: int, j: int) -> int:  # values[i..j] all padded up to values[j]
        return values[j] * (cnt_prefix[j + 1] - cnt_prefix[i]) - (sum_prefix[j + 1] - sum_prefix[i])

    k_max = min(max_buckets, n)
    inf = float("inf")
    best = [[inf] * n for _ in range(k_max + 1)]
    cut = [[0] * n for _ in range(k_max + 1)]
    for j in range(n):
        best[1][j] = pad(0, j)
    for k in range(2, k_max + 1):
        for j in range(k - 1, n):
            for i in range(k - 1, j + 1):  # the last bucket holds values[i..j]
                cost = best[k - 1][i - 1] + pad(i, j)
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, k_max + 1), key=lambda kk: (best[kk][n - 1], kk))
    budgets, j = [], n - 1
    while k >= 1 and j >= 0:
        budgets.append(values[j])
        j = cut[k][j] - 1 if k > 1 else -1
        k -= 1
    return sorted(budgets)


@dataclass
class _Bucket:
    """The fixed shapes of one graph and the buffer its replays read."""

    tokens: int
    examples: int  # including at least one padding example
    labels: int
    max_seqlen: int
    staged: object = None  # int64 [2 tokens + 2 labels + examples + 1] on the device
    graph: object = None
    members: int = 0
    real_tokens: int = 0

    def split(self):
        return self.staged.split([self.tokens, self.tokens, self.labels, self.labels, self.examples + 1])


def _pad_lengths(total: int, parts: int) -> list[int]:
    """`total` padding tokens as `parts` examples, as even as possible (each at least one token)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _bucket_for(shapes: Sequence[MicroShape], align: int) -> _Bucket:
    """The smallest fixed shape that holds every micro-batch in `shapes` plus at least one padding example."""
    examples = max(s.examples for s in shapes) + 1
    tokens = max(s.tokens + examples - s.examples for s in shapes)  # every padding example gets a token
    tokens = -(-tokens // align) * align
    longest = max(max(s.longest, max(_pad_lengths(tokens - s.tokens, examples - s.examples))) for s in shapes)
    return _Bucket(tokens=tokens, examples=examples, labels=max(max(s.labels for s in shapes), 1), max_seqlen=longest)


@dataclass
class StaticSteps:
    """Fixed-shape micro-batches for a whole run, each bucket's forward and backward captured as a CUDA graph.

    `shapes` are all micro-batches the run will see (from its plan); `run(batch)` trains on one, adding its
    gradient (scaled by 1 / learned tokens of the step and any loss scale, set by `begin_step`) into the parameters' gradient
    buffers and its summed loss into `loss`.
    """

    decoder: object
    head: object
    shapes: Sequence[MicroShape]
    max_graphs: int = 8
    capture: bool = True
    align: int = ALIGN
    buckets: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def __post_init__(self):

        device = self.head.weight.device
        budgets = choose_budgets([s.tokens for s in self.shapes], self.max_graphs, self.align)
        groups: dict[int, list[MicroShape]] = {b: [] for b in budgets}
        for s in self.shapes:
            groups[next(b for b in budgets if b >= s.tokens)].append(s)
        self._budgets = [b for b in budgets if groups[b]]
        self.buckets = [_bucket_for(groups[b], self.align) for b in self._budgets]
        for bucket in self.buckets:
            size = 2 * bucket.tokens + 2 * bucket.labels + bucket.examples + 1
            bucket.staged = torch.zeros(size, dtype=torch.long, device=device)
        self.loss = torch.zeros((), dtype=torch.float32, device=device)
        self.inv_n = torch.zeros((), dtype=torch.float32, device=device)
        self._pool = self._stream = None

    # ------------------------------------------------------------------------------------------------ filling

    def bucket_of(self, batch: PackedBatch) -> _Bucket:
        """The bucket a micro-batch runs in: the first whose budget holds its tokens."""
        for budget, bucket in zip(self._budgets, self.buckets):
            if batch.tokens <= budget:
                if len(batch.lengths) >= bucket.examples or batch.label_tokens > bucket.labels \
                        or batch.max_seqlen > bucket.max_seqlen:
                    break
                return bucket
        raise ValueError(f"a micro-batch of {batch.tokens} tokens and {len(batch.lengths)} examples was not in the "
                         "plan the graphs were built for")

    def fill(self, batch: PackedBatch, bucket: _Bucket) -> None:
        """Copy `batch`, padded to the bucket's shape, into the bucket's buffer (one pinned host-to-device copy)."""

        pad_tokens = bucket.tokens - batch.tokens
        pad_lengths = _pad_lengths(pad_tokens, bucket.examples - len(batch.lengths))
        positions = torch.cat([torch.arange(n) for n in pad_lengths])
        boundaries = batch.tokens + torch.tensor(pad_lengths).cumsum(0)
        pad_labels = bucket.labels - batch.label_tokens
        host = torch.cat([
            batch.input_ids[0].cpu(), torch.zeros(pad_tokens, dtype=torch.long),
            batch.position_ids[0].cpu(), positions,
            batch.target_index.cpu(), torch.zeros(pad_labels, dtype=torch.long),
            batch.targets.cpu(), torch.full((pad_labels,), IGNORE_INDEX, dtype=torch.long),
            batch.cu_seqlens.cpu().long(), boundaries,
        ])
        if bucket.staged.is_cuda:
            host = host.pin_memory()
        bucket.staged.copy_(host, non_blocking=True)

    # ------------------------------------------------------------------------------------------------ running

    def begin_step(self, backward_scale) -> None:
        """Start an optimizer step: zero the loss, set what the loss is multiplied by before backward (1 / learned
        tokens, times the fp16 loss scale: a float, or a tensor on the device)."""
        self.loss.zero_()
        if isinstance(backward_scale, torch.Tensor):
            self.inv_n.copy_(backward_scale)
        else:
            self.inv_n.fill_(backward_scale)

    def _body(self, bucket: _Bucket) -> None:
        """One padded micro-batch: forward, token-weighted loss, backward into the gradient buffers."""

        ids, positions, index, targets, cu = bucket.split()
        cu = cu.to(torch.int32)
        part = forward_backward(self.decoder, self.head, ids.view(1, -1), positions.view(1, -1), index, targets,
                                self.inv_n, IGNORE_INDEX, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                max_length_q=bucket.max_seqlen, max_length_k=bucket.max_seqlen)
        self.loss.add_(part.float())

    def run(self, batch: PackedBatch) -> None:
        """Train on one micro-batch: fill its bucket's buffer, then replay the graph (or run eagerly)."""
        bucket = self.bucket_of(batch)
        self.fill(batch, bucket)
        bucket.members += 1
        bucket.real_tokens += batch.tokens
        if bucket.graph is not None:
            bucket.graph.replay()
        else:
            self._body(bucket)

    def capture_all(self, samples: Sequence[Sequence[dict]]) -> None:
        """Warm each bucket up on a side stream (with a zero loss scale: no gradient changes), then capture it.

        `samples` are micro-batches (as row lists) of the plan; the first one of each bucket is used.
        """

        if not self.capture:
            return
        started = time.perf_counter()
        self._stream = torch.cuda.Stream(self.loss.device)
        self._pool = torch.cuda.graph_pool_handle()
        chosen: dict[int, PackedBatch] = {}
        for group in samples:
            batch = pack_rows(group)
            index = self.buckets.index(self.bucket_of(batch))
            chosen.setdefault(index, batch)
            if len(chosen) == len(self.buckets):
                break
        self.inv_n.zero_()
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):  # kernels compiled, cuBLAS workspaces made, outside any capture
            for index in sorted(chosen, key=lambda i: -self.buckets[i].tokens):  # largest first: blocks get reused
                self.fill(chosen[index], self.buckets[index])
                self._body(self.buckets[index])
        torch.cuda.current_stream().wait_stream(self._stream)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the warm-up's cached blocks: the graphs' pool takes their place
        reserved = torch.cuda.memory_reserved(self.loss.device)
        for bucket in sorted(self.buckets, key=lambda b: -b.tokens):  # largest first: the others reuse its blocks
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
                self._body(bucket)
            bucket.graph = graph
        torch.cuda.synchronize()
        self.loss.zero_()
        self.details["capture_seconds"] = time.perf_counter() - started
        self.details["pool_gib"] = (torch.cuda.memory_reserved(self.loss.device) - reserved) / 2**30

    def release(self) -> None:
        """Drop the captured graphs and their memory pool (the buffers stay; `capture_all` can capture again)."""
        for bucket in self.buckets:
            bucket.graph = None
        self._pool = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def summary(self) -> dict:
        """What the graphs cost and saved: their sizes, how often each ran, the share of padding computed."""
        computed = sum(b.tokens * b.members for b in self.buckets)
        real = sum(b.real_tokens for b in self.buckets)
        return {"graphs": len(self.buckets), "captured": all(b.graph is not None for b in self.buckets),
                "bucket_tokens": [b.tokens for b in self.buckets],
                "padding_share": 1 - real / computed if computed else 0.0, **self.details}

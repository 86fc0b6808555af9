"""Typical wrong answers of solutions/07_scaling_up.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "07_scaling_up"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
    "train_data_parallel": "write the accelerate loop (Accelerator, prepare, backward, gather_for_metrics) and run it "
                           "on two processes: ranks stay identical and an uneven eval set is counted once",
    "cheapest_strategy": "choose among DDP and ZeRO-1/2/3 (FSDP) the cheapest in communication whose model states "
                         "plus activations fit one GPU, or none",
}

MISTAKES = [
    Mistake('07-loop-library', STEM, 'train_data_parallel', "library", "returns the course's reference loop "
            "(course_lib.scaling.ranks.reference_train)",
            new='    return reference_train(make_model, train_rows, eval_rows, collate, batch_size, epochs, lr)\n'),
    Mistake('07-loop-script', STEM, 'train_data_parallel', "library", "hands the job to the course's script "
            "(course_lib.scaling.distributed.train_distributed)",
            new='    result = train_distributed(RunConfig(model="random:tiny", data="random", steps=4, seq_len=32))\n'
                '    return {"model": torch.nn.Linear(1, 1), "losses": result.losses, "eval_losses": []}\n'),
    Mistake('07-gather-duplicates', STEM, 'train_data_parallel', "typical", "accelerator.gather instead of "
            "gather_for_metrics: the row accelerate repeats to pad the last batch is counted twice",
            old='accelerator.gather_for_metrics(loss[None])',
            new='accelerator.gather(loss[None])'),
    Mistake('07-model-not-prepared', STEM, 'train_data_parallel', "typical", "prepares the optimizer and loaders but "
            "not the model: no DDP, the gradients are never averaged and the ranks drift apart",
            old='model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, '
                'eval_loader)',
            new='optimizer, train_loader, eval_loader = accelerator.prepare(optimizer, train_loader, eval_loader)'),
    Mistake('07-local-eval', STEM, 'train_data_parallel', "typical", "keeps each rank's own evaluation losses: no "
            "gather, so the metric covers half the rows",
            old='eval_losses += accelerator.gather_for_metrics(loss[None]).tolist()',
            new='eval_losses += loss[None].tolist()'),
    Mistake('07-strategy-library', STEM, 'cheapest_strategy', "library", "returns the course's "
            "memory.cheapest_strategy",
            new='    return memory.cheapest_strategy(n_params, gpus, gpu_gb, activations_gb)\n'),
    Mistake('07-no-activations', STEM, 'cheapest_strategy', "typical", "compares only the model states with the GPU: "
            "the activations do not shrink with sharding and must fit too",
            old='+ activations_gb <= gpu_gb',
            new='<= gpu_gb'),
    Mistake('07-most-sharded', STEM, 'cheapest_strategy', "typical", "tries the most sharded strategy first: ZeRO-3 "
            "fits most often but moves the most data every step",
            old='for strategy in ("ddp", "zero1", "zero2", "zero3"):',
            new='for strategy in ("zero3", "zero2", "zero1", "ddp"):'),
]

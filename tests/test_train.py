import torch

from course_lib import tasks
from course_lib.train import LoraSettings, finetune_lora


def test_lora_run_trains_adapters_only(tiny_llama, tokenizer):
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    settings = LoraSettings(steps=4, batch_size=2, learning_rate=1e-2, warmup_steps=0, r=4, alpha=8)
    result = finetune_lora(tiny_llama, tokenizer, [tasks.to_messages(e) for e in tasks.generate(8)], settings,
                           progress=False)
    assert [row["step"] for row in result.history] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(result.losses)))
    lora = {n: p for n, p in result.model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in lora.items() if "lora_B" in n)
    for name, param in result.model.named_parameters():
        if "lora_" not in name:
            original = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, before[original]), f"{name} changed"


def test_same_seed_same_losses(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    def run():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2)
        return finetune_lora(LlamaForCausalLM(config), tokenizer, [tasks.to_messages(e) for e in tasks.generate(8)],
                             LoraSettings(steps=3, batch_size=2, r=2, alpha=4), progress=False).losses

    assert run() == run()

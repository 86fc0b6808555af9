"""llama.cpp on the exported file (course_lib.deployment.gguf_runtime): the same tokens and logits as transformers,
the OpenAI-compatible server, constrained JSON, load reports, and a server that never outlives its notebook.

llama.cpp comes with the `serve` extra (it compiles at install, about 11 minutes on 2 cores), so these tests skip
without it, naming the extra; run them with:
    .venv/bin/python -m pip install -e ".[serve]" && .venv/bin/python -m pytest tests/deployment/test_gguf_runtime.py
"""

import json
import os
import subprocess
import sys
import time

import jsonschema
import nbformat
import pytest
import torch

from course_lib.deployment import adapters, gguf_export, gguf_runtime

needs_llama_cpp = pytest.mark.skipif(
    not gguf_runtime.llama_cpp_available(),
    reason='llama.cpp is not installed: it comes with the serve extra, pip install -e ".[serve]"')


@pytest.fixture
def exported(tied_llama, tokenizer, tmp_path):
    """The tiny tied Llama and its f16 GGUF file."""
    return tied_llama, gguf_export.export_gguf(tied_llama, tokenizer, tmp_path / "tiny-f16.gguf", "f16").path


def test_without_llama_cpp_the_error_names_the_extra(monkeypatch):
    monkeypatch.setattr(gguf_runtime, "llama_cpp_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match=r"\.\[serve\]"):
        gguf_runtime.require_llama_cpp()
    with pytest.raises(ModuleNotFoundError, match="serve"):
        gguf_runtime.LlamaServer("anything.gguf")


def test_chat_request_is_greedy_and_bounded_and_constrains_only_when_asked():
    messages = [{"role": "user", "content": "hi"}]
    plain = gguf_runtime.chat_request(messages, "m", 16)
    assert plain == {"model": "m", "messages": messages, "temperature": 0.0, "max_tokens": 16}
    schema = {"type": "object"}
    assert gguf_runtime.chat_request(messages, "m", 16, schema)["response_format"] == {"type": "json_object",
                                                                                     "schema": schema}


@needs_llama_cpp
def test_llama_cpp_tokenizes_like_transformers(exported, tokenizer):
    _, path = exported
    texts = ["Lea is 30 years old; 1234567 and 3.14, ages 19-79!", "  two  spaces\tand a tab\n\nnew lines",
             "Zoë's café in São Paulo — naïve 😀 x²",
             tokenizer.apply_chat_template([{"role": "user", "content": "Meet Ana, 42."}], tokenize=False,
                                           add_generation_prompt=True)]
    for text in texts:
        assert gguf_runtime.llama_tokenize(path, text) == tokenizer(text, add_special_tokens=False)["input_ids"], text


@needs_llama_cpp
def test_llama_cpp_computes_the_same_logits(exported, tokenizer):
    import llama_cpp

    model, path = exported
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Meet Ana, 42, a nurse."}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with gguf_runtime.safe_llama_params():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=1)
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[: len(ids)])
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0]
    scale = float(ours.abs().max())
    assert scale > 5
    # f16 weights, and llama.cpp computes in its own order: well within 1% of the logits' range
    assert float((theirs - ours).abs().max()) < 0.01 * scale
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1))


@needs_llama_cpp
def test_llama_answers_times_and_counts(exported):
    _, path = exported
    run = gguf_runtime.llama_answers(path, [[{"role": "user", "content": "Hello"}]] * 2, max_tokens=5)
    assert len(run.replies) == 2 and run.replies[0] == run.replies[1]  # greedy: the same prompt, the same answer
    assert 0 < run.completion_tokens <= 10 and run.tokens_per_s > 0 and run.load_s > 0


@needs_llama_cpp
def test_safe_llama_params_switch_off_extra_buffers_only_on_amx(monkeypatch):
    import llama_cpp

    before = llama_cpp.llama_cpp.llama_model_default_params
    monkeypatch.setattr(gguf_runtime, "cpu_has_amx", lambda: True)
    with gguf_runtime.safe_llama_params():
        assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is False
    assert llama_cpp.llama_cpp.llama_model_default_params is before
    monkeypatch.setattr(gguf_runtime, "cpu_has_amx", lambda: False)
    with gguf_runtime.safe_llama_params():
        assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True


@needs_llama_cpp
def test_server_answers_constrained_json_under_load_and_stops(exported):
    _, path = exported
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"],
              "additionalProperties": False}
    with gguf_runtime.LlamaServer(path, alias="tiny") as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        client = server.client()
        assert [m.id for m in client.models.list().data] == ["tiny"]
        messages = [{"role": "user", "content": "How old is Ana?"}]
        # a random model writes anything; the grammar still forces the schema's shape
        answer = gguf_runtime.ask(client, gguf_runtime.chat_request(messages, "tiny", 64, schema))
        jsonschema.validate(json.loads(answer.reply), schema)
        report, answers = gguf_runtime.load_test(client, [gguf_runtime.chat_request(messages, "tiny", 8)] * 4,
                                                 concurrency=4)
        assert report.requests == 4 and report.p50_s <= report.p95_s <= report.wall_s
        assert report.completion_tokens == sum(a.completion_tokens for a in answers) > 0
        assert len({a.reply for a in answers}) == 1  # greedy and repeat_penalty 1.0: the same answer four times
        pid = server.process.pid
    assert not server.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@needs_llama_cpp
def test_a_failed_cell_does_not_leave_the_server_running(exported, tmp_path):
    """papermill stops at a failing cell and shuts the kernel down: the server must go with it."""
    import papermill

    _, path = exported
    pid_file = tmp_path / "server.pid"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(
            "from pathlib import Path\nfrom course_lib.deployment.gguf_runtime import LlamaServer\n"
            f"server = LlamaServer({str(path)!r}).start()\nPath({str(pid_file)!r}).write_text(str(server.process.pid))"),
        nbformat.v4.new_code_cell("raise RuntimeError('a learner cell fails')"),
        nbformat.v4.new_code_cell("server.stop()  # never reached")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "fails.ipynb")
    with pytest.raises(papermill.PapermillExecutionError, match="a learner cell fails"):
        papermill.execute_notebook(str(tmp_path / "fails.ipynb"), str(tmp_path / "out.ipynb"), progress_bar=False)
    _assert_gone(int(pid_file.read_text()), "the notebook's kernel")


@needs_llama_cpp
def test_a_killed_kernel_does_not_leave_the_server_running(exported):
    """A kernel killed outright (out of memory, SIGKILL) runs no atexit handler: the kernel must end the server."""
    _, path = exported
    kernel = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom course_lib.deployment.gguf_runtime import LlamaServer\n"
         f"server = LlamaServer({str(path)!r}).start()\nprint(server.process.pid, flush=True)\ntime.sleep(300)"],
        stdout=subprocess.PIPE, text=True)
    pid = int(kernel.stdout.readline())
    kernel.kill()
    kernel.wait()
    _assert_gone(pid, "a killed kernel")


def _assert_gone(pid: int, parent: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":  # exited, waiting for its new parent to reap it
            return
        time.sleep(0.2)
    os.kill(pid, 9)
    pytest.fail(f"the llama.cpp server (pid {pid}) outlived {parent}")


def test_loopback_requests_ignore_proxies(monkeypatch):
    """A proxy set for the machine must not capture requests to our own server on 127.0.0.1."""
    monkeypatch.setenv("http_proxy", "http://10.255.255.1:9")
    opener = gguf_runtime._no_proxy()
    assert not any(type(h).__name__ == "ProxyHandler" and h.proxies for h in opener.handlers)


def test_check_batch_logits_bound_is_stated_for_the_lossless_types():
    assert gguf_export.GGUF_TOLERANCE["f16"] < gguf_export.GGUF_TOLERANCE["q8_0"]
    assert set(gguf_export.GGUF_TOLERANCE) == set(gguf_export.GGUF_TYPES)
    assert adapters.DEFAULT_TOLERANCE["float32"] < gguf_export.GGUF_TOLERANCE["f16"]

"""Data formats (course_lib.data.formats): detect completion, instruction and chat rows and convert between them."""

import pytest

from course_lib.core import tasks
from course_lib.data import formats
from course_lib.data.formats import FormatError

CHAT = {"messages": [{"role": "system", "content": "Add."}, {"role": "user", "content": "2+2"},
                     {"role": "assistant", "content": "4"}]}
INSTRUCTION = {"instruction": "Add.", "input": "2+2", "output": "4"}


@pytest.mark.parametrize("row, fmt", [({"text": "hi"}, "completion"), (INSTRUCTION, "instruction"), (CHAT, "chat"),
                                      ({"instruction": "x", "output": "y", "input": None}, "instruction")])
def test_detect_format(row, fmt):
    assert formats.detect_format(row) == fmt


@pytest.mark.parametrize("row, words", [({}, "none of the fields"), ({"id": 3}, "none of the fields"),
                                        ({"text": "a", "messages": CHAT["messages"]}, "mixes the fields 'messages', 'text'"), ([1], "must be a dict")])
def test_detect_format_rejects_rows_that_fit_no_single_format(row, words):
    with pytest.raises(FormatError, match=words):
        formats.detect_format(row)


def test_instruction_text_has_prompt_output_and_one_eos():
    text = formats.instruction_text(INSTRUCTION, "</s>")
    assert text == formats.instruction_prompt("Add.", "2+2") + "4</s>"
    assert text.count("</s>") == 1 and text.endswith("### Response:\n4</s>")
    assert "### Input:\n2+2\n\n" in text and text.startswith(formats.INPUT_HEADER)


@pytest.mark.parametrize("missing", [None, "", "   \n"])
def test_instruction_prompt_leaves_out_an_empty_input(missing):
    prompt = formats.instruction_prompt("Say hi.", missing)
    assert "### Input" not in prompt and prompt.startswith(formats.INSTRUCTION_HEADER)
    assert prompt.endswith("### Instruction:\nSay hi.\n\n### Response:\n")


def test_eos_is_required():
    with pytest.raises(FormatError, match="EOS"):
        formats.instruction_text(INSTRUCTION, "")
    with pytest.raises(FormatError, match="EOS"):
        formats.completion_text("x", None)


def test_completion_text_appends_eos_once():
    assert formats.completion_text("abc", "<e>") == "abc<e>"
    assert formats.completion_text("abc<e>", "<e>") == "abc<e>"


def test_chat_and_instruction_convert_both_ways_exactly():
    assert formats.to_instruction(CHAT) == INSTRUCTION
    assert formats.to_chat(INSTRUCTION) == CHAT
    short = {"messages": CHAT["messages"][1:]}
    assert formats.to_instruction(short) == {"instruction": "2+2", "input": "", "output": "4"}
    assert formats.to_chat(formats.to_instruction(short)) == short
    for example in tasks.make_examples(20, seed=3):  # the course task's layout is this mapping
        chat = {"messages": tasks.to_messages(example)}
        assert formats.to_chat(formats.to_instruction(chat)) == chat


def test_to_chat_keeps_only_role_and_content():
    row = {"messages": [{"role": "user", "content": "a", "name": None}, {"role": "assistant", "content": "b"}]}
    assert formats.to_chat(row)["messages"][0] == {"role": "user", "content": "a"}


@pytest.mark.parametrize("roles", [["user", "assistant", "user", "assistant"], ["system", "assistant"], ["user"]])
def test_chats_an_instruction_row_cannot_hold_are_refused(roles):
    messages = [{"role": r, "content": "x"} for r in roles]
    with pytest.raises(FormatError, match="roles"):
        formats.messages_to_instruction(messages)


def test_completion_rows_have_no_prompt_to_convert():
    with pytest.raises(FormatError, match="no prompt"):
        formats.to_chat({"text": "x"})
    with pytest.raises(FormatError, match="no prompt"):
        formats.to_instruction({"text": "x"})


def test_to_completion_uses_the_chat_template_and_eos(tokenizer):
    text = formats.to_completion(CHAT, tokenizer)["text"]
    assert text == tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert formats.to_completion(INSTRUCTION, tokenizer)["text"].endswith("4" + tokenizer.eos_token)
    assert formats.convert({"text": "hi"}, "completion", tokenizer) == {"text": "hi" + tokenizer.eos_token}
    with pytest.raises(FormatError, match="tokenizer"):
        formats.convert(CHAT, "completion")
    with pytest.raises(FormatError, match="unknown format"):
        formats.convert(CHAT, "tsv")


def test_task_rows_in_every_format():
    example = tasks.make_examples(1)[0]
    assert formats.task_row(example, "chat") == {"messages": tasks.to_messages(example)}
    instruction = formats.task_row(example, "instruction")
    assert instruction == {"instruction": tasks.INSTRUCTION, "input": example.text, "output": example.answer_json()}
    assert formats.task_row(example, "completion", "<e>")["text"] == formats.instruction_text(instruction, "<e>")
    with pytest.raises(FormatError):
        formats.task_row(example, "completion")


def test_convert_to_each_prompted_format():
    assert formats.convert(INSTRUCTION, "chat") == CHAT
    assert formats.convert(CHAT, "instruction") == INSTRUCTION
    assert formats.convert(INSTRUCTION, "instruction") == INSTRUCTION

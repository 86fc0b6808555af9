"""Data plots (course_lib.data.plots): the token picture and the length and padding-waste plots."""

import matplotlib

matplotlib.use("Agg")

from course_lib.data import packing, plots, tokenize  # noqa: E402


def test_token_picture_has_one_box_per_token_shaded_by_label(tokenizer):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    row = tokenize.tokenize_chat(chat, tokenizer)
    ax = plots.plot_tokens(row, tokenizer)
    boxes = [t for t in ax.texts]
    assert len(boxes) == len(row["input_ids"])
    colors = [matplotlib.colors.to_hex(t.get_bbox_patch().get_facecolor()) for t in boxes]
    expected = [plots.LEARNED_COLOR if label != tokenize.IGNORE_INDEX else plots.MASKED_COLOR
                for label in row["labels"]]
    assert colors == expected
    assert "learned" in ax.get_title(loc="left")
    short = plots.plot_tokens(row, tokenizer, max_tokens=5)
    assert len(short.texts) == 5 and "first 5 shown" in short.get_title(loc="left")


def test_length_and_waste_plots():
    before = [30, 50, 70, 20, 90]
    blocks = packing.pack_sequences([[1] * n for n in before], 128)
    axes = plots.plot_lengths(before, packing.packed_lengths(blocks), 128)
    assert sum(p.get_height() for p in axes[0].patches) == 5
    assert sum(p.get_height() for p in axes[1].patches) == len(blocks)
    ax = plots.plot_padding_waste(packing.compare_padding(before, 2, 128))
    assert len(ax.patches) == 5

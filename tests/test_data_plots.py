import matplotlib

matplotlib.use("Agg")

from course_lib import data, data_plots, packing  # noqa: E402


def test_token_picture_has_one_box_per_token_shaded_by_label(tokenizer):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    row = data.tokenize_chat(chat, tokenizer)
    ax = data_plots.plot_tokens(row, tokenizer)
    boxes = [t for t in ax.texts]
    assert len(boxes) == len(row["input_ids"])
    colors = [matplotlib.colors.to_hex(t.get_bbox_patch().get_facecolor()) for t in boxes]
    expected = [data_plots.LEARNED_COLOR if label != data.IGNORE_INDEX else data_plots.MASKED_COLOR
                for label in row["labels"]]
    assert colors == expected
    assert "learned" in ax.get_title(loc="left")
    short = data_plots.plot_tokens(row, tokenizer, max_tokens=5)
    assert len(short.texts) == 5 and "first 5 shown" in short.get_title(loc="left")


def test_length_and_waste_plots():
    before = [30, 50, 70, 20, 90]
    blocks = packing.pack_sequences([[1] * n for n in before], 128)
    axes = data_plots.plot_lengths(before, packing.packed_lengths(blocks), 128)
    assert sum(p.get_height() for p in axes[0].patches) == 5
    assert sum(p.get_height() for p in axes[1].patches) == len(blocks)
    ax = data_plots.plot_padding_waste(packing.compare_padding(before, 2, 128))
    assert len(ax.patches) == 5

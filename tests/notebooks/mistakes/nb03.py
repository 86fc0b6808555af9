"""Typical wrong answers of solutions/03_qlora.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "03_qlora"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
    "absmax": "blockwise absmax int8 quantization: one scale per block keeps an outlier's damage inside its block",
    "nf4_code_book": "build NF4's 16 levels from normal quantiles, with an exact zero, for any offset",
    "nf4_quantize_block": "quantize a block to NF4: scale by its absmax, then the index of the nearest level",
    "qlora_state_bytes": "predict QLoRA's resident memory: 4-bit linears with double-quantized scales, fp32 "
                         "embeddings, adapters with gradients and AdamW states",
    "qlora_finetune": "the QLoRA recipe in library code: BitsAndBytesConfig (NF4, double quant, compute dtype) into "
                      "from_pretrained, prepare_model_for_kbit_training, get_peft_model with a LoraConfig, and a "
                      "training loop over the adapters only, graded by running it",
}

MISTAKES = [
    Mistake('03-absmax-from-library', STEM, 'absmax', "library",
            "calls course_lib's quantize.absmax_quantize",
            new="return quantize.absmax_quantize(x, block_size)"),
    Mistake('03-global-absmax', STEM, 'absmax', "typical", 'one absmax for the whole tensor (repeated per block) instead of one per block',
            old='absmax = blocks.abs().amax(dim=1)',
            new='absmax = blocks.abs().amax().repeat(blocks.shape[0])'),
    Mistake('03-code-book-from-bitsandbytes', STEM, 'nf4_code_book', "library",
            "returns bitsandbytes' own NF4 table",
            new="import bitsandbytes.functional as bnbf\n    return bnbf.get_4bit_type(\"nf4\", device=\"cpu\").float()"),
    Mistake('03-code-book-not-scaled', STEM, 'nf4_code_book', "typical",
            "keeps the raw normal quantiles instead of dividing by the largest, so the levels do not span [-1, 1]",
            old='return values / values.max()',
            new='return values'),
    Mistake('03-nf4-block-from-library', STEM, 'nf4_quantize_block', "library",
            "hands the block to course_lib's quantize.nf4_quantize",
            new="nf4 = quantize.nf4_quantize(block, block.numel())\n"
                "    return nf4.indices.to(torch.uint8), nf4.absmax.item()"),
    Mistake('03-nf4-block-not-scaled', STEM, 'nf4_quantize_block', "typical",
            "looks up the nearest level of the raw values without dividing by the block's absmax",
            old='scaled = block / max(absmax, 1e-38)',
            new='scaled = block'),
    Mistake('03-state-bytes-from-library', STEM, 'qlora_state_bytes', "library",
            "takes the bits per weight from course_lib's quantize.bits_per_parameter",
            new="return n_linear * quantize.bits_per_parameter(double_quant=True) / 8 + 4 * n_other + 16 * n_adapter"),
    Mistake('03-state-bytes-no-adam', STEM, 'qlora_state_bytes', "typical",
            "counts the adapters' weights and gradients but forgets AdamW's two states",
            old='(4 + 4 + 8) * n_adapter',
            new='(4 + 4) * n_adapter'),
    Mistake('03-qlora-from-library', STEM, 'qlora_finetune', "library",
            "hands the whole recipe to course_lib's qlora.bnb helpers",
            new="model = course_bnb.add_lora(course_bnb.load_4bit(model_dir, gradient_checkpointing=False), r=8)\n"
                "    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)\n"
                "    losses = []\n"
                "    for batch in batches:\n"
                "        loss = model(**batch).loss\n"
                "        loss.backward()\n"
                "        optimizer.step()\n"
                "        optimizer.zero_grad()\n"
                "        losses.append(loss.item())\n"
                "    return model, losses"),
    Mistake('03-qlora-no-double-quant', STEM, 'qlora_finetune', "typical",
            "forgets double quantization, so every block keeps a float32 scale (0.5 bits per weight instead of 0.127)",
            old='bnb_4bit_use_double_quant=True,\n',
            new='bnb_4bit_use_double_quant=False,\n'),
]

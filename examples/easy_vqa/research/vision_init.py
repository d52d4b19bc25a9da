"""Re-initialise the tiny VLM's vision tower (patch embedding, blocks, merger) with a larger weight std.

Why: with transformers' default init (std 0.02) the merged image tokens of a random tiny Qwen2.5-VL are
almost the same for every easy-VQA image (between-image std ~1% of the token norm), so the language model
has nearly nothing to read and learning to ground answers is slow for supervised learning and hopeless for
a reward signal in CPU minutes. A larger std makes the random vision features differ across images.
"""
import torch


def reinit_vision(model, std: float, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed + 12345)
    visual = model.model.visual
    with torch.no_grad():
        for name, p in visual.named_parameters():
            if p.dim() >= 2:  # Linear / Conv weights; norms and biases keep their defaults
                p.copy_(torch.randn(p.shape, generator=g) * std)

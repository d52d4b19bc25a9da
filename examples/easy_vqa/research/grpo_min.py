"""A minimal GRPO step for the tiny VLM, for the easy-VQA demo research (the production loop lives in rlkit).

One step: B prompts, G samples each (transformers `generate`, temperature T, fast mode), exact-match reward,
group-normalised advantages, one on-policy update of the token-mean policy-gradient loss (with a single
update per batch the PPO ratio is 1, so the clipped objective equals this loss and its gradient), AdamW,
gradient clipping. Groups whose rewards are all equal contribute zero advantage.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import torch

from rlkit.drivers.sft import load_image, render_prompt
from rlkit.drivers.vqa_eval import placeholder_ids
from rlkit.drivers.vqa_eval import exact_match


@dataclasses.dataclass
class GRPOSettings:
    prompts_per_step: int = 8
    group_size: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 4
    lr: float = 3e-4
    max_grad_norm: float = 1.0
    std_normalise: bool = True  # GRPO; False: Dr.GRPO (mean-centred only)
    enable_thinking: bool = False


def grpo_step(model, processor, opt, rows: Sequence[dict[str, Any]], s: GRPOSettings) -> dict[str, float]:
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    G = s.group_size
    t0 = time.perf_counter()
    texts = [render_prompt(processor, r["prompt"], True, s.enable_thinking) for r in rows for _ in range(G)]
    images = [load_image(r["image"]) for r in rows for _ in range(G)]
    tok.padding_side = "left"
    enc = processor(text=texts, images=images, padding=True, return_tensors="pt")
    P = enc["input_ids"].shape[1]
    model.eval()
    with torch.no_grad():
        seqs = model.generate(
            **enc, do_sample=True, temperature=s.temperature, top_k=0, top_p=1.0, max_new_tokens=s.max_new_tokens,
            suppress_tokens=placeholder_ids(tok),
        )
    t1 = time.perf_counter()
    comp = seqs[:, P:]
    is_eos = comp == eos
    # keep tokens up to and including the first end-of-turn
    after = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    cmask = (after == 0).long()
    decoded = tok.batch_decode(comp, skip_special_tokens=True)
    answers = [r["answer"] for r in rows for _ in range(G)]
    rewards = torch.tensor([float(exact_match(c, a)) for c, a in zip(decoded, answers)])
    r = rewards.view(-1, G)
    adv = r - r.mean(dim=1, keepdim=True)
    if s.std_normalise:
        adv = adv / (r.std(dim=1, keepdim=True) + 1e-4)
    adv = adv.view(-1)
    t2 = time.perf_counter()
    stats = {"reward": float(rewards.mean()), "frac_groups_learn": float((r.std(dim=1) > 0).float().mean())}
    model.train()
    attn = torch.cat([enc["attention_mask"], cmask], dim=1)
    mm = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(comp)], dim=1)
    logits = model(
        input_ids=seqs,
        attention_mask=attn,
        mm_token_type_ids=mm,
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
    ).logits[:, P - 1 : -1].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, comp.unsqueeze(-1)).squeeze(-1)
    m = cmask.float()
    loss = -(adv.unsqueeze(1) * logp * m).sum() / m.sum().clamp(min=1.0)
    ent = -(logp_all.exp() * logp_all).sum(-1).detach()
    stats["entropy"] = float((ent * m).sum() / m.sum().clamp(min=1.0))
    stats["tokens"] = float(m.sum())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if s.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
    opt.step()
    model.eval()
    t3 = time.perf_counter()
    stats.update(loss=float(loss.detach()), rollout_s=t1 - t0, reward_s=t2 - t1, update_s=t3 - t2)
    return stats

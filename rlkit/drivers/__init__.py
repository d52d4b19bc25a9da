"""The commands: grpo, dpo, rlaifv, ablation, eval, and the trainers and evaluations they run; the only code that knows every layer below."""

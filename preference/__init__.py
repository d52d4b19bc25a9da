"""preference: RLAIF-V pair construction and preference datasets in TRL's columns (pure logic, no driver).

    from preference import Candidate, build_pairs, pairs_to_dataset, save_dataset, load_preference_dataset
    pairs, stats = build_pairs(groups, threshold=1.0, k=2)       # groups[g]: the scored responses of prompt g
    ds = pairs_to_dataset(prompts, groups, pairs)                # prompt / chosen / rejected / images (+ ids)

See preference/pairs.py for the recipe and docs/rlaifv.md for the pipeline around it.
"""
from preference.dataset import (EncodedPair, PreferenceDataError, PromptInfo, column_text, encode_rows,
                                load_preference_dataset, pairs_to_dataset, save_dataset)
from preference.pairs import Candidate, Pair, build_pairs, candidate_pairs, length_balance, length_stats

__all__ = ["Candidate", "EncodedPair", "Pair", "PreferenceDataError", "PromptInfo", "build_pairs", "candidate_pairs",
           "column_text", "encode_rows", "length_balance", "length_stats", "load_preference_dataset", "pairs_to_dataset",
           "save_dataset"]

"""Data loading: sources, column mapping, row validation with errors naming the row/key/file, resumable order."""
import json

import pytest

from rlkit.data import DataError, PromptStream, load_source, map_columns, open_image, to_row


def test_local_jsonl_with_column_map(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"question": f"q{i}", "label": str(i), "extra": i}) for i in range(5)))
    ds = map_columns(load_source(str(f)), {"prompt": "question", "answer": "label"})
    row = to_row(3, ds[3])
    assert (row.prompt, row.answer, row.columns["extra"], row.images) == ("q3", "3", 3, [])


def test_missing_column_is_named(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"question": "q", "label": "1"}) + "\n")
    with pytest.raises(DataError, match="data.columns.answer: the data set has no column 'answer_text'"):
        map_columns(load_source(str(f)), {"prompt": "question", "answer": "answer_text"})
    with pytest.raises(DataError, match="no 'prompt' column"):
        map_columns(load_source(str(f)), {})


def test_bad_rows_are_named(tmp_path):
    with pytest.raises(DataError, match="row 7: 'prompt' must be a non-empty string"):
        to_row(7, {"prompt": "", "answer": "x"})
    with pytest.raises(DataError, match="row 2: image file not found: .*missing.png"):
        to_row(2, {"prompt": "q", "image": str(tmp_path / "missing.png")})
    with pytest.raises(DataError, match="row 4: column 'mode' must be 'fast' or 'deep'"):
        to_row(4, {"prompt": "q", "mode": "medium"})
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="row 9: image .*bad.png.* cannot be decoded"):
        open_image(str(bad), 9)


def test_missing_file_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="data file not found"):
        load_source(str(tmp_path / "nope.jsonl"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hub is offline"):
        load_source("someone/some-dataset")


def test_builtin_sources():
    vqa = load_source("easy_vqa", "test", limit=5)
    assert {"prompt", "image", "answer", "type"} <= set(vqa.column_names) and len(vqa) == 5
    img = open_image(vqa[0]["image"])
    assert img.size == (64, 64) and img.mode == "RGB"
    ar = load_source("arithmetic", "train", limit=20)
    for p, a in zip(ar["prompt"], ar["answer"]):
        x, op, y = p.split()[2:5]
        y = y.rstrip("?")
        assert int(a) == {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op]


def test_stream_is_seeded_and_resumable():
    ds = load_source("arithmetic", "train", limit=10)
    a = PromptStream(ds, seed=3)
    first = [i for i, _ in a.take(25)]  # crosses two epoch boundaries
    assert sorted(first[:10]) == list(range(10)) and first[:10] != first[10:20]
    b = PromptStream(ds, seed=3, position=13)
    assert [i for i, _ in b.take(12)] == first[13:25]


def test_bad_rows_stop_or_are_skipped_and_counted(tmp_path):
    """data.on_bad_row: 'error' stops naming the row; 'skip' continues and counts (the GRPO driver's StepRows)."""
    import datasets
    from PIL import Image

    from rlkit.config import GRPOConfig, load_config
    from rlkit.step.collect import StepRows

    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), "red").save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    ds = datasets.Dataset.from_dict({"prompt": ["a", "b", "c", "d"], "image": [str(good), str(bad), str(good), str(good)],
                                     "answer": ["x", "y", None, "w"]})
    strict = StepRows(load_config(GRPOConfig, None, []), PromptStream(ds, shuffle=False))
    strict.take(1)
    with pytest.raises(DataError, match="row 1: image .*bad.png.* cannot be decoded"):
        strict.take(1)
    lenient = StepRows(load_config(GRPOConfig, None, ["data.on_bad_row=skip"]), PromptStream(ds, shuffle=False))
    rows = lenient.take(2)
    assert [r.index for r in rows] == [0, 3] and lenient.skipped == 2  # row 1: bad image, row 2: no answer
    assert rows[0].images[0].size == (8, 8)


def test_prompt_too_long_for_the_engine_is_a_bad_row():
    """A group the engine could not sample (its prompt over rollout.max_model_len) is a bad row: by default one
    line naming the row, the limit and the option; with data.on_bad_row=skip left out and counted."""
    from rlkit.config import GRPOConfig, load_config
    from rlkit.records import PromptRow, Sample
    from rlkit.step.collect import StepRows

    def sample(group, index, reason):
        return Sample(0, group, PromptRow(index, "q", [], "a", {}), "fast", "p", "", [], [], reason)

    batch = [sample(0, 10, "stop"), sample(0, 10, "length"), sample(1, 11, "prompt_too_long"),
             sample(1, 11, "prompt_too_long"), sample(2, 12, "stop")]
    strict = StepRows(load_config(GRPOConfig, None, ["rollout.max_model_len=64"]), PromptStream([{}]))
    with pytest.raises(DataError, match=r"^row 11: its prompt is longer than rollout.max_model_len \(64 tokens.*"
                                        r"data.on_bad_row=skip"):
        strict.drop_unfit(batch)
    lenient = StepRows(load_config(GRPOConfig, None, ["data.on_bad_row=skip"]), PromptStream([{}]))
    assert [(s.group, s.finish_reason) for s in lenient.drop_unfit(batch)] == [(0, "stop"), (0, "length"), (2, "stop")]
    assert lenient.skipped == 1
    assert len(lenient.drop_unfit(batch)) == 3 and lenient.skipped == 1  # drawn again: dropped, not counted again

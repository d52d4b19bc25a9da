"""docs/rlaifv.md's configuration reference is current, and `rlkit dpo` / `rlkit rlaifv`
load their configs and fail on a bad key with exit status 2."""
import importlib.util
import pathlib


ROOT = pathlib.Path(__file__).resolve().parents[1]


def reference_module():
    spec = importlib.util.spec_from_file_location("rlaifv_config_reference", ROOT / "examples/rlaifv/config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_in_docs_is_current():
    m = reference_module()
    doc = (ROOT / "docs" / "rlaifv.md").read_text()
    assert m.reference() in doc, "docs/rlaifv.md is stale: regenerate with python examples/rlaifv/config_reference.py --write"


def test_example_configs_load():
    from rlkit.config import load_config
    from rlkit.drivers.dpo import DPOConfig, check_dpo
    from rlkit.drivers.rlaifv import RLAIFVConfig, check_rlaifv

    for name in ("rlaifv.yaml", "rlaifv_real.yaml"):
        check_rlaifv(load_config(RLAIFVConfig, ROOT / "examples/rlaifv" / name))
    check_dpo(load_config(DPOConfig, ROOT / "examples/rlaifv/dpo.yaml"))


def test_cli_subcommands(tmp_path, capsys):
    from rlkit import cli

    assert cli.main(["dpo", "--config", str(ROOT / "examples/rlaifv/dpo.yaml"), "dpo.betta=0.1"]) == 2
    assert "did you mean 'dpo.beta'" in capsys.readouterr().err
    assert cli.main(["dpo", "data.path=" + str(tmp_path / "missing")]) == 2
    assert "preference data not found" in capsys.readouterr().err
    assert cli.main(["rlaifv", "--config", str(ROOT / "examples/rlaifv/rlaifv.yaml"), "labeler.splitter=gpt"]) == 2
    assert "labeler.splitter" in capsys.readouterr().err

"""Untrusted files: checkpoints, releases, encoders and configs from strangers are loaded
without running their code. Every attack below would create a marker file if its payload ran;
each test shows the load is refused with one clear line and the marker never appears."""

from __future__ import annotations

import ast
import json
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, ErnieConfig, ErnieModel

from ernie_style.cli import main as cli_main
from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.loading import load_finetuned
from ernie_style.finetune.model import load_encoder, load_finetune_tokenizer
from ernie_style.pretrain.config import PretrainConfig
from ernie_style.testing.pretrain import ROOT, child_env, pretrain_cmd, write_config
from ernie_style.tokenizer import load_tokenizer, train_wordpiece
from ernie_style.train.checkpoint import MANIFEST, list_checkpoints, verify, write_manifest
from ernie_style.train.engine import TrainEngine
from ernie_style.untrusted import UnsafeFileError, load_torch_file, refuse_remote_code

PACKAGE = ROOT / "ernie_style"


class Payload:
    """Unpickling this object calls `Path.touch(marker)`: code execution, made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def write_payload_torch(path: Path, marker: Path) -> Path:
    """A torch.save zip file (what a stranger ships as optimizer.pt) carrying the payload."""
    torch.save({"state": {"w": Payload(marker)}, "param_groups": []}, path)
    return path


def write_payload_pickle(path: Path, marker: Path) -> Path:
    """A bare pickle (the legacy torch format) carrying the payload."""
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    return path


def test_the_payloads_really_run_code_when_loaded_unsafely(tmp_path):
    """Control: loading these files the unsafe way would run the payload."""
    zipped, bare = tmp_path / "zipped", tmp_path / "bare"
    torch.load(write_payload_torch(tmp_path / "a.pt", zipped), weights_only=False)
    pickle.loads((write_payload_pickle(tmp_path / "b.pt", bare)).read_bytes())
    assert zipped.exists() and bare.exists()


@pytest.mark.parametrize("writer", [write_payload_torch, write_payload_pickle])
def test_load_torch_file_refuses_pickled_code(tmp_path, writer):
    marker = tmp_path / "PWNED"
    path = writer(tmp_path / "optimizer.pt", marker)
    with pytest.raises(UnsafeFileError, match=re.escape(f"{path}: refused as unsafe")):
        load_torch_file(path)
    assert not marker.exists()


def test_load_torch_file_reads_tensors_and_plain_containers(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"state": {"w": {"exp_avg": torch.ones(2), "step": 3}}, "groups": [1.5]}, path)
    assert load_torch_file(path)["state"]["w"]["step"] == 3
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        load_torch_file(tmp_path / "junk.pt")


# ---- a pretraining checkpoint shipped by a stranger -------------------------------------------
@pytest.fixture(scope="module")
def pretrain_run(small_corpus, tmp_path_factory):
    """A 4-step tiny run (one task) with a checkpoint at its end."""
    root = tmp_path_factory.mktemp("untrusted_pretrain")
    config = write_config(
        root / "run.yaml",
        small_corpus,
        root / "run",
        tasks={"knowledge_masking": {"budget": 4}},
        checkpoint_every=4,
        eval_every=4,
    )
    subprocess.run(pretrain_cmd(config), check=True, capture_output=True, env=child_env())
    return config, list_checkpoints(root / "run" / "checkpoints")[0]


def _tamper(checkpoint: Path, target: Path, name: str, marker: Path) -> Path:
    """A copy of `checkpoint` with `name` swapped for the payload and a matching manifest."""
    shutil.copytree(checkpoint, target)
    write_payload_torch(target / name, marker)
    (target / MANIFEST).unlink()
    write_manifest(target, {"step": 4})
    assert verify(target) is None  # a consistent manifest: checksums are no defence
    return target


@pytest.mark.slow
@pytest.mark.parametrize("name", ["optimizer.pt", "balancer.pt"])
def test_pretrain_resume_refuses_a_pickle_bearing_checkpoint(pretrain_run, tmp_path, name):
    config, checkpoint = pretrain_run
    marker = tmp_path / "PWNED"
    evil = _tamper(checkpoint, tmp_path / "step-00000004", name, marker)
    cmd = pretrain_cmd(config, "--resume", str(evil), f"output_dir={tmp_path / 'out'}")
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ernie-style:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert f"{evil / name}: refused as unsafe" in errors[0]
    assert "Traceback" not in result.stderr
    assert not marker.exists()


# ---- a fine-tuning checkpoint shipped by a stranger -------------------------------------------
class _RestoringEngine(TrainEngine):
    """The shared engine's checkpoint restore (what a fine-tuning resume runs) over a tiny
    model, optimizer and balancer, without building a run."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = self.raw_model = torch.nn.Linear(3, 2)
        self.raw_optimizer = torch.optim.AdamW(self.raw_model.parameters())
        self.balancer = torch.nn.Module()


def _finetune_trainer() -> _RestoringEngine:
    return _RestoringEngine()


@pytest.mark.parametrize("name", ["optimizer.pt", "balancer.pt"])
def test_finetune_resume_refuses_a_pickle_bearing_checkpoint(tmp_path, name):
    trainer = _finetune_trainer()
    checkpoint = tmp_path / "step-00000001"
    checkpoint.mkdir()
    save_file(trainer.model.state_dict(), str(checkpoint / "model.safetensors"))
    state = {"step": 1, "sampler": {}, "history": [], "best": {}, "tasks": ["a"]}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    torch.save({"state": {}, "param_groups": []}, checkpoint / "optimizer.pt")
    torch.save({}, checkpoint / "balancer.pt")
    save_file({"torch": torch.get_rng_state()}, str(checkpoint / "rng_state.safetensors"))
    marker = tmp_path / "PWNED"
    write_payload_torch(checkpoint / name, marker)
    with pytest.raises(UnsafeFileError, match=re.escape(f"{checkpoint / name}: refused as unsafe")):
        trainer.restore(checkpoint)
    assert not marker.exists()


# ---- encoders and releases shipped by a stranger ----------------------------------------------
def _tiny_config() -> ErnieConfig:
    return ErnieConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )


@pytest.fixture
def tokenizer_files(english_texts, tmp_path_factory):
    """A saved WordPiece tokenizer directory (copied into the attack directories)."""
    path = tmp_path_factory.mktemp("tok")
    train_wordpiece(english_texts * 4, vocab_size=200, min_frequency=1).save_pretrained(str(path))
    return path


def test_encoder_with_only_pickle_weights_is_refused(tmp_path):
    release, marker = tmp_path / "release", tmp_path / "PWNED"
    release.mkdir()
    _tiny_config().save_pretrained(str(release))
    write_payload_torch(release / "pytorch_model.bin", marker)
    with pytest.raises(UnsafeFileError, match=r"pytorch_model\.bin.*refused as unsafe"):
        load_encoder(release)
    assert not marker.exists()


@pytest.mark.slow
def test_finetune_cli_refuses_pickle_weights(tmp_path, tokenizer_files):
    release, marker = tmp_path / "release", tmp_path / "PWNED"
    shutil.copytree(tokenizer_files, release)
    _tiny_config().save_pretrained(str(release))
    write_payload_torch(release / "pytorch_model.bin", marker)
    config = ROOT / "configs" / "finetune" / "demo_multitask.yaml"
    cmd = [sys.executable, "-m", "ernie_style", "finetune", "--config", str(config)]
    cmd += [f"encoder={release}", f"output_dir={tmp_path / 'out'}"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ernie-style: error: encoder:") and "refused as unsafe" in last, last
    assert not marker.exists()


def _remote_code_dir(path: Path, marker: Path, config_file: str = "config.json") -> Path:
    """A model directory whose config names `evil.py`, which touches `marker` when imported."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    data = json.loads((path / config_file).read_text()) if (path / config_file).exists() else {}
    data.pop("model_type", None)  # unknown architecture: transformers would need the code
    data["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModel": "evil.EvilModel",
        "AutoTokenizer": ["evil.EvilTokenizer", None],
    }
    (path / config_file).write_text(json.dumps(data))
    return path


def test_encoder_naming_custom_code_is_refused(tmp_path, tokenizer_files):
    release, marker = tmp_path / "release", tmp_path / "PWNED"
    shutil.copytree(tokenizer_files, release)
    ErnieModel(_tiny_config()).save_pretrained(str(release))
    _remote_code_dir(release, marker)
    with pytest.raises(UnsafeFileError, match=r"config\.json names custom Python code"):
        load_encoder(release)
    with pytest.raises(UnsafeFileError, match="trust_remote_code: true"):
        load_tokenizer(release)
    config = FinetuneConfig(encoder=str(release))
    assert config.trust_remote_code is False
    with pytest.raises(UnsafeFileError, match="encoder: "):
        load_finetune_tokenizer(config)
    # Without our check, transformers itself still refuses: trust_remote_code is always passed.
    with pytest.raises(ValueError, match="custom code"):
        AutoConfig.from_pretrained(str(release), local_files_only=True, trust_remote_code=False)
    assert not marker.exists()
    refuse_remote_code(release, "encoder", trust_remote_code=True)  # the explicit opt-in


def test_tokenizer_config_naming_custom_code_is_refused(tmp_path, tokenizer_files):
    tokenizer, marker = tmp_path / "tokenizer", tmp_path / "PWNED"
    shutil.copytree(tokenizer_files, tokenizer)
    _remote_code_dir(tokenizer, marker, "tokenizer_config.json")
    with pytest.raises(UnsafeFileError, match=r"tokenizer_config\.json names custom Python code"):
        load_tokenizer(tokenizer)
    assert not marker.exists()


def test_evaluate_loading_refuses_custom_code(tmp_path, tokenizer_files):
    """`evaluate --model RUN_DIR` (a run directory from a stranger whose encoder names code)."""
    encoder, marker = tmp_path / "encoder", tmp_path / "PWNED"
    shutil.copytree(tokenizer_files, encoder)
    ErnieModel(_tiny_config()).save_pretrained(str(encoder))
    _remote_code_dir(encoder, marker)
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(run / "best" / "model.safetensors"))
    task = {"name": "a", "type": "classification", "labels": ["x", "y"]}
    (run / "config.yaml").write_text(
        json.dumps({"encoder": str(encoder), "trust_remote_code": True, "tasks": [task]})
    )
    with pytest.raises(UnsafeFileError, match="names custom Python code"):
        load_finetuned(run)  # the run's own trust_remote_code: true is not honoured
    assert not marker.exists()


# ---- configs ----------------------------------------------------------------------------------
def test_yaml_python_tags_are_rejected(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'seed: !!python/object/apply:pathlib.Path.touch ["{marker}"]\n')
    with pytest.raises(ValueError, match=re.escape(f"{evil}: invalid YAML")):
        load_config(PretrainConfig, evil)
    with pytest.raises(ValueError, match="override 'seed=!!python/object/apply"):
        load_config(
            PretrainConfig, None, [f'seed=!!python/object/apply:os.system ["touch {marker}"]']
        )
    assert cli_main(["pretrain", "--config", str(evil)]) == 2
    assert capsys.readouterr().err.startswith(f"ernie-style: error: {evil}: invalid YAML")
    assert not marker.exists()


# ---- the package never loads unsafely ---------------------------------------------------------
def _package_calls() -> list[tuple[str, ast.Call]]:
    """Every call in the package's source, with its FILE:LINE."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return calls


def _name(node: ast.expr) -> str:
    """`torch.load` for the callee `torch.load`, `x.load_state` for `self.x.load_state`."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else "<expr>"
    return None


def test_every_torch_load_is_weights_only():
    loads = [(where, c) for where, c in _package_calls() if _name(c.func) == "torch.load"]
    assert loads, "expected the torch.load in ernie_style/train/checkpoint.py"
    assert [where for where, c in loads if _keyword(c, "weights_only") is not True] == []


#: Callees that unpickle or evaluate arbitrary input. accelerate's `load_state` and DeepSpeed's
#: `engine.load_checkpoint` unpickle with weights_only=False: resuming uses our own loaders.
UNSAFE_CALLEES = re.compile(
    r"(^|\.)(yaml\.load|yaml\.unsafe_load|yaml\.full_load|pickle\.loads?|dill\.loads?|"
    r"joblib\.load|marshal\.loads?|_pickle\.loads?)$|^(eval|exec)$|"
    r"\.(load_state|load_checkpoint)$"  # methods (our own loaders are called bare)
)


def test_no_unsafe_loader_in_the_package():
    found = [f"{where}: {_name(c.func)}" for where, c in _package_calls()]
    assert [item for item in found if UNSAFE_CALLEES.search(item.split(": ")[1])] == []


@pytest.mark.parametrize(
    ("keyword", "unsafe"),
    [("allow_pickle", True), ("trust_remote_code", True), ("weights_only", False)],
)
def test_no_unsafe_keyword_in_the_package(keyword, unsafe):
    calls = _package_calls()
    assert [where for where, c in calls if _keyword(c, keyword) is unsafe] == []
    assert not [where for where, c in calls if _name(c.func) in ("yaml.load", "yaml.Loader")]


def test_transformers_auto_loaders_pass_trust_remote_code_explicitly():
    """Every Auto*.from_pretrained/from_config names trust_remote_code (no interactive prompt,
    no silent default)."""
    missing = set()
    for where, call in _package_calls():
        name = _name(call.func)
        receiver, _, method = name.rpartition(".")
        is_auto = receiver.startswith("Auto") or receiver == "auto"
        loads = is_auto and method in ("from_pretrained", "from_config")
        if loads and _keyword(call, "trust_remote_code") is None:
            missing.add(where.split(":")[0])
    assert missing == set()

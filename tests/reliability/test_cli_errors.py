"""Missing inputs, unreadable files, read-only output dirs: one `ernie-style: error:` line that
names the path, no traceback, exit code != 0 (2 for input/usage errors, 1 for I/O failures)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys

import pytest

from ernie_style.cli import describe_error, exit_code, main
from ernie_style.run_lock import LOCK_FILE
from ernie_style.testing.finetune import shipped_tasks
from ernie_style.testing.finetune import write_config as write_finetune_config
from ernie_style.testing.pretrain import SAMPLE, child_env, write_config

ERROR = "ernie-style: error: "

#: Runs `main(argv)` for each named case in one process; prints {case: [code, stderr]}.
CHILD = """
import contextlib, io, json, os, sys
from ernie_style.cli import main
cases = json.loads(sys.argv[1])
out = {"can_read_secret": os.access(cases.pop("secret"), os.R_OK)}
for name, argv in cases.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out[name] = [main(argv), err.getvalue()]
print(json.dumps(out))
"""


def the_error_line(stderr: str) -> str:
    """The one error line (libraries may print warnings around it), without its prefix."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0].removeprefix(ERROR)


def _drop_root_file_permissions() -> None:
    """preexec_fn: as root, drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH from the bounding set, so
    the exec'd child obeys file modes like any user (root ignores them otherwise)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP; failure shows in the probe


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """Cases that need their own process (a trainer's accelerator, file permissions), run in
    one child that obeys file modes even when the tests run as root."""
    root = tmp_path_factory.mktemp("cli")
    secret = root / "secret.jsonl"
    secret.write_text('{"text": "A sentence. Another one."}\n', encoding="utf-8")
    secret.chmod(0o000)
    read_only = root / "read_only"
    read_only.mkdir(mode=0o555)
    ro = str(read_only)
    a_file = root / "a_file"
    a_file.write_text("not a directory\n", encoding="utf-8")
    pretrain = write_config(root / "pretrain.yaml", root / "no_corpus", root / "run")
    finetune = write_finetune_config(
        root / "finetune.yaml", root / "encoder", root / "ft", shipped_tasks("sentiment")
    )
    prepare = ["prepare", "--annotator", "none", "--no-progress"]
    cases = {
        "secret": str(secret),
        "pretrain_missing_corpus": ["pretrain", "--config", str(pretrain)],
        "pretrain_output_under_a_file": [
            "pretrain",
            "--config",
            str(pretrain),
            f"output_dir={a_file / 'run'}",
        ],
        "pretrain_read_only": ["pretrain", "--config", str(pretrain), f"output_dir={ro}/run"],
        "finetune_read_only": ["finetune", "--config", str(finetune), f"output_dir={ro}/ft"],
        "prepare_read_only": [*prepare, "--input", str(SAMPLE), "--output", f"{ro}/c"],
        "prepare_unreadable": [*prepare, "--input", str(secret), "--output", f"{root}/c"],
        "ingest_unreadable": ["ingest", "--batch", str(secret), "--labeled", f"{root}/l"],
    }
    cases["ingest_unreadable"] += ["--tasks", "ner"]
    try:
        run = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(cases)],
            capture_output=True,
            text=True,
            env=child_env(),
            preexec_fn=_drop_root_file_permissions,
        )
    finally:
        secret.chmod(0o600)
        read_only.chmod(0o755)
    assert run.returncode == 0, run.stderr[-3000:]
    return {"root": root, "results": json.loads(run.stdout)}


@pytest.fixture
def permissions_apply(child):
    if child["results"]["can_read_secret"]:
        pytest.skip("file modes are not enforced here (root without a way to drop CAP_DAC_*)")


def _result(child, case: str) -> tuple[int, str]:
    code, stderr = child["results"][case]
    return code, the_error_line(stderr)


# ---- missing inputs -------------------------------------------------------------------------
def test_prepare_with_a_missing_input(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    argv = ["prepare", "--input", str(missing), "--output", str(tmp_path / "out")]
    assert main([*argv, "--annotator", "none"]) == 2
    assert the_error_line(capsys.readouterr().err) == f"input {missing} does not exist"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no lock file


def test_finetune_with_a_missing_data_file(tmp_path, capsys):
    tasks = shipped_tasks("sentiment")
    missing = tmp_path / "missing_train.tsv"
    tasks[0]["data"]["train"] = str(missing)
    config = write_finetune_config(tmp_path / "c.yaml", tmp_path / "enc", tmp_path / "run", tasks)
    assert main(["finetune", "--config", str(config)]) == 2
    line = the_error_line(capsys.readouterr().err)
    assert line == f"{config}: tasks[0].data.train: {missing} does not exist"
    assert not (tmp_path / "run").exists()


def test_ingest_with_a_missing_batch(tmp_path, capsys):
    missing = tmp_path / "batch.jsonl"
    argv = ["ingest", "--batch", str(missing), "--labeled", str(tmp_path / "labeled")]
    assert main([*argv, "--tasks", "ner"]) == 2
    assert the_error_line(capsys.readouterr().err) == f"--batch {missing}: no such file"
    assert not (tmp_path / "labeled").exists()


def test_pretrain_with_a_missing_corpus(child):
    code, line = _result(child, "pretrain_missing_corpus")
    root = child["root"]
    tokenizer = root / "no_corpus" / "tokenizer"
    assert code == 2 and line == f"tokenizer directory {tokenizer} does not exist"
    assert not (root / "run").exists()  # the lock's empty output_dir is removed again


# ---- a file where a directory is expected ---------------------------------------------------
def test_pretrain_output_dir_under_a_file(child):
    code, line = _result(child, "pretrain_output_under_a_file")
    assert code == 1 and line == f"{child['root'] / 'a_file' / 'run'}: Not a directory"


def test_prepare_output_under_a_file(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    output = tmp_path / "a_file" / "corpus"
    assert main(["prepare", "--input", str(SAMPLE), "--output", str(output)]) == 2
    assert the_error_line(capsys.readouterr().err) == (
        f"parent of output {output} is not a directory"
    )


# ---- read-only output dirs, unreadable inputs -----------------------------------------------
@pytest.mark.usefixtures("permissions_apply")
@pytest.mark.parametrize(
    ("case", "path"),
    [
        ("pretrain_read_only", "read_only/run"),
        ("finetune_read_only", "read_only/ft"),
        ("prepare_read_only", "read_only/.c.prepare.lock"),
    ],
)
def test_a_read_only_output_dir(child, case, path):
    code, line = _result(child, case)
    assert code == 2 and line == f"{child['root'] / path}: Permission denied"


@pytest.mark.usefixtures("permissions_apply")
@pytest.mark.parametrize("case", ["prepare_unreadable", "ingest_unreadable"])
def test_an_unreadable_input(child, case):
    code, line = _result(child, case)
    assert code == 2 and line == f"{child['root'] / 'secret.jsonl'}: Permission denied"
    assert not (child["root"] / "c").exists() and not (child["root"] / "l" / LOCK_FILE).exists()


# ---- the CLI's formatting ------------------------------------------------------------------
def test_os_errors_print_path_and_reason_and_exit_1():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/x/train_loss.csv")
    assert describe_error(full) == "runs/x/train_loss.csv: No space left on device"
    assert exit_code(full) == 1
    moved = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "a", None, "b")
    assert describe_error(moved) == "a -> b: Invalid cross-device link"
    assert exit_code(PermissionError(errno.EACCES, "Permission denied", "x")) == 2
    assert describe_error(KeyError("no task 'x'")) == "no task 'x'"


def test_help_imports_no_heavy_library():
    # `ernie-style --help` (and every subcommand's --help) builds the whole parser; it must not
    # import torch, transformers, datasets or spaCy (they took --help from 0.1 s to 4 s).
    code = (
        "import sys; from ernie_style.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'spacy', 'deepspeed') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

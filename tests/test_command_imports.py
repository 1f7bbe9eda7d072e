"""Each command imports only what it uses: listing the tasks builds no model and reads no
corpus, so it must not import `datasets`, DeepSpeed or transformers' model code."""

from __future__ import annotations

import subprocess
import sys


def test_tasks_command_imports_no_model_or_dataset_code():
    code = (
        "import sys, contextlib, io; from ernie_style.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out: code = main(['tasks'])\n"
        "assert code == 0 and 'ir_relevance' in out.getvalue(), out.getvalue()\n"
        "heavy = ('datasets', 'deepspeed', 'spacy', 'transformers.models.ernie.modeling_ernie',"
        " 'transformers.modeling_utils', 'accelerate')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"

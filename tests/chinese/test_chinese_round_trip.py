"""Chinese round trip: a corpus prepared with `--language auto` pretrains on every task that can
read it (capitalization left out with one line), exports, and stock transformers' fill-mask
answers with Chinese characters."""

from __future__ import annotations

import re
import subprocess

import pytest

from ernie_style.testing.pretrain import child_env, pretrain_cmd, write_config

HAN = re.compile(r"^[\u4e00-\u9fff]$")


@pytest.mark.slow
def test_prepare_pretrain_export_fill_mask_in_chinese(chinese_corpus, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    tasks = {
        "knowledge_masking": {"budget": 10},
        "capitalization": {"budget": 4},
        "discourse_relation": {"budget": 4},
        "sentence_reordering": {"budget": 4},
        "token_document_relation": {"budget": 4},
    }
    config = write_config(
        tmp_path / "zh.yaml",
        chinese_corpus,
        tmp_path / "run",
        tasks=tasks,
        data__heldout_documents=2,
        eval_every=100,
        checkpoint_every=100,
        model__preset="micro",
    )
    run = subprocess.run(pretrain_cmd(config), capture_output=True, text=True, env=child_env())
    assert run.returncode == 0, run.stderr[-3000:]
    assert "left out of the schedule on this zh corpus: capitalization" in run.stdout
    release = tmp_path / "release"
    export = subprocess.run(
        [
            *pretrain_cmd(config)[:3],
            "export",
            "--run",
            str(tmp_path / "run"),
            "--output",
            str(release),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert export.returncode == 0, export.stderr[-3000:]
    model = AutoModelForMaskedLM.from_pretrained(release).eval()
    tokenizer = AutoTokenizer.from_pretrained(release)
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=10)
    predictions = fill(f"长江是中国最长的{tokenizer.mask_token}流。")
    assert sum(bool(HAN.match(p["token_str"])) for p in predictions) >= 5
    cli = subprocess.run(
        [*pretrain_cmd(config)[:3], "fill-mask", "--model", str(release), "长江是[MASK]国的河流。"],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert re.search(r"[\u4e00-\u9fff] \(0\.\d{3}\)", cli.stdout), cli.stdout
    # The tokenizer round-trips Chinese with pair segments (token_type_ids kept).
    pair = tokenizer("长江很长。", "西湖很美。")
    assert set(pair["token_type_ids"]) == {0, 1}

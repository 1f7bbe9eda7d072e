"""Task towers: soft parameter sharing (with the L2 pull towards the towers' mean) and
cross-stitch units, on a 3-layer tiny encoder."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ernie_style.finetune.data import Collator, EncodedTask
from ernie_style.finetune.model import build_model, load_encoder
from ernie_style.finetune.sharing import SHARING_KINDS, build_sharing
from ernie_style.testing.finetune import make_encoder_dir

TASKS = ["a", "b", "c"]
BALANCERS = ["fixed", "uncertainty", "dwa", "gradnorm", "dtp"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return make_encoder_dir(
        tmp_path_factory.mktemp("encoder") / "enc",
        num_hidden_layers=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def shells(names=TASKS, kind: str = "classification") -> dict[str, EncodedTask]:
    return {n: EncodedTask(n, kind, ["x", "y", "z"], {}, {}, Collator(kind, 0)) for n in names}


def model(encoder_dir, sharing: str, names=TASKS, **options):
    encoder = load_encoder(encoder_dir)
    return build_model(encoder, shells(names), sharing, options, {}, False, seed=0).eval()


def batch(task: str, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (4, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padding: the towers must get the encoder's attention mask
    return {
        "task": task,
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.randint(0, 3, (4,), generator=gen),
    }


def perturb(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_soft_towers_start_as_the_pretrained_encoder(encoder_dir, k):
    hard, soft = model(encoder_dir, "hard"), model(encoder_dir, "soft", tower_layers=k)
    assert len(soft.encoder.encoder.layer) == 3 - k and soft.encoder.pooler is None
    assert all(len(soft.sharing.towers[t]) == k for t in TASKS)
    with torch.no_grad():
        for task in TASKS:
            torch.testing.assert_close(
                soft(batch(task)).logits, hard(batch(task)).logits, rtol=0, atol=0
            )


def test_a_task_trains_its_own_tower_only(encoder_dir):
    soft = model(encoder_dir, "soft", tower_layers=1).train()
    soft(batch("b")).loss.backward()
    for name, p in soft.named_parameters():
        if name.startswith(("sharing.towers.b.", "sharing.poolers.b.", "encoder.")):
            assert p.grad is not None, name
        elif name.startswith("sharing."):
            assert p.grad is None, name


def test_tower_l2_pulls_every_tower_towards_the_mean(encoder_dir):
    soft = model(encoder_dir, "soft", tower_layers=1, tower_l2=0.5).train()
    for i, task in enumerate(TASKS):
        perturb(soft.sharing.towers[task], seed=i)
        perturb(soft.sharing.poolers[task], seed=10 + i)
    expected = 0.0
    per_task = [
        [*soft.sharing.towers[t].parameters(), *soft.sharing.poolers[t].parameters()] for t in TASKS
    ]
    for group in zip(*per_task, strict=True):
        mean = sum(group) / 3
        expected += sum(((p - mean) ** 2).sum() for p in group)
    penalty = soft.sharing.penalty()
    torch.testing.assert_close(penalty, 0.5 * expected)
    # The training forward carries it (once), the eval forward does not.
    results = soft([batch("a"), batch("b")])
    torch.testing.assert_close(results[0].penalty, penalty)
    assert results[1].penalty is None and soft.eval()(batch("a")).penalty is None
    # A gradient step on the penalty brings the towers closer together.
    soft.zero_grad()
    penalty.backward()
    with torch.no_grad():
        for p in soft.sharing.parameters():
            p -= 0.1 * p.grad
    assert soft.sharing.penalty() < penalty
    assert model(encoder_dir, "soft", tower_l2=0.0).sharing.penalty() is None


def set_alpha(sharing, matrix: torch.Tensor) -> None:
    with torch.no_grad():
        for unit in sharing.units:
            for i, t in enumerate(sharing.tasks):
                for j, s in enumerate(sharing.tasks):
                    unit.rows[t].weights[s].fill_(matrix[i, j])


def test_cross_stitch_with_identity_units_equals_separate_towers(encoder_dir):
    soft = model(encoder_dir, "soft", tower_layers=2)
    for i, task in enumerate(TASKS):
        perturb(soft.sharing.towers[task], seed=i)
    stitch = model(encoder_dir, "cross_stitch", tower_layers=2)
    missing, unexpected = stitch.load_state_dict(soft.state_dict(), strict=False)
    assert unexpected == [] and all(".units." in k for k in missing)
    alpha = stitch.sharing.unit_matrices()[0]
    assert torch.allclose(alpha.diagonal(), torch.full((3,), 0.9))
    torch.testing.assert_close(alpha.sum(1), torch.ones(3))
    with torch.no_grad():
        mixed = stitch(batch("a")).logits
        set_alpha(stitch.sharing, torch.eye(3))
        for task in TASKS:
            torch.testing.assert_close(
                stitch(batch(task)).logits, soft(batch(task)).logits, rtol=0, atol=0
            )
    assert not torch.allclose(mixed, soft(batch("a")).logits)  # 0.9 / 0.05 mixes


def test_cross_stitch_matches_a_reference_mixing(encoder_dir):
    stitch = model(encoder_dir, "cross_stitch", tower_layers=2)
    sharing = stitch.sharing
    for i, task in enumerate(TASKS):
        perturb(sharing.towers[task], seed=i)
    alpha = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.0, 0.5, 0.5]])
    set_alpha(sharing, alpha)
    inputs = batch("c")
    from ernie_style.finetune.towers import bidirectional_mask

    with torch.no_grad():
        hidden = stitch.encoder(**stitch.encoder_inputs(inputs)).last_hidden_state
        mask = bidirectional_mask(stitch.encoder.config, hidden, inputs["attention_mask"])
        states = [hidden] * 3
        for layer in range(2):
            outs = [sharing.towers[t][layer](x, mask) for t, x in zip(TASKS, states, strict=True)]
            states = [sum(alpha[i, j] * outs[j] for j in range(3)) for i in range(3)]
        expected = stitch.heads["c"].classifier(sharing.poolers["c"](states[2]))
        torch.testing.assert_close(stitch(inputs).logits, expected)


@pytest.mark.parametrize("sharing", ["soft", "cross_stitch"])
def test_add_task_keeps_old_tasks_and_starts_from_the_pretrained_top(encoder_dir, sharing):
    built = model(encoder_dir, sharing, names=["a", "b"], tower_layers=1)
    for i, task in enumerate(["a", "b"]):
        perturb(built.sharing.towers[task], seed=i)
    before = {k: v.clone() for k, v in built.state_dict().items()}
    with torch.no_grad():
        old = {t: built(batch(t)).logits for t in ("a", "b")}
    built.sharing.add_task("c")
    after = built.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    new_keys = set(after) - set(before)
    assert new_keys == {
        k for k in after if any(k.startswith("sharing." + p) or k == "sharing." + p
                                for p in built.sharing.task_keys("c"))
    }  # fmt: skip
    pretrained = model(encoder_dir, "hard")
    top = pretrained.encoder.encoder.layer[2].state_dict()
    for key, value in built.sharing.towers["c"][0].state_dict().items():
        assert torch.equal(value, top[key])
    with torch.no_grad():  # cross-stitch: the new column is 0 in the old rows
        for t in ("a", "b"):
            torch.testing.assert_close(built(batch(t)).logits, old[t], rtol=0, atol=0)


@pytest.mark.parametrize("kind", SHARING_KINDS)
def test_task_keys_are_exactly_what_a_checkpoint_without_the_task_lacks(encoder_dir, kind):
    """The contract resuming with a new task relies on, for every sharing kind."""
    options = {"levels": 2} if kind in ("mmoe", "ple") else {}
    old = model(encoder_dir, kind, names=["a", "b"], **options)
    new = model(encoder_dir, kind, names=["a", "b", "ab"], **options)  # 'a' prefixes 'ab'
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert unexpected == []
    keys = new.sharing.task_keys("ab")
    declared = {
        k for k in new.state_dict()
        if k.startswith("sharing.") and any(
            k.startswith("sharing." + p) if p.endswith(".") else k == "sharing." + p for p in keys
        )
    }  # fmt: skip
    assert {k for k in missing if k.startswith("sharing.")} == declared
    assert {k for k in missing if not k.startswith("sharing.")} == {
        "heads.ab.classifier.weight",
        "heads.ab.classifier.bias",
    }


def test_towers_are_refused_with_head_layer_or_too_many_layers(encoder_dir):
    encoder = load_encoder(encoder_dir)
    with pytest.raises(ValueError, match=r"tower_layers: 4 > the encoder's 3 layers"):
        build_model(encoder, shells(), "soft", {"tower_layers": 4}, {}, False, 0)
    tasks = shells()
    tasks["a"].head_layer = 1
    with pytest.raises(ValueError, match=r"head_layer cannot be combined with sharing=soft"):
        build_model(load_encoder(encoder_dir), tasks, "soft", {}, {}, False, 0)
    with pytest.raises(RuntimeError, match="attach"):
        build_sharing("soft", 8, ["a"]).encode_top("a", torch.zeros(1, 2, 8), None, True)


def test_unattached_tower_kinds_pass_the_encoder_output_through():
    layer = build_sharing("cross_stitch", 8, ["a"])
    x = torch.zeros(2, 8)
    assert layer("a", None, x) == (None, x)
    assert copy.deepcopy(layer).tasks == ["a"]


# ---- end to end: export, exact resume, resume with a new task -------------------------------
def run_config(path, encoder_dir, output, names, sharing, options, **top):
    from ernie_style.testing.finetune import shipped_tasks, write_config

    tasks = shipped_tasks(*names)
    return write_config(
        path, encoder_dir, output, tasks, sharing=sharing, sharing_options=options, **top
    )


def test_a_soft_task_exports_its_tower_folded_into_a_stock_model(encoder_dir, tmp_path):
    from ernie_style.config import load_config
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.export import load_exported
    from ernie_style.finetune.scoring import stock_scorer
    from ernie_style.finetune.trainer import FinetuneTrainer

    options = {"tower_layers": 2, "tower_l2": 0.01}
    config = run_config(
        tmp_path / "c.yaml", encoder_dir, tmp_path / "run", ["sentiment", "wnut16"], "soft",
        options, epochs=1,
    )  # fmt: skip
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config, []))
    trainer.train()
    towers = trainer.unwrapped.sharing.towers
    differ = [
        not torch.equal(p, q)
        for p, q in zip(
            towers["sentiment"].parameters(), towers["wnut16"].parameters(), strict=True
        )
    ]
    assert any(differ)  # the towers trained apart
    for name in ("sentiment", "wnut16"):
        stock, info = load_exported(tmp_path / "run" / "tasks" / name)
        assert stock.config.num_hidden_layers == 3 == info["encoder_layers"]
        encoded = trainer.tasks[name]
        inputs = encoded.collator(encoded.splits["dev"][:6])
        with torch.no_grad():
            expected = trainer.unwrapped.eval()(inputs | {"task": name}).logits
        got = stock_scorer(stock.eval(), encoded.type)(inputs)
        torch.testing.assert_close(got, expected.float(), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("sharing", "options"),
    [("soft", {"tower_layers": 1, "tower_l2": 0.01}), ("cross_stitch", {"tower_layers": 2})],
)
def test_tower_runs_resume_exactly_and_with_a_new_task(encoder_dir, tmp_path, sharing, options):
    import json
    import shutil

    from safetensors.torch import load_file

    from ernie_style.config import load_config
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.trainer import FinetuneTrainer
    from ernie_style.testing.finetune import step_losses

    names = ["sentiment", "wiki_pairs"]
    top = {"epochs": 1, "checkpoint_every": 20, "keep_checkpoints": 20}
    full = run_config(
        tmp_path / "a.yaml", encoder_dir, tmp_path / "a", names, sharing, options, **top
    )
    FinetuneTrainer(load_config(FinetuneConfig, full, [])).train()
    middle = tmp_path / "a" / "checkpoints" / "step-00000020"
    shutil.copytree(middle, tmp_path / "b" / "checkpoints" / middle.name)
    again = run_config(
        tmp_path / "b.yaml", encoder_dir, tmp_path / "b", names, sharing, options, **top
    )
    FinetuneTrainer(load_config(FinetuneConfig, again, []), resume="auto").train()
    reference = step_losses(tmp_path / "a")
    resumed = step_losses(tmp_path / "b")
    assert resumed == {s: row for s, row in reference.items() if s >= 20}  # bit for bit
    # A new task: new tower (and cross-stitch row/column) added, every old weight kept.
    grown = run_config(
        tmp_path / "c.yaml", encoder_dir, tmp_path / "c", [*names, "wnut16"], sharing, options,
        epochs=2,
    )  # fmt: skip
    trainer = FinetuneTrainer(load_config(FinetuneConfig, grown, []), resume=str(middle))
    saved = load_file(str(middle / "model.safetensors"))
    state = trainer.unwrapped.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert "sharing.towers.wnut16.0.output.dense.weight" in state
    if sharing == "cross_stitch":
        order = trainer.unwrapped.sharing.tasks
        alpha = trainer.unwrapped.sharing.unit_matrices()[0]
        new, old = order.index("wnut16"), [order.index(t) for t in names]
        assert all(alpha[t, new] == 0 for t in old)  # old tasks do not read the new tower
        assert alpha[new, new] == pytest.approx(0.9) and alpha[new].sum() == pytest.approx(1.0)
    trainer.train()
    assert "wnut16" in json.loads((tmp_path / "c" / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("sharing", "options", "balancing"),
    [
        *[("soft", {"tower_layers": 3, "tower_l2": 0.01}, b) for b in BALANCERS],
        ("cross_stitch", {"tower_layers": 1}, "gradnorm"),
    ],
)
def test_towers_train_with_every_balancing_strategy(
    encoder_dir, tmp_path, sharing, options, balancing
):
    """tower_layers = 3 leaves no shared transformer layer: GradNorm then balances on the
    embeddings (cross-stitch: GradNorm, the balancer that reads the shared layer)."""
    from ernie_style.config import load_config
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.trainer import FinetuneTrainer
    from ernie_style.testing.finetune import step_losses

    config = run_config(
        tmp_path / "c.yaml", encoder_dir, tmp_path / "run", ["sentiment", "wiki_pairs"], sharing,
        options, epochs=1, balancing=balancing,
    )  # fmt: skip
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config))
    trainer.train()
    losses = [value for _, value in step_losses(tmp_path / "run").values()]
    assert losses and all(torch.isfinite(torch.tensor(losses)))

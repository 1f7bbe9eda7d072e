"""Sharing layers: shapes, gates, reference computations, unused parameters, add_task, state."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from torch.nn import functional as F

from ernie_style.components import sharing_registry
from ernie_style.config import option
from ernie_style.finetune.sharing import (
    SHARING_KINDS,
    ExpertBank,
    PLESharing,
    SharingLayer,
    build_sharing,
    register_sharing,
    zero_touch,
)

B, T, H = 3, 5, 16
TASKS = ["a", "b", "c"]


def layer(kind: str, tasks=TASKS, seed: int = 0, **options):
    torch.manual_seed(seed)
    if "dropout" in {f.name for f in dataclasses.fields(sharing_registry.get(kind).Config)}:
        options.setdefault("dropout", 0.0)
    return build_sharing(kind, H, tasks, **options)


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, H, generator=gen), torch.randn(B, H, generator=gen)


def randomize(module: torch.nn.Module, seed: int = 3) -> None:
    """Larger weights than the 0.02 init, so that gates and experts differ visibly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.mark.parametrize("kind", SHARING_KINDS)
def test_shapes_and_backward(kind):
    sharing = layer(kind)
    seq, pooled = inputs()
    seq.requires_grad_()
    pooled.requires_grad_()
    for task in TASKS:
        out_seq, out_pooled = sharing(task, seq, pooled)
        assert out_seq.shape == (B, T, H)
        assert out_pooled.shape == (B, H)
        (out_seq.sum() + out_pooled.sum()).backward()
    assert seq.grad is not None and pooled.grad is not None
    # An input given as None comes back as None.
    assert sharing("a", None, pooled)[0] is None
    assert sharing("a", seq, None)[1] is None
    assert sharing("a", None, None) == (None, None)


def test_hard_is_identity():
    sharing = layer("hard")
    seq, pooled = inputs()
    out_seq, out_pooled = sharing("b", seq, pooled)
    assert out_seq is seq and out_pooled is pooled
    assert list(sharing.parameters()) == []


def test_expert_bank_matches_separate_feed_forward_networks():
    torch.manual_seed(0)
    bank = ExpertBank(3, H, 7, dropout=0.0)
    randomize(bank)
    x = torch.randn(B, T, H)
    out = bank(x)
    assert out.shape == (B, T, 3, H)
    for e in range(3):
        hidden = F.gelu(x @ bank.weight_in[e] + bank.bias_in[e])
        torch.testing.assert_close(out[..., e, :], hidden @ bank.weight_out[e] + bank.bias_out[e])


def test_mmoe_matches_reference_and_gates_sum_to_one():
    sharing = layer("mmoe", num_experts=3, expert_hidden=8)
    randomize(sharing)
    seq, pooled = inputs()
    for x in (seq, pooled):
        weights = sharing.gate_weights("b", x)
        assert weights.shape == (*x.shape[:-1], 3)
        torch.testing.assert_close(weights.sum(-1), torch.ones(x.shape[:-1]))
    out_seq, out_pooled = sharing("b", seq, pooled)
    for x, out in ((seq, out_seq), (pooled, out_pooled)):
        weights = F.softmax(x @ sharing.gates["b"].weight.T + sharing.gates["b"].bias, dim=-1)
        experts = sharing.experts(x)
        expected = x + sum(weights[..., e, None] * experts[..., e, :] for e in range(3))
        torch.testing.assert_close(out, expected)
    # Without the residual the output is the mixture alone.
    plain = layer("mmoe", num_experts=3, expert_hidden=8, residual=False)
    plain.load_state_dict(sharing.state_dict())
    torch.testing.assert_close(plain("b", None, pooled)[1], out_pooled - pooled)


def mmoe_reference(sharing, task: str, x: torch.Tensor) -> torch.Tensor:
    """Multi-level MMoE written out: task gates on the task path, experts and shared gates
    on the shared path."""
    banks = [sharing.experts, *(level.experts for level in sharing.upper_levels)]
    gates = [sharing.gates, *(level.gates for level in sharing.upper_levels)]
    shared = [sharing.shared_gate, *(level.shared_gate for level in sharing.upper_levels)]
    task_x, shared_x = x, x
    for bank, task_gates, shared_gate in zip(banks, gates, shared, strict=True):
        experts = bank(shared_x)
        weights = F.softmax(task_gates[task](task_x), dim=-1)
        task_x = task_x + (weights[..., None] * experts).sum(-2)
        if shared_gate is not None:
            weights = F.softmax(shared_gate(shared_x), dim=-1)
            shared_x = shared_x + (weights[..., None] * experts).sum(-2)
    return task_x


def test_multilevel_mmoe_matches_reference_and_one_level_is_plain_mmoe():
    sharing = layer("mmoe", num_experts=3, expert_hidden=8, levels=3)
    randomize(sharing)
    assert sharing.num_levels == 3 and sharing.upper_levels[-1].shared_gate is None
    seq, pooled = inputs()
    for task in TASKS:
        out_seq, out_pooled = sharing(task, seq, pooled)
        torch.testing.assert_close(out_seq, mmoe_reference(sharing, task, seq))
        torch.testing.assert_close(out_pooled, mmoe_reference(sharing, task, pooled))
    # Each level adds to the result: three levels differ from the first level alone.
    single = layer("mmoe", num_experts=3, expert_hidden=8)
    single.load_state_dict(
        {k: v for k, v in sharing.state_dict().items() if k.startswith(("experts.", "gates."))}
    )
    assert not torch.allclose(single("a", None, pooled)[1], sharing("a", None, pooled)[1])
    # One level keeps the names a one-level MMoE checkpoint has.
    assert {k.split(".")[0] for k in single.state_dict()} == {"experts", "gates"}


def test_gate_is_per_position_for_sequences():
    for kind in ("mmoe", "ple"):
        sharing = layer(kind)
        randomize(sharing)
        seq, _ = inputs()
        out_seq, out_first = sharing("a", seq, seq[:, 0])
        # Position 0 of the sequence is mixed exactly like a pooled vector equal to it.
        torch.testing.assert_close(out_seq[:, 0], out_first)


def ple_reference(sharing: PLESharing, task: str, x: torch.Tensor) -> torch.Tensor:
    """PLE computed in full: every task's and the shared path at every level."""
    task_inputs = dict.fromkeys(sharing.tasks, x)
    shared_input = x
    for i, level in enumerate(sharing.levels):
        shared_experts = level.shared_experts(shared_input)
        task_experts = {t: level.task_experts[t](task_inputs[t]) for t in sharing.tasks}
        new_inputs = {}
        for t in sharing.tasks:
            weights = sharing.gate_weights(t, task_inputs[t], i)
            experts = torch.cat([task_experts[t], shared_experts], dim=-2)
            new_inputs[t] = task_inputs[t] + (weights[..., None] * experts).sum(-2)
        if level.shared_gate is not None:
            weights = sharing.shared_gate_weights(shared_input, i)
            experts = torch.cat([shared_experts, *(task_experts[t] for t in sharing.tasks)], -2)
            shared_input = shared_input + (weights[..., None] * experts).sum(-2)
        task_inputs = new_inputs
    return task_inputs[task]


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_ple_matches_full_reference(levels):
    sharing = layer("ple", levels=levels, shared_experts=2, task_experts=2, expert_hidden=8)
    randomize(sharing)
    seq, pooled = inputs()
    for task in TASKS:
        out_seq, out_pooled = sharing(task, seq, pooled)
        torch.testing.assert_close(out_seq, ple_reference(sharing, task, seq))
        torch.testing.assert_close(out_pooled, ple_reference(sharing, task, pooled))


def test_ple_gates_sum_to_one():
    sharing = layer("ple", levels=2, shared_experts=2, task_experts=1)
    randomize(sharing)
    seq, pooled = inputs()
    for x in (seq, pooled):
        task_weights = sharing.gate_weights("c", x, level=1)
        assert task_weights.shape[-1] == 1 + 2
        torch.testing.assert_close(task_weights.sum(-1), torch.ones(x.shape[:-1]))
        shared_weights = sharing.shared_gate_weights(x, level=0)
        assert shared_weights.shape[-1] == 2 + 3 * 1
        torch.testing.assert_close(shared_weights.sum(-1), torch.ones(x.shape[:-1]))
    with pytest.raises(ValueError, match="top level"):
        sharing.shared_gate_weights(pooled, level=1)


def test_cgc_is_single_level_ple():
    cgc = layer("cgc", shared_experts=3, task_experts=2)
    assert cgc.kind == "cgc"
    assert len(cgc.levels) == 1 and cgc.levels[0].shared_gate is None
    ple = layer("ple", levels=1, shared_experts=3, task_experts=2)
    ple.load_state_dict(cgc.state_dict())
    _, pooled = inputs()
    torch.testing.assert_close(cgc("a", None, pooled)[1], ple("a", None, pooled)[1])


@pytest.mark.parametrize("kind", ["mmoe", "ple", "cgc"])
def test_tasks_see_different_outputs(kind):
    sharing = layer(kind)
    seq, pooled = inputs()
    outputs = {task: sharing(task, seq, pooled) for task in TASKS}
    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        assert not torch.allclose(outputs[x][0], outputs[y][0])
        assert not torch.allclose(outputs[x][1], outputs[y][1])


def grads_after_one_task(sharing, task: str = "b", read: str = "pooled") -> dict:
    sharing.zero_grad(set_to_none=True)
    seq, pooled = inputs()
    out_seq, out_pooled = sharing(task, seq, pooled)
    (out_pooled if read == "pooled" else out_seq).pow(2).sum().backward()
    return {name: p.grad for name, p in sharing.named_parameters()}


CONFIGS = [
    ("mmoe", {}),
    ("mmoe", {"levels": 3}),
    ("cgc", {}),
    ("ple", {"levels": 2}),
    ("ple", {"levels": 3}),
]


@pytest.mark.parametrize(("kind", "options"), CONFIGS)
def test_unused_parameters_are_exactly_those_without_gradient(kind, options):
    sharing = layer(kind, touch_unused=False, **options)
    grads = grads_after_one_task(sharing)
    without = {name for name, g in grads.items() if g is None}
    by_id = {id(p): name for name, p in sharing.named_parameters()}
    declared = {by_id[id(p)] for p in sharing.unused_parameters("b")}
    assert without == declared
    assert without  # other tasks' gates at least
    assert all(".b." not in name and not name.endswith(".b") for name in without)


@pytest.mark.parametrize(("kind", "options"), CONFIGS)
@pytest.mark.parametrize("read", ["pooled", "sequence"])
def test_touch_unused_gives_every_parameter_a_gradient(kind, options, read):
    sharing = layer(kind, **options)
    assert sharing.touch_unused
    grads = grads_after_one_task(sharing, read=read)
    assert all(g is not None for g in grads.values())
    unused = {id(p) for p in sharing.unused_parameters("b")}
    for p in sharing.parameters():
        if id(p) in unused:
            assert torch.count_nonzero(p.grad) == 0
    # The zero term changes no value.
    untouched = layer(kind, touch_unused=False, **options)
    seq, pooled = inputs()
    for ours, theirs in zip(sharing("b", seq, pooled), untouched("b", seq, pooled), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_zero_touch():
    assert zero_touch([]) is None
    a = torch.nn.Parameter(torch.ones(2, 3))
    b = torch.nn.Parameter(torch.full((4,), 5.0))
    touch = zero_touch([a, b])
    assert touch.item() == 0.0
    touch.backward()
    assert torch.count_nonzero(a.grad) == 0 and b.grad.shape == (4,)


@pytest.mark.parametrize(("kind", "options"), [*CONFIGS, ("hard", {})])
def test_add_task_keeps_old_weights(kind, options):
    sharing = layer(kind, tasks=["a", "b"], **options)
    before = {k: v.clone() for k, v in sharing.state_dict().items()}
    seq, pooled = inputs()
    old_a = sharing("a", seq, pooled)
    sharing.add_task("c")
    assert sharing.tasks == ["a", "b", "c"]
    after = sharing.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    new_keys = set(after) - set(before)
    assert all(".c." in key or key.endswith(".c") for key in new_keys)
    out_seq, out_pooled = sharing("c", seq, pooled)
    assert out_seq.shape == (B, T, H) and out_pooled.shape == (B, H)
    # The new task's parameters learn; only task c's gates exist for it.
    if kind != "hard":
        grads = grads_after_one_task(sharing, task="c")
        assert all(g is not None for g in grads.values())
    if kind in {"mmoe", "cgc", "hard"}:  # no shared gate grows: old tasks are unchanged
        for ours, theirs in zip(sharing("a", seq, pooled), old_a, strict=True):
            assert torch.equal(ours, theirs)
    # Resuming: a layer built with the new task list loads the old state, missing only c.
    resumed = layer(kind, tasks=["a", "b", "c"], seed=9, **options)
    missing, unexpected = resumed.load_state_dict(before, strict=False)
    assert unexpected == []
    assert set(missing) == new_keys
    with pytest.raises(ValueError, match="already exists"):
        sharing.add_task("a")


@pytest.mark.parametrize(("kind", "options"), [*CONFIGS, ("hard", {})])
def test_state_dict_round_trip(kind, options):
    sharing = layer(kind, seed=0, **options)
    copy = layer(kind, seed=5, **options)
    copy.load_state_dict(sharing.state_dict())
    seq, pooled = inputs()
    for task in TASKS:
        for ours, theirs in zip(sharing(task, seq, pooled), copy(task, seq, pooled), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_defaults():
    mmoe = build_sharing("mmoe", H, TASKS)
    assert mmoe.experts.num_experts == 4 and mmoe.experts.weight_in.shape == (4, H, H)
    assert mmoe.residual and mmoe.touch_unused
    ple = build_sharing("ple", H, TASKS)
    assert len(ple.levels) == 2
    assert ple.levels[0].shared_experts.num_experts == 2
    assert ple.levels[0].task_experts["a"].num_experts == 1


def test_errors():
    with pytest.raises(ValueError, match=r"unknown sharing kind 'moe'.*mmoe"):
        build_sharing("moe", H, TASKS)
    with pytest.raises(ValueError, match="levels"):
        build_sharing("cgc", H, TASKS, levels=2)
    with pytest.raises(ValueError, match="num_experts"):
        build_sharing("ple", H, TASKS, num_experts=3)
    with pytest.raises(ValueError, match="dropout"):
        build_sharing("hard", H, TASKS, dropout=0.1)
    with pytest.raises(ValueError, match="num_experts must"):
        build_sharing("mmoe", H, TASKS, num_experts=0)
    with pytest.raises(ValueError, match="task_experts must"):
        build_sharing("ple", H, TASKS, task_experts=0)
    with pytest.raises(ValueError, match="duplicate"):
        build_sharing("mmoe", H, ["a", "a"])
    with pytest.raises(ValueError, match="cannot name a module"):
        build_sharing("mmoe", H, ["glue.sst2"])
    with pytest.raises(KeyError, match="'z'"):
        build_sharing("mmoe", H, TASKS)("z", None, torch.zeros(1, H))


@pytest.mark.parametrize("kind", SHARING_KINDS)
def test_bfloat16(kind):
    sharing = layer(kind).to(torch.bfloat16)
    seq, pooled = (x.to(torch.bfloat16) for x in inputs())
    out_seq, out_pooled = sharing("a", seq, pooled)
    assert out_seq.dtype == out_pooled.dtype == torch.bfloat16
    assert torch.isfinite(out_seq).all() and torch.isfinite(out_pooled).all()


#: Every kind's options as the docs list them (docs/loss_balancing.md, sharing.py).
DOCUMENTED = {
    "hard": {},
    "mmoe": {
        "num_experts": 2,
        "levels": 2,
        "expert_hidden": 8,
        "dropout": 0,
        "residual": False,
        "touch_unused": False,
    },
    "ple": {
        "shared_experts": 1,
        "task_experts": 2,
        "levels": 3,
        "expert_hidden": 8,
        "dropout": 0.2,
        "residual": False,
        "touch_unused": False,
    },
    "soft": {"tower_layers": 2, "tower_l2": 0.01},
    "cross_stitch": {"tower_layers": 1, "self_weight": 0.8},
    "cgc": {
        "shared_experts": 3,
        "task_experts": 1,
        "expert_hidden": None,
        "dropout": 0.0,
        "residual": True,
        "touch_unused": True,
    },
}


@pytest.mark.parametrize("kind", SHARING_KINDS)
def test_each_config_accepts_its_documented_options(kind):
    assert set(DOCUMENTED) == set(SHARING_KINDS) == set(sharing_registry.names())
    cls = sharing_registry.get(kind)
    assert cls.kind == kind and dataclasses.is_dataclass(cls.Config)
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    assert set(fields) == set(DOCUMENTED[kind])
    assert all(f.metadata.get("help") for f in fields.values())
    # The Config's defaults are the constructor's: the options are one list.
    init = list(inspect.signature(cls).parameters.values())[2:]
    assert {p.name: p.default for p in init} == {name: f.default for name, f in fields.items()}
    config = sharing_registry.parse(kind, DOCUMENTED[kind], "sharing_options")
    assert isinstance(config, cls.Config)
    assert dataclasses.asdict(config) == DOCUMENTED[kind]
    built = build_sharing(kind, H, TASKS, **DOCUMENTED[kind])
    assert isinstance(built, cls) and built.kind == kind
    if kind in ("ple", "cgc"):
        assert len(built.levels) == DOCUMENTED[kind].get("levels", 1)
        assert built.levels[0].shared_experts.num_experts == DOCUMENTED[kind]["shared_experts"]


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        (
            "mmoe",
            {"num_expert": 2},
            r"^sharing_options\.num_expert: unknown option for sharing kind 'mmoe'; valid: "
            "dropout, expert_hidden, levels, num_experts, residual, touch_unused$",
        ),
        ("mmoe", {"levels": 0}, r"^sharing_options\.levels must be an integer >= 1, got 0$"),
        ("cgc", {"levels": 2}, r"^sharing_options\.levels: unknown option for sharing kind 'cgc'"),
        ("hard", {"dropout": 0.1}, r"^sharing_options\.dropout: unknown option.*valid: none"),
        ("mmoe", {"num_experts": "4"}, "config key 'sharing_options.num_experts' must be int"),
        ("ple", {"residual": "no"}, "config key 'sharing_options.residual' must be bool"),
        ("mmoe", {"expert_hidden": 1.5}, "config key 'sharing_options.expert_hidden'"),
        ("ple", {"levels": 0}, r"^sharing_options\.levels must be an integer >= 1, got 0$"),
        ("mmoe", {"dropout": 1.0}, r"^sharing_options\.dropout must be a finite number in \["),
    ],
)
def test_bad_options_name_the_dotted_key(kind, options, message):
    with pytest.raises(ValueError, match=message):
        sharing_registry.parse(kind, options, "sharing_options")


@pytest.fixture
def scaled():
    """A custom sharing layer, registered with the decorator for the test only."""

    @register_sharing("scaled")
    class ScaledSharing(SharingLayer):
        """Every task sees the encoder output times `scale`."""

        @dataclasses.dataclass
        class Config:
            """Options of `scaled`."""

            scale: float = option(1.0, "the factor")

        def __init__(self, hidden_size: int, tasks, scale: float = 1.0) -> None:
            super().__init__(touch_unused=False)
            self.scale = scale
            for name in tasks:
                self.add_task(name)

        def _transform(self, task: str, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    yield ScaledSharing
    sharing_registry.unregister("scaled")


def test_a_custom_sharing_layer_registers_with_the_decorator(scaled):
    assert sharing_registry.names() == (*SHARING_KINDS, "scaled")
    built = build_sharing("scaled", H, TASKS, scale=2)
    assert isinstance(built, scaled) and built.kind == "scaled" and built.scale == 2.0
    _, pooled = inputs()
    torch.testing.assert_close(built("a", None, pooled)[1], 2 * pooled)
    with pytest.raises(ValueError, match="scle"):
        build_sharing("scaled", H, TASKS, scle=2)
    with pytest.raises(ValueError, match="'mmoe' is already registered by MMoESharing"):
        register_sharing("mmoe")(scaled)
    with pytest.raises(TypeError, match="decorates SharingLayer subclasses"):
        register_sharing("plain")(dict)

    class Untyped(SharingLayer):
        Config = dict  # not a dataclass

    with pytest.raises(TypeError, match="`Config` dataclass"):
        register_sharing("untyped")(Untyped)
    assert sharing_registry.names() == (*SHARING_KINDS, "scaled")

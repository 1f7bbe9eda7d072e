"""Loss balancing strategies: exact formulas, toy problems with known behaviour, exact resume,
tasks added later, and identical weights on two gloo processes with different local losses."""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ernie_style.components import balancer_registry
from ernie_style.config import option
from ernie_style.train.balancing import (
    BALANCERS,
    LossBalancer,
    balancer_class,
    build_balancer,
    check_options,
    register_balancer,
    registered_balancers,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "loss_balancing.md"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add contention (10x slower on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


OPTIONS = {"fixed": {"weights": {"a": 0.5, "b": 2.0, "c": 1.5}}}


def make(name, tasks=("a", "b"), reduce=None, **options):
    return build_balancer(name, list(tasks), {**OPTIONS.get(name, {}), **options}, reduce)


def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def drive(balancer, steps, one_task_per_step=False, rank=0):
    """Deterministic losses per step (and per rank) through every entry point; the weights
    after each step."""
    params = list(balancer.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1) if params else None
    history = []
    for step in steps:
        w = nn.Parameter(torch.tensor([1.0, -0.5]))
        tasks = balancer.tasks
        if one_task_per_step:
            tasks = [tasks[(step + rank) % len(tasks)]]
        losses = {}
        for task in tasks:
            i = balancer.tasks.index(task)
            scale = (1.0 + i) * (1.0 + 0.3 * math.sin(step + i)) / (1.0 + 0.1 * step * i)
            losses[task] = scale * (1.0 + rank) * (w * torch.tensor([1.0, 2.0 + i])).sum() ** 2
        total = balancer(losses, [w])
        if optimizer is not None:
            optimizer.zero_grad()
        total.backward()
        balancer.sync_gradients()
        if optimizer is not None:
            optimizer.step()
        if step % 3 == 2:
            balancer.end_window()
        balancer.update_kpis(
            {t: 0.5 + 0.4 * math.sin(step + 2 * balancer.tasks.index(t) + rank) for t in tasks}
        )
        history.append(balancer.weights())
    return history


# ---- construction ---------------------------------------------------------------------------
def test_registry_names_and_errors():
    assert BALANCERS == ("equal", "fixed", "uncertainty", "dwa", "gradnorm", "dtp")
    with pytest.raises(ValueError, match=r"'magic'.*equal, fixed, uncertainty, dwa"):
        build_balancer("magic", ["a"])
    with pytest.raises(ValueError, match=r"\['temprature'\].*'dwa'.*valid: temperature"):
        build_balancer("dwa", ["a"], {"temprature": 1.0})
    with pytest.raises(ValueError, match="'temperature'"):
        check_options("dwa", {"temperature": 0})
    with pytest.raises(ValueError, match="'lr'"):
        check_options("gradnorm", {"lr": "fast"})
    check_options("gradnorm", {"alpha": 0.5})
    with pytest.raises(ValueError, match="already registered"):
        build_balancer("equal", ["a", "a"])
    with pytest.raises(ValueError, match=r"without '\.'"):
        build_balancer("equal", ["glue.sst2"])


@pytest.mark.parametrize("name", BALANCERS)
def test_defaults_match_constructor(name):
    cls = balancer_class(name)
    keyword = {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    }
    assert keyword == dict(cls.defaults)


#: Every strategy's options as docs/loss_balancing.md documents them (ints where floats go).
DOCUMENTED = {
    "equal": {},
    "fixed": {"weights": {"a": 0.5, "b": 2}},
    "uncertainty": {"init_log_variance": -1},
    "dwa": {"temperature": 1},
    "gradnorm": {"alpha": 0.5, "lr": 0.01, "ema": 0},
    "dtp": {"gamma": 1, "alpha": 0.5, "kpi_from_loss": True},
}


@pytest.mark.parametrize("name", BALANCERS)
def test_each_config_accepts_its_documented_options(name):
    cls = balancer_class(name)
    assert dataclasses.is_dataclass(cls.Config) and cls.name == name
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    assert set(fields) == set(DOCUMENTED[name]) == set(cls.defaults)
    assert all(f.metadata.get("help") for f in fields.values())
    docs = DOCS.read_text(encoding="utf-8")
    assert all(f"`{key}`" in docs for key in fields), "document every option"
    config = check_options(name, DOCUMENTED[name], "balancing_options")
    assert isinstance(config, cls.Config)
    for key, value in DOCUMENTED[name].items():
        assert getattr(config, key) == value
        if isinstance(value, int) and not isinstance(value, bool):
            assert type(getattr(config, key)) is float
    balancer = build_balancer(name, ["a", "b"], config)
    assert balancer.options == {**dict(cls.defaults), **DOCUMENTED[name]}


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "dwa",
            {"temprature": 1.0},
            r"^balancing_options\.temprature: unknown option for loss balancing strategy 'dwa'; "
            "valid: temperature$",
        ),
        ("dtp", {"gama": 1, "alpha": 0.5}, r"^balancing_options\.gama: unknown option.*gamma"),
        ("equal", {"weights": {}}, r"^balancing_options\.weights: unknown option.*valid: none"),
        ("gradnorm", {"lr": "fast"}, "config key 'balancing_options.lr' must be float"),
        ("dtp", {"kpi_from_loss": "yes"}, "config key 'balancing_options.kpi_from_loss' must"),
        ("fixed", {"weights": {"a": "x"}}, "config key 'balancing_options.weights.a' must"),
        ("fixed", {"weights": {"a": -1}}, r"^balancing_options\.weights\.a must be a finite"),
        ("dwa", {"temperature": 0}, r"^balancing_options\.temperature must be a finite"),
        ("gradnorm", {"ema": 1.0}, r"^balancing_options\.ema must be a finite number in \["),
    ],
)
def test_bad_options_name_the_dotted_key(name, options, message):
    with pytest.raises(ValueError, match=message):
        check_options(name, options, "balancing_options")


@pytest.fixture
def halved():
    """A custom strategy, registered with the decorator for the test only."""

    @register_balancer("halved")
    class HalvedBalancer(LossBalancer):
        """Weight `factor` for every task."""

        @dataclasses.dataclass
        class Config:
            """Options of `halved`."""

            factor: float = option(0.5, "the weight of every task")

        def __init__(self, tasks, reduce=None, *, factor: float = 0.5) -> None:
            super().__init__(reduce)
            self.factor = self._configure(factor=factor).factor
            self._add_tasks(tasks)

        def _weight(self, task: str) -> float:
            return self.factor

    yield HalvedBalancer
    balancer_registry.unregister("halved")


def test_a_custom_strategy_registers_with_the_decorator(halved):
    assert registered_balancers() == (*BALANCERS, "halved")
    assert balancer_class("halved") is halved and halved.defaults == {"factor": 0.5}
    balancer = build_balancer("halved", ["a", "b"], {"factor": 0.25})
    assert balancer({"a": torch.tensor(4.0), "b": torch.tensor(2.0)}).item() == 1.5
    with pytest.raises(ValueError, match=r"^balancing_options\.fctor: unknown option.*factor"):
        check_options("halved", {"fctor": 1}, "balancing_options")


def test_the_decorator_checks_what_it_registers(halved):
    with pytest.raises(ValueError, match="'dwa' is already registered by DWABalancer"):
        register_balancer("dwa")(halved)
    with pytest.raises(TypeError, match="decorates LossBalancer subclasses"):
        register_balancer("plain")(dict)
    with pytest.raises(TypeError, match="`Config` dataclass"):

        class Untyped(LossBalancer):
            Config = dict  # not a dataclass

    assert registered_balancers() == (*BALANCERS, "halved")


def test_losses_must_be_known_scalars():
    balancer = make("equal")
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['z'\]"):
        balancer({"z": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="empty"):
        balancer({})
    with pytest.raises(ValueError, match="scalar"):
        balancer({"a": torch.ones(3)})


# ---- equal / fixed --------------------------------------------------------------------------
def test_equal_is_the_plain_sum():
    balancer = make("equal", ["a", "b", "c"])
    total = balancer({"a": torch.tensor(1.5), "c": torch.tensor(2.0)})
    assert total.item() == 3.5
    assert balancer.weights() == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_fixed_weights_exact_and_missing_task():
    balancer = make("fixed", ["a", "b"])
    assert balancer.weights() == {"a": 0.5, "b": 2.0}
    total = balancer({"a": torch.tensor(4.0), "b": torch.tensor(3.0)})
    assert total.item() == 8.0
    balancer.add_task("c")  # listed in the weights
    assert balancer.weights()["c"] == 1.5
    with pytest.raises(ValueError, match=r"no weight for task\(s\) \['mlm'\]"):
        build_balancer("fixed", ["a", "mlm"], {"weights": {"a": 1.0}})
    with pytest.raises(ValueError, match="no weight for task"):
        build_balancer("fixed", ["a"])
    with pytest.raises(ValueError, match="'mlm'"):
        build_balancer("fixed", ["a"], {"weights": {"a": 1.0}}).add_task("mlm")
    with pytest.raises(ValueError, match=r"weights\.a"):
        build_balancer("fixed", ["a"], {"weights": {"a": -1.0}})


# ---- uncertainty ----------------------------------------------------------------------------
def test_uncertainty_downweights_the_noisy_task():
    torch.manual_seed(0)
    n, d = 4096, 4
    x = torch.randn(n, d)
    variances = {"clean": 0.01, "noisy": 1.0}
    targets = {t: x @ torch.randn(d) + torch.randn(n) * v**0.5 for t, v in variances.items()}
    shared = nn.Linear(d, 8)
    heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in variances})
    balancer = make("uncertainty", variances)
    params = [*shared.parameters(), *heads.parameters(), *balancer.parameters()]
    optimizer = torch.optim.Adam(params, lr=0.05)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [300, 400], 0.2)
    for _ in range(500):
        batch = torch.randint(0, n, (128,))  # mini-batches: gradients never vanish (denormals)
        h = shared(x[batch])
        losses = {
            t: nn.functional.mse_loss(heads[t](h).squeeze(1), y[batch]) for t, y in targets.items()
        }
        optimizer.zero_grad()
        balancer(losses).backward()
        optimizer.step()
        schedule.step()
    weights = balancer.weights()
    assert weights["clean"] > 30 * weights["noisy"]
    for task, variance in variances.items():  # s -> log of the residual variance
        assert balancer.log_variances[task].item() == pytest.approx(math.log(variance), abs=0.2)


def test_uncertainty_total_formula():
    balancer = make("uncertainty", init_log_variance=0.5)
    with torch.no_grad():
        balancer.log_variances["b"].fill_(-1.0)
    total = balancer({"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    expected = math.exp(-0.5) * 2.0 + 0.5 + math.exp(1.0) * 3.0 - 1.0
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert balancer.weights()["b"] == pytest.approx(math.e, rel=1e-6)


# ---- gradnorm -------------------------------------------------------------------------------
def test_gradnorm_single_update_exact():
    w = nn.Parameter(torch.ones(1))
    balancer = make("gradnorm")
    total = balancer({"a": (3 * w).sum(), "b": (1 * w).sum()}, [w])
    assert total.item() == 4.0  # this step's total uses the weights before the update
    # G = (3, 1), target = mean(G) = 2, step = lr * sign(G - target) * g / mean(g)
    a, b = 1 - 0.025 * 3 / 2, 1 + 0.025 * 1 / 2
    expected = {"a": 2 * a / (a + b), "b": 2 * b / (a + b)}
    assert balancer.weights() == pytest.approx(expected, rel=1e-12)


def test_gradnorm_favours_the_task_whose_loss_falls_slowest():
    balancer = make("gradnorm", ema=0.0)
    for step in range(3):
        w = nn.Parameter(torch.ones(1))
        balancer({"a": (2 * w).sum(), "b": (2 * w).sum() * 0.5**step}, [w])
    weights = balancer.weights()
    assert weights["a"] > 1 > weights["b"]
    assert sum(weights.values()) == pytest.approx(2.0)


def _gradnorm_toy(name, one_task_per_step, steps=300):
    """Two symmetric regression tasks on one shared layer, except that task b's loss is scaled
    10x, so its gradient on the shared layer is ~10x larger. Returns the mean over the last
    100 steps of log(||∇_W w_b L_b|| / ||∇_W w_a L_a||) on the same batch."""
    torch.manual_seed(0)
    n, d = 2048, 8
    x = torch.randn(n, d)
    directions = torch.linalg.qr(torch.randn(d, 2)).Q.T * 2  # orthogonal, same norm
    targets = {t: x @ directions[i] + 0.5 * torch.randn(n) for i, t in enumerate("ab")}
    scale = {"a": 1.0, "b": 10.0}
    shared = nn.Linear(d, 16)
    heads = nn.ModuleDict({t: nn.Linear(16, 1) for t in "ab"})
    heads["b"].load_state_dict(heads["a"].state_dict())
    balancer = make(name)
    optimizer = torch.optim.SGD([*shared.parameters(), *heads.parameters()], lr=0.01)
    log_ratios = []
    for step in range(steps):
        batch = torch.randint(0, n, (64,))
        h = shared(x[batch])
        losses = {
            t: scale[t] * nn.functional.mse_loss(heads[t](h).squeeze(1), targets[t][batch])
            for t in "ab"
        }
        if step >= steps - 100:
            weights, norms = balancer.weights(), {}
            for t in "ab":
                grads = torch.autograd.grad(losses[t], list(shared.parameters()), retain_graph=True)
                norms[t] = weights[t] * torch.sqrt(sum((g**2).sum() for g in grads)).item()
            log_ratios.append(math.log(norms["b"] / norms["a"]))
        tasks = [("a", "b")[step % 2]] if one_task_per_step else ["a", "b"]
        optimizer.zero_grad()
        balancer({t: losses[t] for t in tasks}, list(shared.parameters())).backward()
        optimizer.step()
    assert sum(balancer.weights().values()) == pytest.approx(2.0)
    return sum(log_ratios) / len(log_ratios)


@pytest.mark.parametrize("one_task_per_step", [False, True])
def test_gradnorm_equalises_gradient_norms(one_task_per_step):
    equal = _gradnorm_toy("equal", one_task_per_step)
    balanced = _gradnorm_toy("gradnorm", one_task_per_step)
    assert equal > math.log(5)
    assert abs(balanced) < 0.2 * equal


def test_gradnorm_needs_shared_parameters_that_the_loss_uses():
    w = nn.Parameter(torch.ones(1))
    balancer = make("gradnorm")
    assert balancer.needs_shared_parameters
    with pytest.raises(ValueError, match="shared_parameters"):
        balancer({"a": (w * 2).sum()})
    with pytest.raises(ValueError, match="'b' does not depend"):
        balancer({"a": (w * 2).sum(), "b": (nn.Parameter(torch.ones(1)) * 2).sum()}, [w])


def test_gradnorm_under_bf16_autocast():
    torch.manual_seed(0)
    shared, head = nn.Linear(8, 8), nn.Linear(8, 1)
    balancer = make("gradnorm")
    x = torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = shared(x)
        losses = {"a": head(h).float().pow(2).mean(), "b": 10 * head(h).float().abs().mean()}
        total = balancer(losses, list(shared.parameters()))
    total.backward()
    assert shared.weight.grad is not None
    state = balancer.get_extra_state()["state"]
    assert all(math.isfinite(state[t]["grad_norm"]) for t in "ab")
    assert balancer.weights()["a"] != 1.0


# ---- dwa ------------------------------------------------------------------------------------
def test_dwa_slow_task_gets_more_weight():
    balancer = make("dwa", ["fast", "slow"])
    for window in range(4):
        for _ in range(5):
            losses = {"fast": 10 * 0.5**window, "slow": 10 * 0.95**window}
            balancer({t: torch.tensor(v) for t, v in losses.items()})
        if window < 2:  # two windows of history first
            assert balancer.weights() == {"fast": 1.0, "slow": 1.0}
        balancer.end_window()
    weights = balancer.weights()
    z = [math.exp(0.5 / 2), math.exp(0.95 / 2)]
    assert weights == pytest.approx({"fast": 2 * z[0] / sum(z), "slow": 2 * z[1] / sum(z)})
    assert weights["slow"] > weights["fast"]
    assert sum(weights.values()) == pytest.approx(2.0)


def test_dwa_explicit_means_and_late_task():
    balancer = make("dwa", ["a", "b", "c"], temperature=1.0)
    balancer.end_window({"a": 4.0, "b": 4.0})
    balancer.end_window({"a": 2.0, "b": 3.0})
    a, b = _dwa(0.5, 0.75)
    assert balancer.weights() == pytest.approx({"a": a, "b": b, "c": 1.0})
    balancer.end_window({"c": 1.0})  # c: one window; a, b keep their history
    balancer.end_window({"c": 1.0})
    weights = balancer.weights()
    assert weights == pytest.approx(dict(zip("abc", _dwa(0.5, 0.75, 1.0), strict=True)))
    assert sum(weights.values()) == pytest.approx(3.0)
    assert weights["c"] > weights["b"] > weights["a"]


def _dwa(*ratios, temperature=1.0):
    exps = [math.exp(r / temperature) for r in ratios]
    return [len(ratios) * e / sum(exps) for e in exps]


# ---- dtp ------------------------------------------------------------------------------------
def test_dtp_focal_weights_exact():
    balancer = make("dtp", ["good", "bad", "new"])
    assert balancer.weights() == {"good": 1.0, "bad": 1.0, "new": 1.0}
    balancer.update_kpis({"good": 0.9, "bad": 0.3})
    expected = {t: -((1 - k) ** 2) * math.log(k) for t, k in (("good", 0.9), ("bad", 0.3))}
    assert balancer.weights() == pytest.approx({**expected, "new": 1.0})
    assert balancer.weights()["bad"] > balancer.weights()["good"]
    balancer.update_kpis({"good": 0.5})  # moving average 0.9 * 0.9 + 0.1 * 0.5
    assert balancer.weights()["good"] == pytest.approx(-(0.14**2) * math.log(0.86))
    total = balancer({"bad": torch.tensor(2.0)})
    assert total.item() == pytest.approx(2 * expected["bad"])
    balancer.update_kpis({"new": 1.0})  # clipped into [eps, 1 - eps]
    assert 0 < balancer.weights()["new"] < 1e-10
    with pytest.raises(ValueError, match="KPI of task 'bad'"):
        balancer.update_kpis({"bad": 1.5})
    with pytest.raises(ValueError, match="unknown task 'zz'"):
        balancer.update_kpis({"zz": 0.5})


def test_dtp_kpi_from_loss():
    balancer = make("dtp", kpi_from_loss=True, gamma=1.0)
    balancer({"a": torch.tensor(0.1), "b": torch.tensor(2.0)})
    weights = balancer.weights()
    for task, loss in (("a", 0.1), ("b", 2.0)):
        kpi = math.exp(-loss)
        assert weights[task] == pytest.approx(-(1 - kpi) * math.log(kpi))
    balancer.eval()  # evaluation does not move the statistics
    balancer({"a": torch.tensor(5.0)})
    assert balancer.weights() == weights


# ---- state ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BALANCERS)
@pytest.mark.parametrize("one_task_per_step", [False, True])
def test_state_dict_round_trip_continues_exactly(name, one_task_per_step):
    tasks = ("a", "b", "c")
    original = make(name, tasks)
    drive(original, range(7), one_task_per_step)  # stops mid-window (dwa)
    restored = make(name, tasks)
    restored.load_state_dict(roundtrip(original.state_dict()))
    fresh = make(name, tasks)
    expected = drive(original, range(7, 14), one_task_per_step)
    assert drive(restored, range(7, 14), one_task_per_step) == expected
    if name not in ("equal", "fixed"):  # the state matters: a fresh balancer goes elsewhere
        assert drive(fresh, range(7, 14), one_task_per_step) != expected


def test_loading_another_strategy_fails():
    with pytest.raises(ValueError, match=r"'dwa'.*'gradnorm'"):
        make("gradnorm").load_state_dict(make("dwa").state_dict())


@pytest.mark.parametrize("name", BALANCERS)
def test_add_task_keeps_other_tasks_state(name):
    old = make(name, ("a", "b"))
    drive(old, range(6))
    before = old.get_extra_state()["state"]
    weights = old.weights()
    checkpoint = roundtrip(old.state_dict())

    old.add_task("c")
    assert {t: old.weights()[t] for t in "ab"} == weights
    assert {t: old.get_extra_state()["state"][t] for t in "ab"} == before
    assert old.weights()["c"] == make(name, ("c",)).weights()["c"]

    resumed = make(name, ("a", "b", "c"))  # resume with a new task in the config
    resumed.load_state_dict(checkpoint)
    assert resumed.get_extra_state() == old.get_extra_state()
    assert drive(resumed, range(6, 12)) == drive(old, range(6, 12))

    fewer = make(name, ("a",))  # a checkpoint task missing from the config is kept
    fewer.load_state_dict(checkpoint)
    assert fewer.tasks == ["a", "b"]
    assert fewer.weights() == weights


# ---- distributed ----------------------------------------------------------------------------
# Two real processes (torch.multiprocessing, a gloo process group): every balancer's `reduce`
# is an all_reduce between them. One spawn runs every scenario (spawning costs seconds); the
# tests then check what each rank returned.
GLOO_SIZE = 2
AGREE = [(n, o) for n in ("uncertainty", "dwa", "gradnorm", "dtp") for o in (False, True)]
SUM_VS_MEAN = ["dwa", "gradnorm", "dtp"]
DWA_LOCAL = {0: {"a": [1.0, 2.0], "b": [4.0]}, 1: {"a": [3.0], "b": [2.0, 2.0, 2.0]}}
SKEWED_DECAY = (0.5, 0.25)  # task a's loss falls faster on rank 1


class GlooReduce:
    """`reduce` over the default (gloo) process group: all_reduce SUM, divided by the world
    size for "mean"; counts its calls."""

    def __init__(self, op: str = "mean") -> None:
        self.op = op
        self.calls = 0

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        self.calls += 1
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / dist.get_world_size() if self.op == "mean" else out


def dwa_windows(balancer, ranks, decay=(0.5, 0.5)):
    """Three DWA windows of the `ranks`' local losses (all of them: one process seeing both);
    task a's losses of rank r shrink by decay[r] per window."""
    for window in range(3):
        for rank in ranks:
            for task, values in DWA_LOCAL[rank].items():
                scale = decay[rank] ** window if task == "a" else 1.0
                for value in values:
                    balancer({task: torch.tensor(value * scale)})
        balancer.end_window()
    return balancer.weights()


def uncertainty_gradients(rank, reduce):
    """The log-variance gradients after one loss of 2 + 4 * rank on task a, synchronised."""
    balancer = make("uncertainty", reduce=reduce)
    balancer({"a": torch.tensor(2.0 + 4.0 * rank)}).backward()
    balancer.sync_gradients()
    return {t: None if p.grad is None else p.grad.item() for t, p in balancer.log_variances.items()}


def gloo_rank(rank: int, size: int, store: str, out_dir: str) -> None:
    """One process of the group: every scenario, results saved to out_dir/rank{rank}.pt."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        results = {}
        for name, one_task_per_step in AGREE:
            # one_task_per_step: the ranks train different tasks in the same step
            reduce = GlooReduce()
            balancer = make(name, ("a", "b", "c"), reduce=reduce)
            weights = drive(balancer, range(10), one_task_per_step, rank=rank)
            results["agree", name, one_task_per_step] = (weights, reduce.calls)
        results["dwa"] = dwa_windows(make("dwa", reduce=GlooReduce()), [rank])
        skewed = make("dwa", reduce=GlooReduce())
        results["dwa_skewed"] = dwa_windows(skewed, [rank], SKEWED_DECAY)
        for name in SUM_VS_MEAN:
            for op in ("mean", "sum"):
                balancer = make(name, ("a", "b", "c"), reduce=GlooReduce(op))
                results["reduction", name, op] = drive(balancer, range(10), True, rank=rank)
        for op in ("mean", "sum"):
            results["uncertainty", op] = uncertainty_gradients(rank, GlooReduce(op))
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Each gloo rank's results (see `gloo_rank`)."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("gloo")
    mp.spawn(gloo_rank, args=(GLOO_SIZE, str(root / "store"), str(root)), nprocs=GLOO_SIZE)
    return [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(GLOO_SIZE)]


@pytest.mark.parametrize("name", ["uncertainty", "dwa", "gradnorm", "dtp"])
@pytest.mark.parametrize("one_task_per_step", [False, True])
def test_two_ranks_with_different_losses_agree(ranks, name, one_task_per_step):
    (first, calls_first), (second, calls_second) = (
        r["agree", name, one_task_per_step] for r in ranks
    )
    assert first == second
    assert calls_first == calls_second > 0
    alone = drive(make(name, ("a", "b", "c")), range(10), one_task_per_step, rank=0)
    assert alone != first  # the ranks' losses differ, so reducing mattered


def test_two_ranks_dwa_uses_the_global_window_mean(ranks):
    first, second = (r["dwa"] for r in ranks)
    assert first == second
    single = dwa_windows(make("dwa"), [0, 1])
    assert first == pytest.approx(single, rel=1e-12)
    # The loss ratios DWA weighs by differ between the ranks: only the reduced window means
    # give both the same weights, which neither rank's local losses give.
    first, second = (r["dwa_skewed"] for r in ranks)
    assert first == second
    for rank in (0, 1):
        assert dwa_windows(make("dwa"), [rank], SKEWED_DECAY) != pytest.approx(first, rel=1e-6)


@pytest.mark.parametrize("name", SUM_VS_MEAN)
def test_sum_reduction_gives_the_weights_of_mean_reduction(ranks, name):
    mean, total = ranks[0]["reduction", name, "mean"], ranks[0]["reduction", name, "sum"]
    assert [pytest.approx(w, rel=1e-12) for w in mean] == total
    assert ranks[1]["reduction", name, "sum"] == total


@pytest.mark.parametrize("op", ["mean", "sum"])
def test_two_ranks_uncertainty_gradients_are_averaged(ranks, op):
    first, second = (r["uncertainty", op] for r in ranks)
    # d/ds [exp(-s) L + s] at s = 0 is 1 - L: ranks have -1 and -5, the mean is -3
    assert first == second == {"a": pytest.approx(-3.0), "b": None}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", BALANCERS)
def test_cuda_bf16_losses(name):
    torch.manual_seed(0)
    balancer = make(name).to("cuda")
    w = nn.Parameter(torch.ones(2, device="cuda"))
    x = torch.randn(4, 2, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = {t: (x @ w).float().pow(2).mean() * (i + 1) for i, t in enumerate("ab")}
        total = balancer(losses, [w])
    total.backward()
    balancer.sync_gradients()
    balancer.update_kpis({"a": 0.5})
    balancer.end_window()
    assert total.device.type == "cuda"
    assert all(math.isfinite(v) for v in balancer.weights().values())
    restored = make(name).to("cuda")
    restored.load_state_dict(roundtrip(balancer.state_dict()))
    assert restored.weights() == balancer.weights()

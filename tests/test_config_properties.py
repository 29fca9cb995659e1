"""Property: any list of command-line overrides either composes, validates and runs one training step, or
is refused with a one-line message a user can act on; never a traceback.

Hypothesis draws override lists (valid values, boundary values, wrong types, text that is not even valid
Hydra override syntax) for the keys of configs/train.yaml and its groups, composes them with Hydra's compose
API as scripts/train.py would, validates, and takes one real Adam step the way vae.train does. Anything
raised other than a VAEError or a Hydra / OmegaConf composition error is a value that slipped past the
schema's checks. A few refused cases also go through the real script, to see what a user is shown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import hydra
import pytest
import torch
from conftest import REPO, run_script
from hydra.errors import HydraException
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from idx_utils import write_mnist_like
from omegaconf.errors import OmegaConfBaseException

from vae.config import binarize_mode, register_configs, validate
from vae.data.batches import iterate_batches
from vae.data.datasets import load_data
from vae.errors import VAEError
from vae.evaluate import elbo_over
from vae.model import build_model
from vae.objectives import kl_per_dim, kl_weight, objective_loss
from vae.train import make_optimizer, resolve_device, seed_everything

CONFIGS = REPO / "configs"
# What the entry points report as one line (VAEError) or Hydra reports as a composition error.
ALLOWED = (VAEError, HydraException, OmegaConfBaseException)
HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."

# Small settings, so that one step is cheap; a drawn value for the same key replaces these.
BASE = {"likelihood": "gaussian", "z_dim": "2", "hidden_dims": "[8]", "batch_size": "32", "device": "cpu"}
MOONS = {"dataset": "moons", "dataset.n_samples": "300", "dataset.val_size": "50", "dataset.test_size": "50"}
IMAGE_DATASETS = ("mnist", "fashion_mnist")

# Each key draws from its "ok" pool (ordinary valid values: a run of only these must give a finite loss) or
# from its "bad" pool: boundaries, overflows and non-finite numbers (the edge values below, per key), wrong
# types and text that is not valid Hydra override syntax (BAD, for every key).
HUGE_INTS = ["1000000000", "99999999999", str(2**31), str(2**63 - 1), str(2**64), str(10**30)]
EDGE_NUMBERS = [
    "0",
    "-1",
    "-0.0",
    "1e-300",
    "1e300",
    "3.5e38",
    "nan",
    "inf",
    "-inf",
    "2.5",
    "1e9",
    *HUGE_INTS,
]
BAD = [
    "abc",
    "''",
    '""',
    "null",
    "true",
    "false",
    "[]",
    "[1,2]",
    "{a: 1}",
    "1,2",
    "'1,2'",
    "'x=y'",
    "a=b",
    "a b",
    "[1",
    "'unterminated",
    "']['",
    "é",
    "'é'",
    "${z_dim}",
    "${foo}",
    "${oc.env:VAE_NO_SUCH_VARIABLE}",
    "range(1,3)",
]
INT_OK = {
    "z_dim": ["1", "2", "3"],
    "batch_size": ["1", "7", "32", "1000"],
    "epochs": ["1", "3"],
    "n_samples": ["1", "2", "4"],
    "seed": ["0", "1", "12345"],
    "objective.k": ["1", "2", "5"],
    "dataset.n_samples": ["300", "500"],
    "dataset.val_size": ["50", "20"],
    "dataset.test_size": ["50", "20"],
    "dataset.seed": ["0", "7"],
    "eval.iw_samples": ["1", "5", "5000"],
    "eval.batch_size": ["1", "1000"],
    "eval.max_rows": ["1", "4096"],
    "eval.seed": ["0", "3"],
    "plot.tsne_points": ["1", "2000"],
}
FLOAT_OK = {
    "lr": ["1e-3", "0.01", "1"],
    "grad_clip": ["0", "0.5", "10"],
    "likelihood.min_std": ["0", "0.01", "0.5"],
    "likelihood.fixed_std": ["1", "0.1"],
    "objective.beta": ["0", "0.5", "1", "4"],
    "objective.warmup_epochs": ["1", "0.5", "10"],
    "objective.warmup_start": ["0", "0.5", "1"],
    "objective.warmup_ratio": ["0.5", "1", "0.1"],
    "objective.free_bits": ["0", "0.1", "1"],
    "encoder.min_log_var": ["null", "-6", "-10"],
    "encoder.max_log_var": ["null", "2", "5"],
    "dataset.noise": ["0", "0.1", "0.3"],
}
CHOICE = {
    "dataset": (["moons", *IMAGE_DATASETS], ["foo", "[moons]", "MOONS"]),
    "likelihood": (["gaussian", "bernoulli", "continuous_bernoulli"], ["foo", "[gaussian]", "Gaussian"]),
    "objective": (["elbo", "iwae"], ["foo", "[elbo,iwae]", "ELBO"]),
    "experiment": (["posterior_collapse", "prior_hole"], ["foo", "[1,2]"]),
    "objective.name": (["elbo", "iwae"], ["foo", "IWAE"]),
    "objective.warmup": (["none", "linear", "cyclical"], ["sigmoid", "None"]),
    "likelihood.variance": (["learned", "shared", "fixed", "optimal"], ["free", "Learned"]),
    "activation": (["relu", "tanh", "elu", "gelu", "silu", "softplus", "leaky_relu"], ["swish", "RELU"]),
    "kl": (["mc", "analytic"], ["exact", "MC"]),
    "device": (["cpu", "auto"], ["cuda", "cuda:0", "cuda:01", "cuda:-1", "cuda:99999999999999999999", "tpu"]),
    "dataset.binarize": (["auto", "none", "static", "dynamic"], ["maybe"]),
    "diagnose": (["true", "false"], []),
    "fused_adam": (["true", "false"], []),
    "plot.enabled": (["true", "false"], []),
}
HIDDEN = (
    ["[8]", "[4,4]", "[16]"],
    ["[0]", "[-1]", "[8,0]", "[2.5]", "[1e9]", "[nan]", "8", "[[8]]", "[null]"],
)
# Keys the schema does not have, in each of Hydra's override forms (plain, append, force-add, delete).
UNKNOWN = [
    "zdim",
    "hidden_dim",
    "dataset.nsamples",
    "likelihood.min_sd",
    "objective.kk",
    "eval.foo",
    "z_dim.a",
]
UNKNOWN_FORMS = ["+zdim", "++zdim", "+dataset.nsamples", "+eval.foo"]
UNKNOWN_NAMES = {key.lstrip("+") for key in UNKNOWN + UNKNOWN_FORMS}


def _values(key: str) -> st.SearchStrategy[tuple[str, str, str]]:
    """(key, value text, kind) for one key."""
    if key == "hidden_dims":
        ok, edge = HIDDEN
        edge = [*edge, *(f"[{v}]" for v in HUGE_INTS)]
    elif key in CHOICE:
        ok, edge = CHOICE[key]
    else:
        ok = INT_OK.get(key) or FLOAT_OK[key]
        edge = EDGE_NUMBERS
    return st.one_of(
        st.tuples(st.just(key), st.sampled_from(ok), st.just("ok")),
        st.tuples(st.just(key), st.sampled_from([*edge, *BAD]), st.just("bad")),
    )


KEYS = ["hidden_dims", *INT_OK, *FLOAT_OK, *CHOICE]
OVERRIDE = st.one_of(
    st.sampled_from(KEYS).flatmap(_values),
    st.tuples(
        st.sampled_from(UNKNOWN + UNKNOWN_FORMS), st.sampled_from(["3", "abc", "null"]), st.just("bad")
    ),
    st.tuples(st.sampled_from(["~z_dim", "~lr", "~dataset"]), st.just(""), st.just("ok")),
)
DRAWN = st.lists(OVERRIDE, min_size=1, max_size=4, unique_by=lambda item: item[0].lstrip("+~"))


def overrides_for(drawn: list[tuple[str, str, str]], image_root: Path) -> list[str]:
    """The full override list: the small base settings, then the drawn ones (which win)."""
    values = {key: text for key, text, _ in drawn}
    dataset = values.get("dataset", "moons")
    base = dict(BASE)
    if dataset in IMAGE_DATASETS:
        base |= {"dataset.root": str(image_root), "dataset.download": "false", "dataset.val_size": "100"}
    else:
        base |= MOONS
    merged = {key: text for key, text in base.items() if key not in values}
    return [f"{k}={v}" for k, v in merged.items()] + [
        key if key.startswith("~") else f"{key}={text}" for key, text, _ in drawn
    ]


GROUPS = ("dataset", "likelihood", "objective", "experiment")


def _raised_in_hydra(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is in Hydra's own code."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}hydra{os.sep}" in tb.tb_frame.f_code.co_filename


def compose(overrides: list[str]):
    """Compose configs/train.yaml as scripts/train.py does; Hydra's global state is cleared afterwards."""
    with hydra.initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra.compose("train", overrides=overrides)


def user_message(error: BaseException) -> str:
    """The first line of an error's message: what a user is shown first."""
    lines = str(error).splitlines()
    return lines[0].strip() if lines else ""


@contextlib.contextmanager
def memory_cap(extra_bytes: int = 4 << 30) -> Iterator[None]:
    """Cap the address space at its current size plus ``extra_bytes``, so that a huge allocation fails at
    once (torch: RuntimeError "can't allocate memory") instead of swapping or calling the OOM killer."""
    status = Path("/proc/self/status")
    if not status.is_file():  # not Linux: no cap
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with status.open() as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    cap = vm_kb * 1024 + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def non_finite_fields(config, prefix: str = "") -> list[str]:
    """``key=value`` for every float of the validated config that is nan or infinite."""
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            found += non_finite_fields(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            found.append(f"{prefix}{f.name}={value}")
    return found


def one_step(config) -> dict[str, float]:
    """Data, model, Adam and one training step, as vae.train.train and _train_epoch do them."""
    device = resolve_device(config.device)
    gen = seed_everything(config.seed)
    data = load_data(config.dataset, binarize_mode(config)).to(device)
    model = build_model(config, data.x_dim).to(device)
    opt = make_optimizer(model, config)
    obj = config.objective
    # The KL weights of the first epoch's first step (used below), of its middle and of the second epoch's
    # start (computed for what they may raise).
    betas = [
        kl_weight(t, obj.beta, obj.warmup, obj.warmup_epochs, obj.warmup_start, obj.warmup_ratio)
        for t in (0, 0.5, 1)
    ]
    n_samples = obj.k if obj.name == "iwae" else config.n_samples
    x = next(iterate_batches(data.train, config.batch_size, gen, binarize=data.binarize_train))
    log_px, z, mean, log_var = model(x, n_samples)
    kl_dims = kl_per_dim(z, mean, log_var, config.kl)
    loss = objective_loss(obj.name, log_px, z, mean, log_var, kl_dims, betas[0], obj.free_bits)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    opt.step()
    params_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    # The end of the epoch: the validation ELBO, and the generators of the diagnostics and the evaluation.
    elbo_over(model, data.val, config.eval.batch_size, config.n_samples, config.kl)
    torch.Generator(device=device).manual_seed(config.seed)
    torch.Generator(device=device).manual_seed(config.eval.seed)
    return {
        "loss": loss.item(),
        "log_px": log_px.mean(0).sum().item(),
        "kl": kl_dims.sum().item(),
        "params_finite": params_finite,
    }


MOONS_LIST = [f"{k}={v}" for k, v in (BASE | MOONS).items() if k != "device"]


def case(*overrides: str) -> example:
    """An explicit example from ``key=value`` strings."""
    drawn = []
    for override in overrides:
        key, _, text = override.partition("=")
        drawn.append((key, text, "bad"))
    return example(drawn=drawn)


register_configs()
torch.ones(2) @ torch.ones(2)  # start torch's thread pool before any memory_cap


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """A tiny MNIST-format data set (300 train, 50 test images), for dataset=mnist / fashion_mnist."""
    root = tmp_path_factory.mktemp("images")
    write_mnist_like(root, n_train=300, n_test=50, gz=False)
    return root


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings for dataset.noise=1e300
@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=DRAWN)
# Known-dangerous values that the schema refuses today.
@case("lr=nan")
@case("z_dim=1e9")
@case("hidden_dims=[0]")
@case("hidden_dims=[1e9]")
@case("objective.k=0")
@case("eval.max_rows=-1")
@case("dataset.n_samples=1")
@case("dataset.val_size=10000")
@case("likelihood.min_std=nan")
@case("encoder.min_log_var=5", "encoder.max_log_var=-5")
@case("objective.warmup_epochs=-1")
@case("objective=iwae", "objective.beta=0.5")
@case("dataset=moons", "likelihood=bernoulli")
@case("dataset=mnist", "dataset.val_size=300")
@case("device=cuda")
@case("zdim=3")
@case("likelihood=null")  # Hydra's own ValueError; what the script prints is tested below
@case("experiment=[1,2]")  # Hydra's own TypeError, likewise
# Accepted and harmless, or reported the way the training loop reports a non-finite loss.
@case("batch_size=99999999999")
@case("lr=1e30")
@case("dataset.noise=1e300")
# Once gaps of the schema (non-finite floats, no upper bounds, seeds out of numpy's range, keys added with
# +key): each is refused with one line now.
@case("lr=inf")
@case("objective.free_bits=inf")
@case("encoder.min_log_var=-inf")
@case("z_dim=1000000000")
@case("z_dim=18446744073709551616")
@case("hidden_dims=[1000000000]")
@case("n_samples=1000000000")
@case("objective=iwae", "objective.k=1000000000")
@case("dataset.n_samples=1000000000")
@case("seed=-1")
@case("seed=4294967296")
@case("dataset.seed=-1")
@case("eval.seed=1000000000000000000000000000000")
@case("device=cuda:01")
@case("device=cuda:99999999999999999999")
@case("likelihood.min_std=1e300")
@case("objective.free_bits=3.5e38")
@case("objective.beta=1e300")
@case("+zdim=3")
@case("objective.warmup=cyclical", "objective.warmup_epochs=1e-300", "objective.warmup_ratio=1e-300")
def test_any_override_list_composes_and_steps_or_is_refused(drawn, image_root):
    overrides = overrides_for(drawn, image_root)
    try:
        config = validate(compose(overrides))
    except ALLOWED as e:
        assert user_message(e), f"{overrides}: {type(e).__name__} with an empty first line: {e!r}"
        return
    except (ValueError, TypeError) as e:
        # Hydra itself raises these for a group option that is not a string (likelihood=null, =true,
        # experiment=[1,2]) while building the defaults list, before any project code runs; the script's
        # output for them is tested below.
        groups = [key for key, text, _ in drawn if key in GROUPS and text not in CHOICE[key][0]]
        if not (groups and _raised_in_hydra(e)):
            raise AssertionError(
                f"{overrides}: composing or validating raised {type(e).__name__}: {e}"
            ) from e
        return
    except Exception as e:
        raise AssertionError(f"{overrides}: composing or validating raised {type(e).__name__}: {e}") from e
    unknown = [key for key, _, _ in drawn if key.lstrip("+") in UNKNOWN_NAMES]
    assert not unknown, f"{overrides}: the unknown key {unknown[0]} was accepted"
    bad_floats = non_finite_fields(config)
    assert not bad_floats, f"{overrides}: the schema accepted the non-finite {bad_floats[0]}"
    try:
        with memory_cap():
            result = one_step(config)
    except VAEError as e:
        assert user_message(e), f"{overrides}: {type(e).__name__} with an empty first line: {e!r}"
        return
    except Exception as e:
        raise AssertionError(f"{overrides}: validated, then one step raised {type(e).__name__}: {e}") from e
    if all(kind == "ok" for _, _, kind in drawn):
        assert math.isfinite(result["loss"]) and result["params_finite"], f"{overrides}: {result}"
    elif not math.isfinite(result["loss"]):
        # The training loop stops with a TrainingError when an epoch's log p(x|z) or KL is not finite.
        reported = not (math.isfinite(result["log_px"]) and math.isfinite(result["kl"]))
        assert reported, f"{overrides}: a non-finite loss the training loop does not report: {result}"


# Refused cases, one per kind of error, through the real script: what does a user see? Hydra alone would
# print its composition errors over several lines and a non-string group option as a traceback;
# vae.cli.run_hydra prints each as one line.
SCRIPT_CASES = [
    pytest.param("z_dim=0", id="range-check"),
    pytest.param("z_dim=${foo}", id="interpolation"),
    pytest.param("likelihood=${x}", id="group-interpolation"),
    pytest.param("zdim=3", id="unknown-key"),
    pytest.param("z_dim=abc", id="wrong-type"),
    pytest.param("likelihood=foo", id="unknown-option"),
    pytest.param("lr=[1,", id="parse-error"),
    pytest.param("z_dim=1,2", id="sweep-without-m"),
    pytest.param("likelihood=null", id="group-null"),
]


@pytest.mark.parametrize("override", SCRIPT_CASES)
def test_refused_override_prints_one_line_through_the_script(tmp_path, override):
    overrides = [f"{k}={v}" for k, v in (BASE | MOONS).items()] + [override, "epochs=1"]
    proc = run_script("train.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip() and line.strip() != HYDRA_HINT]
    assert len(lines) == 1, f"the error takes {len(lines)} lines:\n{output}"
    try:  # in-process, the same overrides are refused with the line the user saw
        validate(compose(overrides))
    except Exception as e:
        assert user_message(e).rstrip(".") in output, output
    else:
        pytest.fail(f"{override} composes and validates in-process")

"""Everything decidable without the weights is decided before anything loads, and ``--dry-run``
says it (issue 20, item 4): a combination of optimizations that conflict, a LoRA axis without
``peft``, a device this machine lacks. Each with file:line, and the hint "set required = false in
its table" only where it would help (never for a conflict, never for an axis value)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recipe_runner.base import environment
from tests.conftest import REPO  # noqa: E402

HINT = "set required = false"

BASE = """
name = "checks"
[model]
id = "tiny:sd15"
[params]
num_inference_steps = 2
[optimizations]
attention_slicing = true
[matrix]
prompts = ["a red fox"]
seeds = 1
"""


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine's torch is a CPU-only build, whatever the machine running the tests has."""
    monkeypatch.setattr(environment, "_torch_cuda_build", lambda: None)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("mode", [["--dry-run"], []], ids=["dry-run", "run"])
def test_xformers_with_attention_slicing_is_refused_before_loading_without_the_required_hint(
        recipe_runner_cli, recipe_runner_write_recipe, tmp_path, loads, mode):
    recipe = recipe_runner_write_recipe(BASE)
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out", "--set", "optimizations.xformers=true", *mode)
    assert result.code == 2, result.err
    assert loads.count == 0
    conflict = [line for line in error_lines(result.err) if "cannot be combined with xformers" in line]
    assert conflict and "recipe.toml:7: optimizations.attention_slicing: cannot run here:" in conflict[0], result.err
    assert HINT not in conflict[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_a_required_optimization_this_machine_cannot_run_keeps_the_hint(recipe_runner_cli, recipe_runner_write_recipe,
                                                                      monkeypatch, no_cuda):
    from recipe_runner.plugins import common

    monkeypatch.setattr(common, "has_package", lambda name: False)
    recipe = recipe_runner_write_recipe(BASE.replace("attention_slicing = true", "xformers = true"))
    result = recipe_runner_cli(recipe, "--dry-run")
    assert result.code == 2
    lines = error_lines(result.err)
    assert len(lines) == 1 and "recipe.toml:7: optimizations.xformers" in lines[0] and "'xformers' package" in lines[0]
    assert HINT in lines[0]
    # required = false: the dry run passes, the run would skip it with a warning
    skipped = recipe_runner_write_recipe(BASE.replace("attention_slicing = true", "xformers = { required = false }"))
    assert recipe_runner_cli(skipped, "--dry-run").code == 0


def test_a_lora_axis_without_peft_is_refused_by_the_dry_run_at_the_axis_value(
        recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch, loads):
    from recipe_runner.plugins import common

    real = common.has_package
    monkeypatch.setattr(common, "has_package", lambda name: False if name == "peft" else real(name))
    (tmp_path / "fox.safetensors").write_bytes(b"{}")
    recipe = recipe_runner_write_recipe(BASE.replace("attention_slicing = true", "") +
                                        '[matrix.axes]\nlora = ["none", { id = "fox.safetensors" }]\n')
    for mode in (["--dry-run"], []):
        result = recipe_runner_cli(recipe, "--out", tmp_path / "out", *mode)
        assert result.code == 2, result.err
        lines = error_lines(result.err)
        assert len(lines) == 1, result.err
        assert "recipe.toml:12: matrix.axes.lora.1: cannot run here: lora needs the 'peft' package" in lines[0]
        assert HINT not in lines[0]  # an axis value has no table to set it in
    assert loads.count == 0


@pytest.mark.parametrize("mode", [["--dry-run"], []], ids=["dry-run", "run"])
def test_cuda_on_a_machine_without_cuda_is_a_located_error_before_loading(
        recipe_runner_cli, recipe_runner_write_recipe, tmp_path, loads, no_cuda, mode):
    recipe = recipe_runner_write_recipe(BASE.replace('id = "tiny:sd15"', 'id = "tiny:sd15"\ndevice = "cuda"'))
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out", *mode)
    assert result.code == 2, result.err
    lines = error_lines(result.err)
    assert len(lines) == 1 and "recipe.toml:4: model.device: 'cuda': CUDA is not available" in lines[0], result.err
    assert loads.count == 0


@pytest.mark.slow
def test_when_only_torch_can_tell_the_run_still_names_the_key_and_line(recipe_runner_cli, recipe_runner_write_recipe,
                                                                       tmp_path, monkeypatch, loads):
    import torch

    monkeypatch.setattr(environment, "device_unavailable", lambda spec: None)  # a CUDA build and a driver, say
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe = recipe_runner_write_recipe(BASE.replace('id = "tiny:sd15"', 'id = "tiny:sd15"\ndevice = "cuda:1"'))
    assert recipe_runner_cli(recipe, "--dry-run").code == 0  # undecided without torch: the run decides
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    assert result.code == 2, result.err
    assert "recipe.toml:4: model.device: model.device = 'cuda:1', but CUDA is not available" in result.err
    assert loads.count == 0


def test_the_light_device_probe_reads_the_torch_build_without_importing_torch(recipe_runner_write_recipe):
    recipe = recipe_runner_write_recipe(BASE.replace('id = "tiny:sd15"', 'id = "tiny:sd15"\ndevice = "cuda"') +
                                        "\n", "cuda.toml")
    code = ("import sys; from recipe_runner.base import environment as e; from recipe_runner.cli.main import main; "
            "c = main([sys.argv[1], '--dry-run', '--set', 'optimizations.xformers=true']); "
            "print('probe', e._torch_cuda_build() is not False, 'heavy', sorted({'torch', 'diffusers'} & set(sys.modules)), c)")
    proc = subprocess.run([sys.executable, "-c", code, str(recipe)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "probe True heavy [] 2", proc.stdout + proc.stderr
    assert "cannot be combined with xformers" in proc.stderr


def test_the_probe_decides_only_what_is_certain(monkeypatch):
    monkeypatch.setattr(environment, "_torch_cuda_build", lambda: None)
    assert "CPU-only build" in (environment.device_unavailable("cuda:0") or "")
    assert environment.probable_device("auto") == ("cpu" if sys.platform != "darwin" else None)
    monkeypatch.setattr(environment, "_torch_cuda_build", lambda: "12.8")
    monkeypatch.setattr(environment, "_nvidia_driver", lambda: True)
    assert environment.device_unavailable("cuda") is None and environment.probable_device("auto") is None
    monkeypatch.setattr(environment, "_nvidia_driver", lambda: False)
    assert "no NVIDIA driver" in (environment.device_unavailable("cuda") or "")
    monkeypatch.setattr(environment, "_torch_cuda_build", lambda: False)  # torch not found: undecided
    assert environment.device_unavailable("cuda") is None
    assert environment.device_unavailable("cpu") is None


def test_the_torch_build_is_read_from_its_version_file():
    cpu = "__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\nhip: Optional[str] = None\n"
    assert environment.cuda_of_version_file(cpu) is None
    assert environment.cuda_of_version_file(cpu.replace("cuda: Optional[str] = None", "cuda: Optional[str] = '12.8'")) == "12.8"
    rocm = cpu.replace("hip: Optional[str] = None", "hip: Optional[str] = '6.4.1'")
    assert environment.cuda_of_version_file(rocm) is False  # torch.cuda drives AMD GPUs: only torch can tell
    assert environment.cuda_of_version_file("__version__ = 'x'\n") is False


def test_the_device_error_of_a_model_axis_is_told_once_at_model_device(recipe_runner_cli, recipe_runner_write_recipe,
                                                                       no_cuda):
    text = BASE.replace('id = "tiny:sd15"', 'id = "tiny:sd15"\ndevice = "cuda"') + \
        '[matrix.axes]\nmodel = ["tiny:sd15", "tiny:sdxl"]\n'
    result = recipe_runner_cli(recipe_runner_write_recipe(text), "--dry-run")
    assert result.code == 2
    lines = error_lines(result.err)
    assert len(lines) == 1 and "recipe.toml:4: model.device: 'cuda'" in lines[0], result.err

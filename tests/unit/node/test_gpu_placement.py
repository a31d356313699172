"""A multi-GPU node's budgets (node.service) and the engine options a placement becomes
(node.engine): llama.cpp's own CommonParams, as the engine would be started with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import xllamacpp

from llmlb.common.wire import Device
from llmlb.models.placement import place
from llmlb.node.engine import EngineSpec, _engine_params
from llmlb.node.service import memory_budgets, placed_on
from llmlb.node.templates import ChatTemplate

GiB = 1 << 30


def gpu(size: int) -> Device:
    return Device(kind="cuda", name="GPU", memory_total=size * GiB, memory_free=size * GiB)


def test_each_gpu_is_budgeted_on_its_own() -> None:
    assert memory_budgets([gpu(24), gpu(12)], 64 * GiB) == [24 * GiB, 12 * GiB]
    # An operator's total is shared in proportion to the GPUs' sizes.
    assert memory_budgets([gpu(24), gpu(12)], 64 * GiB, 18 * GiB) == [12 * GiB, 6 * GiB]
    cpu = Device(kind="cpu", name="cpu", memory_total=64 * GiB, memory_free=60 * GiB)
    assert memory_budgets([cpu], 64 * GiB) == [int(64 * GiB * 0.8)]
    # Apple: the GPU's memory is the machine's; the system keeps a quarter of it.
    apple = Device(kind="metal", name="Apple M3 Max", memory_total=64 * GiB, memory_free=50 * GiB)
    assert memory_budgets([apple], 64 * GiB) == [48 * GiB]


SPEC = EngineSpec(
    name="m", path=Path("/m.gguf"), purpose="generate", memory_bytes=10 * GiB,
    template=ChatTemplate(name="gguf", jinja=None), ctx_size=4096, parallel=2, threads=2,
)  # fmt: skip
NONE = xllamacpp.llama_split_mode.LLAMA_SPLIT_MODE_NONE
LAYER = xllamacpp.llama_split_mode.LLAMA_SPLIT_MODE_LAYER


def test_a_model_on_one_gpu_of_several_is_started_on_that_gpu_alone() -> None:
    spec = placed_on(2)(SPEC, place(10 * GiB, [8 * GiB, 20 * GiB]))
    assert spec.gpu_shares == (0.0, 1.0)
    params = _engine_params(spec)
    assert (params.main_gpu, params.split_mode) == (1, NONE)


def test_a_split_model_gets_layers_in_proportion_to_free_memory() -> None:
    spec = placed_on(3)(SPEC, place(30 * GiB, [10 * GiB, 20 * GiB, 5 * GiB]))
    params = _engine_params(spec)
    assert (params.main_gpu, params.split_mode) == (1, LAYER)
    assert list(params.tensor_split)[:3] == pytest.approx([10 / 30, 20 / 30, 0.0])  # float32


def test_one_gpu_keeps_llama_cpps_defaults() -> None:
    spec = placed_on(1)(SPEC, place(10 * GiB, [20 * GiB]))
    params = _engine_params(spec)
    assert spec.gpu_shares == () and params.main_gpu == 0
    assert params.split_mode == xllamacpp.CommonParams().split_mode


def test_a_partial_offload_starts_the_engine_with_that_many_layers_on_the_gpu() -> None:
    spec = placed_on(1)(SPEC, place(40 * GiB, [20 * GiB], partial=True, layers=32))
    assert spec.gpu_layers == 16 and _engine_params(spec).n_gpu_layers == 16

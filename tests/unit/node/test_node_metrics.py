"""The node's own figures that its heartbeats carry to the balancer."""

from __future__ import annotations

from llmlb.node.metrics import NodeMetrics


def test_the_prompt_speed_is_a_moving_average_of_prompts_long_enough_to_measure() -> None:
    metrics = NodeMetrics(dict)
    assert metrics.prompt_tokens_per_second == 0.0  # nothing measured yet
    usage = {"prompt_tokens": 600, "completion_tokens": 8}
    metrics.record_usage("m", usage, {"prompt_n": 500, "prompt_ms": 1000.0})
    assert metrics.prompt_tokens_per_second == 500.0
    metrics.record_usage("m", usage, {"prompt_n": 250, "prompt_ms": 1000.0})
    assert metrics.prompt_tokens_per_second == 0.8 * 500 + 0.2 * 250
    # A prompt that was nearly all cached (a handful computed) says little about speed.
    metrics.record_usage("m", usage, {"prompt_n": 3, "prompt_ms": 0.5})
    assert metrics.prompt_tokens_per_second == 0.8 * 500 + 0.2 * 250

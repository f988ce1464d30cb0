"""Runs saved by earlier versions (pixelrl/compat.py): checkpoints written by the code before
the study's switches were retired (tests/data/before_2026_12_04, small FetchReach runs of 100
steps, with the actions that code's policy took on its first observations) evaluate as they
acted, or are refused with the commit that runs them."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelrl.build import check_resume_config
from pixelrl.compat import config_to_evaluate, config_to_resume, what_ran_saved
from pixelrl.config import RETIRED_AT, ConfigError
from pixelrl.policy import load_policy

DATA = Path(__file__).parent / "data" / "before_2026_12_04"
ROOT = Path(__file__).resolve().parents[1]


def saved(variant: str) -> tuple[Path, dict]:
    """A saved checkpoint and its config (the prototype run's holds the config alone)."""
    checkpoint = DATA / variant / "checkpoints" / "step_000000000100"
    return checkpoint, json.loads((checkpoint / "meta.json").read_text())["config"]


def actions_of(variant: str) -> tuple[list, list]:
    """(today's actions, the saved code's) on the observations the saved code acted on."""
    checkpoint, _ = saved(variant)
    _, policy = load_policy(checkpoint, device="cpu")
    expected = torch.load(DATA / variant / "expected_actions.pt", weights_only=True)
    got = [
        policy.act({k: v.numpy() for k, v in obs.items()}, deterministic=True)
        for obs in expected["observations"]
    ]
    return got, [a.numpy() for a in expected["actions"]]


def test_a_coupled_run_whose_heads_read_the_estimate_acts_as_it_did():
    """`--encoder-grad critic --state-estimate only`: today's state estimator and SAC on
    vectors, with the same weights, take the same actions."""
    got, expected = actions_of("coupled")
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    _, config = saved("coupled")
    cfg, layout = config_to_evaluate(config)
    assert (cfg.sac.encoder_grad, layout) == ("estimator", "estimator")
    assert what_ran_saved(config) | {"env_id": None} == {
        "env_id": None,
        "obs_mode": "pixels",
        "goal_mode": "desired",
        "proprioception": True,
        "frame_stack": 1,
        "encoder": "manip",
        "encoder_grad": "critic",  # as it ran, not as it is read today
        "state_estimate": "only",
        "privileged_critic": True,
    }
    with pytest.raises(ConfigError, match=f"--state-estimate only.*commit {RETIRED_AT}"):
        check_resume_config(config, cfg)


def test_a_run_without_pixels_acts_as_it_did_and_resumes():
    got, expected = actions_of("nopix")
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    _, config = saved("nopix")
    cfg = config_to_resume(config)  # the study's switches change nothing without pixels
    assert cfg.env.no_pixels
    check_resume_config(config, cfg)


def test_a_run_with_a_retired_encoder_is_refused_with_the_commit_that_runs_it():
    checkpoint, config = saved("prototype")
    for read in (lambda: load_policy(checkpoint, device="cpu"), lambda: config_to_resume(config)):
        with pytest.raises(ConfigError) as err:
            read()
        assert "--keypoint-trunk layernorm" in str(err.value)
        assert f"git checkout {RETIRED_AT}" in str(err.value)


def test_the_commit_named_for_retired_flags_is_in_this_repository():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True
    )
    if shallow.stdout.strip() == "true":
        pytest.skip("a shallow clone holds no history to look the commit up in")
    found = subprocess.run(
        ["git", "cat-file", "-e", f"{RETIRED_AT}^{{commit}}"], cwd=ROOT, capture_output=True
    )
    assert found.returncode == 0, f"{RETIRED_AT} is not a commit of this repository"


@pytest.mark.parametrize(
    "change",
    [{}, {"encoder_grad": "critic"}],
    ids=["estimator", "end_to_end"],
)
def test_todays_runs_are_read_back_as_they_ran_with_their_weights_unchanged(change):
    """A config and agent state saved by today's code evaluate as themselves: the same path,
    every weight loaded where it was saved (an end-to-end run is not a coupled one)."""
    from test_estimator import agent_for, recipe

    from pixelrl.compat import agent_weights
    from pixelrl.config import to_dict

    cfg = recipe(**change)
    saved_config, saved_state = to_dict(cfg), agent_for(cfg, seed=1).state()
    read, layout = config_to_evaluate(saved_config)
    assert read == cfg
    fresh = agent_for(read, seed=2)
    fresh.load_weights(agent_weights(layout, saved_config, saved_state))
    for name, tensor in fresh.state_dict().items():
        if "estimator" in saved_state and name.startswith("estimator."):
            saved = saved_state["estimator"][name[len("estimator.") :]]
        else:
            saved = saved_state["networks"][name.removeprefix("sac.")]
        torch.testing.assert_close(tensor, saved, rtol=0, atol=0)

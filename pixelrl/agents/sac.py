"""Soft actor-critic: Haarnoja et al. 2018 (arXiv:1801.01290, 1812.05905).

What trains what, in `_update`:

    critic loss   the twin Q heads; end to end (`--encoder-grad critic`) also the image
                  encoder, whose parameters are in the critic's optimizer (DrQ-v2's routing,
                  Yarats et al. 2021, arXiv:2107.09645)
    actor loss    the actor, on detached inputs
    entropy loss  the entropy coefficient, with `--ent-coef auto`

With the state estimator (`--encoder-grad estimator`, the default with pixels) SAC reads no
image: its inputs are vectors, the estimate of the achieved goal where the image was
(pixelrl/agents/estimator.py trains it). The actor and the critic may then read different
inputs: where the actor reads the estimate, the critic reads the true achieved goal, which the
replay keeps for HER (an asymmetric actor-critic, Pinto et al. 2018, arXiv:1710.06542: the
critic only trains the actor, so it may read what the simulator knows).

Vector inputs are normalized (`pixelrl.nets.normalize`): the statistics take in each sampled
batch, then obs and next obs are scaled alike, as when acting. The next observation is read by
the online networks without gradient. Fetch truncates at 50 steps and never terminates, so the
target bootstraps through time limits: it multiplies by (1 - terminated) only.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from pixelrl.buffers.replay import Batch
from pixelrl.config import SACConfig, parse_ent_coef
from pixelrl.envs import ACHIEVED_GOAL, PIXELS, STATE_ESTIMATE
from pixelrl.nets.encoders import ImageEncoder
from pixelrl.nets.heads import SquashedGaussianActor, TwinQ
from pixelrl.nets.normalize import ObservationNormalizer


class SAC(nn.Module):
    """Networks, optimizers and the update of SAC.

    Args:
        obs_shapes: shape of each observation key; pixels stacked (3k, H, W) uint8.
        actor_keys, critic_keys: what the actor and the critic read, in order
            (`pixelrl.build.build_agent`). `PIXELS` among them: end to end, an image encoder
            reads them, trained by the critic's loss.
        action_low, action_high: the env's action bounds, (A,).
        hidden_sizes: of the actor's and the critic's MLPs.
        compile: wrap `_update` with torch.compile (on CUDA: CUDA graphs through
            "reduce-overhead", and capturable Adam so that its step count stays on the device).
        amp: "bf16" runs the networks' forward passes under bf16 autocast (CUDA only).
    """

    def __init__(
        self,
        obs_shapes: dict[str, tuple[int, ...]],
        actor_keys,
        critic_keys,
        action_low,
        action_high,
        cfg: SACConfig,
        hidden_sizes=(256, 256),
        device: torch.device | str = "cpu",
        compile: bool = False,
        amp: str = "none",
    ):
        super().__init__()
        self.cfg, self.actor_keys, self.critic_keys = cfg, list(actor_keys), list(critic_keys)
        inputs = list(dict.fromkeys(self.actor_keys + self.critic_keys))
        # Vectors scaled by running statistics (an estimate in the achieved goal's units);
        # end to end, the image's encoder features stand where the pixels are.
        if STATE_ESTIMATE in inputs and ACHIEVED_GOAL not in inputs:
            inputs.append(ACHIEVED_GOAL)
        self.normalizer = ObservationNormalizer(obs_shapes, inputs)
        self.image = ImageEncoder(*obs_shapes[PIXELS][:2]) if PIXELS in inputs else None
        sizes = {k: obs_shapes[k][-1] for k in inputs if k != PIXELS}
        if self.image is not None:
            sizes[PIXELS] = self.image.features_dim
        action_dim = len(action_low)
        actor_dim, critic_dim = (sum(sizes[k] for k in keys) for keys in (actor_keys, critic_keys))
        self.actor = SquashedGaussianActor(
            actor_dim, action_dim, hidden_sizes, action_low, action_high
        )
        self.critic = TwinQ(critic_dim, action_dim, hidden_sizes)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # Entropy coefficient alpha: fixed, or learned toward a target entropy of -|A|.
        self.learn_alpha, initial_alpha = parse_ent_coef(cfg.ent_coef)
        self.log_alpha = nn.Parameter(
            torch.tensor(float(initial_alpha)).log(), requires_grad=self.learn_alpha
        )
        self.target_entropy = -float(action_dim)
        self.to(device)

        # Optimizers. End to end, the image encoder is the critic's: its loss trains it.
        # CUDA graphs replay kernels without the host: Adam must keep its step count on the
        # device (capturable) for the compiled update to be captured.
        capturable = compile and self.device.type == "cuda"
        adam = partial(torch.optim.Adam, lr=cfg.learning_rate, capturable=capturable)
        encoder = list(self.image.parameters()) if self.image is not None else []
        self.critic_optimizer = adam([*self.critic.parameters(), *encoder])
        self.actor_optimizer = adam(self.actor.parameters())
        self.alpha_optimizer = adam([self.log_alpha]) if self.learn_alpha else None

        # Speed-ups wrap the readable `_update`; they never replace it.
        self.amp, self.compiled = amp == "bf16", compile
        self._update_step = self._update
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._update_step = torch.compile(self._update, mode=mode)

    @property
    def device(self) -> torch.device:
        return self.log_alpha.device

    def inputs(self, obs: dict[str, torch.Tensor], update_stats: bool = False) -> dict:
        """Each input (B, F) of normalized obs: a vector flattened; the pixels as the image
        encoder's features (`update_stats`: its running keypoint statistics first take in the
        batch, which only the update's sampled obs do)."""
        parts = {k: v.float().flatten(1) for k, v in obs.items() if k != PIXELS}
        if self.image is not None:
            parts[PIXELS] = self.image(obs[PIXELS], update_stats)
        return parts

    @staticmethod
    def join(parts: dict[str, torch.Tensor], keys) -> torch.Tensor:
        """The inputs `keys` side by side: (B, F)."""
        return torch.cat([parts[key] for key in keys], dim=-1)

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        """Actions (N, A) for raw observations (pixels stacked uint8; no achieved goal needed
        where the actor does not read it)."""
        actor_in = self.join(self.inputs(self.normalizer(obs)), self.actor_keys)
        if deterministic:
            return self.actor.deterministic(actor_in)
        return self.actor.sample(actor_in)[0]

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step of critic, actor and alpha, then the Polyak update.

        Draws the policy's noise here, so that `_update` is a function of its tensors alone
        (the compiled and the eager version see the same numbers). Returns detached scalar
        tensors, without a device sync (the logger calls .item()).
        """
        noise = torch.randn(
            (2, len(batch.action), batch.action.shape[-1]), device=batch.action.device
        )
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()  # outputs of the last step are read
        return self._update_step(
            batch.obs, batch.action, batch.reward, batch.next_obs, batch.terminated, noise
        )

    def _update(self, obs, action, reward, next_obs, terminated, noise) -> dict:
        """The SAC update on tensors: obs/next_obs dicts of (B, ...), action (B, A), reward and
        terminated (B,), noise (2, B, A) standard normal (next action, actor's action).
        `__init__` may wrap it with torch.compile; it reads no value on the host."""
        alpha = self.log_alpha.detach().exp()
        # Normalize: the statistics take in this batch, then scale obs and next obs alike.
        self.normalizer.update(obs)
        obs, next_obs = self.normalizer(obs), self.normalizer(next_obs)

        with self._autocast():
            # Encode: obs with gradient (end to end it reaches the encoder through the critic's
            # loss), next obs without, by the same online networks.
            parts = self.inputs(obs, update_stats=True)
            with torch.no_grad():
                next_parts = self.inputs(next_obs)
                # Critic target: r + gamma (1 - terminated) (min Q'(s', a') - alpha log pi(a'|s'))
                next_actor_in = self.join(next_parts, self.actor_keys)
                next_action, next_log_prob = self.actor.sample(next_actor_in, noise[0])
                next_critic_in = self.join(next_parts, self.critic_keys)
                next_q = torch.min(*self.target_critic(next_critic_in, next_action))
                next_value = next_q - alpha * next_log_prob
                target_q = reward + self.cfg.gamma * (1.0 - terminated) * next_value
            # Critic step: the Q heads and, end to end, the image encoder.
            critic_in = self.join(parts, self.critic_keys)
            q1, q2 = self.critic(critic_in, action)
            critic_loss = 0.5 * (F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q))
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        # Actor step on detached inputs: maximize min Q - alpha log pi; only the actor moves.
        with self._autocast():
            actor_in = self.join(parts, self.actor_keys).detach()
            pi_action, log_prob = self.actor.sample(actor_in, noise[1])
            q1_pi, q2_pi = self.critic(critic_in.detach(), pi_action)
            actor_loss = (alpha * log_prob - torch.min(q1_pi, q2_pi)).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()

        # Entropy step: move alpha so that the policy's entropy approaches -|A|.
        metrics = {}
        if self.alpha_optimizer is not None:
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
            metrics["ent_coef_loss"] = alpha_loss.detach()

        # Polyak update of the target critic: target <- (1 - tau) target + tau online.
        with torch.no_grad():
            targets, online = list(self.target_critic.parameters()), list(self.critic.parameters())
            torch._foreach_lerp_(targets, online, self.cfg.tau)

        return metrics | {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "ent_coef": alpha,
            "q_mean": 0.5 * (q1.detach().mean() + q2.detach().mean()),
        }

    def _autocast(self):
        """bf16 autocast of the networks' forward passes with --amp bf16 (CUDA); else nothing.
        The heads return fp32, so losses, targets and log-probs stay in fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """Networks, optimizers and log alpha as state dicts (for checkpoints)."""
        state = {
            "networks": self.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
        }
        if self.alpha_optimizer is not None:
            state["alpha_optimizer"] = self.alpha_optimizer.state_dict()
        return state

    def load_state(self, state: dict) -> None:
        self.load_weights(state)
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        if self.alpha_optimizer is not None:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])

    def load_weights(self, state: dict) -> None:
        """The networks of `state` alone (to act)."""
        self.load_state_dict(state["networks"])

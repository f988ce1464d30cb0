"""Soft actor-critic with explicit encoder gradient routing.

SAC: Haarnoja et al. 2018 (arXiv:1801.01290, 1812.05905). Encoder in the critic's optimizer,
actor on detached features: DrQ-v2, Yarats et al. 2021 (arXiv:2107.09645).

Which loss trains the image encoder is one choice (`--encoder-grad`), visible in `__init__`
(who owns which parameters) and in `update` (where features are detached):

    critic    one shared encoder, in the critic optimizer only; the actor gets detached
              features and its optimizer holds no encoder parameter. The routing that made
              pixel Push learn in the SB3 prototype (benchmarks/sb3_pipeline.py; DrQ-v2's routing).
    actor     one shared encoder trained only by the actor loss; the critic sees it without
              gradient (SB3's SAC with share_features_extractor=True).
    separate  actor and critic each own an encoder (SB3's default).

The target critic has its own encoder copy, moved only by Polyak averaging. Each batch is
encoded once per role: obs with gradient for the encoder's owner, and next obs without
gradient, by the encoder `--next-obs-encoder` names (target: the Polyak-lagged copy, one pass
for both uses; online: DrQ-v2, which has no target encoder; split: SB3). What reads what, in
one table (`_encode` and `_actor_parts` are its code):

    --encoder-grad  Q(obs), critic step      actor step on obs      next obs (--next-obs-encoder)
                                                                    target  online  split
    critic          shared enc., gradient    the same, detached     T / T   O / O   T / O
    actor           shared enc., no grad.    shared enc., gradient  T / T   O / O   T / O
    separate        critic's enc., gradient  actor's enc., gradient T / A   O / A   T / A

    (target Q / next action; T the target encoder, O the online critic-side encoder, A the
    actor's own encoder: with `separate` the next action always reads A, which holds other
    weights than the encoder T copies; the flag's help says so)

The auxiliary loss (`--aux-coef`, 1 by default, with pixels only): the encoder's state head
regresses the normalized achieved goal of obs (privileged: the simulator's position of the
gripper in Reach, of the object in Push, stored by the replay for HER) from the image
features. It is added to the loss of the optimizer that owns the encoder (critic loss with
`critic` routing, actor loss with `actor`, each encoder's own with `separate`), so it trains
the encoder whichever routing is chosen. Acting never reads the achieved goal; with
`--state-estimate` it reads the head's estimate of it instead, detached.

The privileged critic (`--privileged-critic`, on by default where it applies): where the actor
reads the state estimate in the achieved goal's place, the critic, online and target, reads the
true normalized achieved goal instead (an asymmetric actor-critic, Pinto et al. 2018,
arXiv:1710.06542). The critic exists only to train the actor, so it may read what the
simulator knows; the actor, all that acting needs, reads only what a camera gives. On pixel
Push with the puck from the image, the estimate in the critic kept the actor from heading for
the puck (benchmarks/learning.md). `_critic_view` is its code.

Vector inputs are normalized before any encoder sees them (`pixelrl.nets.normalize`): the
statistics are updated from each sampled batch, then obs and next obs are scaled with the same
statistics, as they are when acting.

Fetch truncates at 50 steps and never terminates, so the target bootstraps through time
limits: it multiplies by (1 - terminated) only. With `--clip-q-target` the target is clipped to
the range of possible returns (for sparse rewards in {-1, 0}: [-1/(1-gamma), 0]).
"""

from __future__ import annotations

import copy
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from pixelrl.buffers.replay import Batch
from pixelrl.config import NetworkConfig, SACConfig, parse_ent_coef
from pixelrl.diagnostics import spread_across_batch, where_things_are
from pixelrl.envs import ACHIEVED_GOAL, PIXELS, STATE_ESTIMATE
from pixelrl.nets.encoders import ObservationEncoder
from pixelrl.nets.heads import SquashedGaussianActor, TwinQ
from pixelrl.nets.normalize import ObservationNormalizer


def return_bounds(reward_range: tuple[float, float], gamma: float) -> tuple[float, float]:
    """The range of discounted returns sum_t gamma^t r_t for rewards in [r_min, r_max]."""
    horizon = 1.0 / (1.0 - gamma) if gamma < 1.0 else math.inf
    low, high = reward_range
    return (low * horizon if low else 0.0, high * horizon if high else 0.0)


class SAC(nn.Module):
    """Networks, optimizers and the update of SAC.

    Args:
        obs_shapes: shape of each observation key as the networks see it; pixels stacked
            (3k, H, W) uint8.
        keys: observation keys the networks use (`pixelrl.envs.policy_keys`).
        action_low, action_high: the env's action bounds, (A,).
        reward_range: (lowest, highest) reward of the env; bounds the critic target when
            `cfg.clip_q_target` (Fetch's sparse reward: (-1, 0)).
        compile: wrap `_update` with torch.compile (on CUDA: CUDA graphs through
            "reduce-overhead", and capturable Adam so that its step count stays on the device).
        amp: "bf16" runs the networks' forward passes under bf16 autocast (CUDA only); losses
            and optimizer state stay fp32.
    """

    def __init__(
        self,
        obs_shapes: dict[str, tuple[int, ...]],
        keys,
        action_low,
        action_high,
        net_cfg: NetworkConfig,
        cfg: SACConfig,
        device: torch.device | str = "cpu",
        reward_range: tuple[float, float] = (-math.inf, math.inf),
        compile: bool = False,
        amp: str = "none",
    ):
        super().__init__()
        self.cfg = cfg
        self.routing = cfg.encoder_grad
        if PIXELS in keys and self.routing not in ("critic", "actor", "separate"):
            raise ValueError(
                f"--encoder-grad {self.routing!r}: SAC encodes images with critic, actor or "
                "separate (with estimator the image is pixelrl.agents.estimator's alone)"
            )
        action_dim = len(action_low)
        hidden = net_cfg.hidden_sizes
        self.q_target_bounds = (
            return_bounds(reward_range, cfg.gamma) if cfg.clip_q_target else (-math.inf, math.inf)
        )

        # The auxiliary loss needs an image to read (without one it does not apply) and the
        # normalized achieved goal as its target.
        self.aux = cfg.aux_coef > 0 and PIXELS in keys
        if self.aux and not net_cfg.normalize_obs:
            raise ValueError("--aux-coef > 0 regresses the normalized achieved goal")
        state_head_dim = obs_shapes[ACHIEVED_GOAL][-1] if self.aux else 0

        # Inputs: vectors normalized with running statistics (buffers, saved with the weights).
        # The achieved goal is normalized even where the networks do not read it: it is the
        # auxiliary loss's target, and a stored estimate's units, those of the goals the
        # networks do read (and the privileged critic reads it).
        norm_keys = list(keys)
        if (self.aux or STATE_ESTIMATE in keys) and ACHIEVED_GOAL not in norm_keys:
            norm_keys.append(ACHIEVED_GOAL)
        self.normalizer = ObservationNormalizer(
            obs_shapes,
            norm_keys,
            clip=net_cfg.obs_norm_clip,
            freeze_after=net_cfg.obs_norm_freeze_after,
            enabled=net_cfg.normalize_obs,
        )

        # Networks: a shared encoder, or one each for `separate`.
        self.critic_encoder = ObservationEncoder(net_cfg, obs_shapes, keys, state_head_dim)
        if self.routing == "separate":
            self.actor_encoder = ObservationEncoder(net_cfg, obs_shapes, keys, state_head_dim)
        else:
            self.actor_encoder = self.critic_encoder
        features_dim = self.critic_encoder.features_dim
        # The privileged critic applies where the actor reads the estimate in the achieved
        # goal's place: with an estimate (pixels, the auxiliary loss, --state-estimate append
        # or only), and without the achieved goal among the inputs of both (--goal-mode both).
        self.privileged_critic = (
            cfg.privileged_critic
            and STATE_ESTIMATE in self.critic_encoder.inputs
            and ACHIEVED_GOAL not in keys
        )
        self.actor = SquashedGaussianActor(
            features_dim, action_dim, hidden, action_low, action_high
        )
        self.critic = TwinQ(features_dim, action_dim, hidden)
        self.target_encoder = copy.deepcopy(self.critic_encoder).requires_grad_(False)
        self.target_encoder.share_statistics(self.critic_encoder)  # one set, updated online
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)

        # Entropy coefficient alpha: fixed, or learned toward a target entropy of -|A|.
        self.learn_alpha, initial_alpha = parse_ent_coef(cfg.ent_coef)
        self.log_alpha = nn.Parameter(
            torch.tensor(float(initial_alpha)).log(), requires_grad=self.learn_alpha
        )
        self.target_entropy = -float(action_dim)
        self.to(device)

        # Optimizers: the routing decides which one holds the encoder's parameters.
        encoder_lr = cfg.encoder_lr if cfg.encoder_lr is not None else cfg.learning_rate
        critic_groups = [{"params": list(self.critic.parameters())}]
        actor_groups = [{"params": list(self.actor.parameters())}]
        if self.routing in ("critic", "separate"):
            critic_groups.append({"params": self.critic_encoder.parameters(), "lr": encoder_lr})
        if self.routing in ("actor", "separate"):
            actor_groups.append({"params": self.actor_encoder.parameters(), "lr": encoder_lr})
        # CUDA graphs replay kernels without the host: Adam must keep its step count on the
        # device (capturable) for the compiled update to be captured.
        capturable = compile and self.device.type == "cuda"
        adam = partial(torch.optim.Adam, lr=cfg.learning_rate, capturable=capturable)
        self.critic_optimizer = adam(critic_groups)
        self.actor_optimizer = adam(actor_groups)
        self.alpha_optimizer = adam([self.log_alpha]) if self.learn_alpha else None

        # Speed-ups wrap the readable `_update`; they never replace it.
        if amp not in ("none", "bf16"):
            raise ValueError(f"--amp {amp!r}: choose none or bf16")
        self.amp = amp == "bf16"
        self.compiled = compile
        self._update_step = self._update
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._update_step = torch.compile(self._update, mode=mode)

    @property
    def device(self) -> torch.device:
        return self.log_alpha.device

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        """Actions (N, A) for a batch of observations (pixels: stacked uint8, vectors raw)."""
        features = self.actor_encoder(self.normalizer(obs))
        if deterministic:
            return self.actor.deterministic(features)
        return self.actor.sample(features)[0]

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

    def _encode(self, obs, next_obs):
        """Parts of obs for the critic (with gradient when the critic owns the encoder), and
        parts of next obs for the target Q and for the next action (without gradient), as
        the module docstring's table says. Only obs updates the encoder's running
        statistics."""
        with torch.set_grad_enabled(self.routing != "actor"):  # `actor`: the critic reads
            critic_parts = self.critic_encoder.parts(obs, update_stats=True)  # without gradient
        with torch.no_grad():
            if self.cfg.next_obs_encoder == "online":
                next_parts = self.critic_encoder.parts(next_obs)
            else:
                next_parts = self.target_encoder.parts(next_obs)
            if self.routing == "separate" or self.cfg.next_obs_encoder == "split":
                next_actor_parts = self.actor_encoder.parts(next_obs)
            else:  # shared encoders: the parts above are the actor's too
                next_actor_parts = next_parts
        return critic_parts, next_parts, next_actor_parts

    def _critic_view(self, parts, obs):
        """The parts the critic reads of a batch (normalized obs): its encoder's, or with
        --privileged-critic the true achieved goal in the state estimate's place."""
        if not self.privileged_critic:
            return parts
        return {**parts, STATE_ESTIMATE: obs[ACHIEVED_GOAL]}

    def _actor_parts(self, obs, critic_parts):
        """Parts of obs for the actor step: the critic's, detached, when the critic owns the
        encoder; otherwise a pass of the actor's encoder with gradient (`separate`: its own
        encoder, whose statistics take in the batch here). Encoded here, after the critic
        step, so that each backward pass has a graph of its own (a compiled update would
        otherwise join both encoder passes in one node that the first backward frees)."""
        if self.routing == "critic":
            return {key: part.detach() for key, part in critic_parts.items()}
        return self.actor_encoder.parts(obs, update_stats=self.routing == "separate")

    def _aux_loss(self, encoder: ObservationEncoder, parts, achieved_goal) -> torch.Tensor:
        """MSE of the state head's estimate from the image features (with gradient) against
        the normalized achieved goal (B, G)."""
        return F.mse_loss(encoder.state_head(parts[PIXELS]).float(), achieved_goal)

    def _update(
        self,
        obs: dict[str, torch.Tensor],
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: dict[str, torch.Tensor],
        terminated: torch.Tensor,
        noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The SAC update on tensors: obs/next_obs dicts of (B, ...) (pixels uint8), action
        (B, A), reward and terminated (B,), noise (2, B, A) standard normal (next action,
        actor's action). `__init__` may wrap it with torch.compile; it reads no value on the
        host."""
        alpha = self.log_alpha.detach().exp()

        # Normalize: the statistics take in this batch, then scale obs and next obs alike.
        self.normalizer.update(obs)
        obs, next_obs = self.normalizer(obs), self.normalizer(next_obs)
        obs_goal = obs[ACHIEVED_GOAL] if self.aux else None  # the auxiliary loss's target

        with self._autocast():
            critic_parts, next_parts, next_actor_parts = self._encode(obs, next_obs)
            critic_features = self.critic_encoder.join(self._critic_view(critic_parts, obs))
            next_features = self.critic_encoder.join(self._critic_view(next_parts, next_obs))
            next_actor_features = self.actor_encoder.join(next_actor_parts)

            # Critic target: r + gamma (1 - terminated) (min Q_target(s', a') - alpha log pi(a'|s'))
            with torch.no_grad():
                next_action, next_log_prob = self.actor.sample(next_actor_features, noise[0])
                target_q1, target_q2 = self.target_critic(next_features, next_action)
                next_value = torch.min(target_q1, target_q2) - alpha * next_log_prob
                target_q = reward + self.cfg.gamma * (1.0 - terminated) * next_value
                target_q = target_q.clamp(*self.q_target_bounds)  # (-inf, inf) unless clipped

            # Critic step (with `critic` routing this also steps the encoder, and the
            # auxiliary loss, when on, trains the encoder with it).
            q1, q2 = self.critic(critic_features, action)
            critic_loss = 0.5 * (F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q))
            critic_total, aux_losses = critic_loss, []
            if self.aux and self.routing != "actor":
                aux_losses.append(self._aux_loss(self.critic_encoder, critic_parts, obs_goal))
                critic_total = critic_total + self.cfg.aux_coef * aux_losses[-1]
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_total.backward()
        self.critic_optimizer.step()

        # Actor step: maximize min Q - alpha log pi. The critic judges detached features, so
        # the encoder gets no gradient through Q; with `actor`/`separate` routing it gets one
        # through the actor's own path (and the auxiliary loss joins the actor loss).
        with self._autocast():
            actor_parts = self._actor_parts(obs, critic_parts)
            pi_action, log_prob = self.actor.sample(self.actor_encoder.join(actor_parts), noise[1])
            q1_pi, q2_pi = self.critic(critic_features.detach(), pi_action)
            actor_loss = (alpha * log_prob - torch.min(q1_pi, q2_pi)).mean()
            actor_total = actor_loss
            if self.aux and self.routing != "critic":
                aux_losses.append(self._aux_loss(self.actor_encoder, actor_parts, obs_goal))
                actor_total = actor_total + self.cfg.aux_coef * aux_losses[-1]
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_total.backward()
        self.actor_optimizer.step()

        # Entropy step: move alpha so that the policy's entropy approaches -|A|.
        metrics = {}
        if self.alpha_optimizer is not None:
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
            metrics["ent_coef_loss"] = alpha_loss.detach()

        # Polyak update of the target critic and its encoder copy.
        self.soft_update()

        if aux_losses:
            metrics["aux_loss"] = sum(aux_losses).detach() / len(aux_losses)
        metrics.update(
            critic_loss=critic_loss.detach(),
            actor_loss=actor_loss.detach(),
            ent_coef=alpha,
            q_mean=0.5 * (q1.detach().mean() + q2.detach().mean()),
        )
        return metrics

    def _autocast(self):
        """bf16 autocast of the networks' forward passes with --amp bf16 (CUDA); else nothing.
        The heads return fp32, so losses, targets and log-probs stay in fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    @torch.no_grad()
    def soft_update(self) -> None:
        """target <- (1 - tau) target + tau online, for the Q heads and the encoder copy."""
        for target, online in (
            (self.target_critic, self.critic),
            (self.target_encoder, self.critic_encoder),
        ):
            target_params = list(target.parameters())
            if target_params:
                torch._foreach_lerp_(target_params, list(online.parameters()), self.cfg.tau)

    # ------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def encoder_diagnostics(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Does the encoder know where things are? obs: raw, as sampled (achieved goal included).

        - `encoder/<part>_std_across_batch`: per feature, the std across the samples, averaged
          over the features (0 when every sample gives the same features, whatever their spread
          within one sample); `encoder/keypoints_std_across_batch` the same before the trunk.
        - `probe/achieved_goal_r2`, `probe/achieved_goal_median_error_cm`: a ridge regression
          from the image features to the achieved goal, fitted on one half of `obs` and scored
          on the other (`pixelrl.diagnostics.linear_probe`).
        - `probe/state_estimate_median_error_cm`, `probe/state_estimate_r2`: the state head's
          own estimate (what the heads read with `--state-estimate`), in metres x 100.
        - the SpatialSoftmax temperature, and the mean std of each normalization group.
        """
        out = dict(self.normalizer.describe())
        encoder = self.critic_encoder
        parts = encoder.parts(self.normalizer(obs))
        for key, features in parts.items():
            out[f"encoder/{key}_std_across_batch"] = spread_across_batch(features).mean()
        image = encoder.image
        if image is None:
            return out
        keypoints = None
        if image.spatial_softmax is not None:
            keypoints = image.pre_trunk(obs[PIXELS])
            out["encoder/spatial_softmax_temperature"] = image.spatial_softmax.temperature[0]
        estimate = None
        if encoder.state_head is not None:
            estimate = self._estimate_in_goal_units(parts[PIXELS])
        out.update(where_things_are(parts[PIXELS], obs[ACHIEVED_GOAL], estimate, keypoints))
        return out

    @property
    def has_state_estimate(self) -> bool:
        """Whether the encoder has a state head (`estimate_achieved_goal` answers)."""
        return self.critic_encoder.state_head is not None

    def _estimate_in_goal_units(self, image_features: torch.Tensor) -> torch.Tensor:
        estimate = self.critic_encoder.state_head(image_features)
        return self.normalizer.denormalize(ACHIEVED_GOAL, estimate)

    @torch.no_grad()
    def estimate_achieved_goal(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The state head's estimate of the achieved goal (B, D) from raw obs, in the goal's
        own units (metres); for analyses (acting reads it inside the encoder)."""
        if self.critic_encoder.state_head is None:
            raise ValueError("no state head: the run had --aux-coef 0 and --state-estimate off")
        parts = self.critic_encoder.parts(self.normalizer(obs))
        return self._estimate_in_goal_units(parts[PIXELS])

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
        self.load_state_dict(state["networks"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        if self.alpha_optimizer is not None:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])

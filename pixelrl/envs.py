"""Fetch tasks as the observations pixelrl learns from.

Each env, in its own worker process (`pixelrl.vector_env`) with its own MuJoCo EGL context,
returns ONE frame per step as uint8 (3, H, W) together with the robot's proprioception and both
goal vectors. Frame stacking for acting happens on the learner side
(`pixelrl.frame_stack.FrameStack`, on the learner's device); the replay stores single frames
too. This module does not import torch, so the workers stay small.

What would silently break pixel HER, and where it is handled (here and in
`pixelrl.vector_env`):
- EGL across fork: workers start with `spawn` (or forkserver); nothing renders in the parent.
- Autoreset: workers reset in the same step an episode ends and hand back the true final
  observation as `next_obs` and the new episode's first observation as `obs`, so no stored
  transition ever crosses an episode boundary.
- The goal marker (site target0) is hidden from the camera unless `show_goal`.
- Proprioception takes the robot-only entries of the Fetch state vector, never the object's.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

import gymnasium as gym
import numpy as np

from pixelrl.config import RESIZE_FROM, ConfigError, EnvConfig, validate_env_config

PIXELS = "pixels"
PROPRIOCEPTION = "proprioception"
STATE = "observation"
ACHIEVED_GOAL = "achieved_goal"
DESIRED_GOAL = "desired_goal"
# Not from the env: the state estimator's estimate of the achieved goal from the image, in the
# goal's units (metres), which the replay keeps beside each stored frame.
STATE_ESTIMATE = "state_estimate"

# Robot-only entries of the Fetch state vector. With an object (Push, Slide, PickAndPlace) the
# 25-D vector is grip_pos[0:3], object_pos[3:6], object_rel_pos[6:9], gripper_state[9:11],
# object_rot[11:14], object_velp[14:17], object_velr[17:20], grip_velp[20:23],
# gripper_vel[23:25]. Reach has no object: grip_pos, gripper_state, grip_velp, gripper_vel.
PROPRIO_INDICES_WITH_OBJECT = np.r_[0:3, 9:11, 20:23, 23:25]
PROPRIO_INDICES_NO_OBJECT = np.r_[0:3, 3:5, 5:8, 8:10]
# Within proprioception: the gripper's position, and its velocity times the env's dt (Fetch
# reports it so), i.e. about the displacement of the step that led to this observation.
PROPRIO_GRIP_POS, PROPRIO_GRIP_DISPLACEMENT = slice(0, 3), slice(5, 8)

_registered = False


# gymnasium-robotics prints a notice about the Adroit hand envs' rewards to stderr when it is
# imported, in every process (5 times per start with 4 workers); it does not concern Fetch.
_IGNORED_NOTICE = "AdroitHand"


def _register_fetch() -> None:
    global _registered
    if not _registered:
        with contextlib.redirect_stderr(io.StringIO()) as captured:
            import gymnasium_robotics
        for line in captured.getvalue().splitlines(keepends=True):
            if _IGNORED_NOTICE not in line:
                sys.stderr.write(line)
        gym.register_envs(gymnasium_robotics)
        _registered = True


def proprioception_indices(has_object: bool) -> np.ndarray:
    """Indices of grip_pos, gripper_state, grip_velp, gripper_vel in the Fetch state vector."""
    return PROPRIO_INDICES_WITH_OBJECT if has_object else PROPRIO_INDICES_NO_OBJECT


def policy_keys(obs_keys, goal_mode: str) -> list[str]:
    """The observation keys the networks see, in a fixed order.

    The env and the replay always carry achieved_goal and desired_goal (HER needs both);
    `goal_mode` decides which of them reach the networks.
    """
    goal_keys = {"none": [], "desired": [DESIRED_GOAL], "both": [ACHIEVED_GOAL, DESIRED_GOAL]}
    keys = [k for k in (PIXELS, PROPRIOCEPTION, STATE) if k in obs_keys]
    return keys + goal_keys[goal_mode]


def reward_params(env_id: str) -> tuple[float, str]:
    """(distance_threshold, reward_type) read from the env itself, for the torch reward."""
    _register_fetch()
    env = gym.make(env_id, disable_env_checker=True)
    try:
        return float(env.unwrapped.distance_threshold), str(env.unwrapped.reward_type)
    finally:
        env.close()


def max_episode_steps(env_id: str) -> int:
    _register_fetch()
    return int(gym.spec(env_id).max_episode_steps)


class FetchObservation(gym.Wrapper):
    """A Fetch env whose observation is the dict pixelrl learns from.

    Modes (EnvConfig):
      pixels (default): pixels uint8 (3, H, W) one frame, proprioception float32 (10,),
        achieved_goal float32 (3,), desired_goal float32 (3,); --no-proprioception drops
        proprioception
      full-state: observation float32 (25,) (the raw Fetch state) plus the goals
      no-pixels: proprioception plus the goals
    """

    def __init__(self, cfg: EnvConfig):
        validate_env_config(cfg)
        _register_fetch()
        self.cfg = cfg
        self.mode = cfg.obs_mode
        self.render_pixels = self.mode == "pixels"
        render_side = cfg.image_size if cfg.native_render else RESIZE_FROM
        make_kwargs = dict(disable_env_checker=True)
        if self.render_pixels:
            make_kwargs.update(
                render_mode="rgb_array",
                width=render_side,
                height=render_side,
                default_camera_config={
                    "distance": cfg.camera_distance,
                    "azimuth": cfg.camera_azimuth,
                    "elevation": cfg.camera_elevation,
                    "lookat": np.asarray(cfg.camera_lookat, dtype=np.float64),
                },
            )
        super().__init__(gym.make(cfg.env_id, **make_kwargs))
        base = self.env.unwrapped
        self._proprio_idx = proprioception_indices(bool(base.has_object))
        self._egl_checked = False
        if self.render_pixels:
            self._configure_camera(base)
            if not cfg.show_goal:
                import mujoco

                site = mujoco.mj_name2id(base.model, mujoco.mjtObj.mjOBJ_SITE, "target0")
                base.model.site_rgba[site, 3] = 0.0  # transparent: the marker is not drawn

        state_dim = base.observation_space[STATE].shape[0]
        goal_dim = base.observation_space[DESIRED_GOAL].shape[0]
        spaces: dict[str, gym.Space] = {}
        if self.render_pixels:
            side = cfg.image_size
            spaces[PIXELS] = gym.spaces.Box(0, 255, (3, side, side), np.uint8)
        if self.mode == "full-state":
            spaces[STATE] = gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)
        elif cfg.proprioception:
            spaces[PROPRIOCEPTION] = gym.spaces.Box(
                -np.inf, np.inf, (len(self._proprio_idx),), np.float32
            )
        spaces[ACHIEVED_GOAL] = gym.spaces.Box(-np.inf, np.inf, (goal_dim,), np.float32)
        spaces[DESIRED_GOAL] = gym.spaces.Box(-np.inf, np.inf, (goal_dim,), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)

    def _configure_camera(self, base) -> None:
        if self.cfg.camera == "free":
            return
        import mujoco

        cam = mujoco.mj_name2id(base.model, mujoco.mjtObj.mjOBJ_CAMERA, self.cfg.camera)
        if cam < 0:
            names = ["free"] + [base.model.camera(i).name for i in range(base.model.ncam)]
            raise ConfigError(f"--camera {self.cfg.camera!r}: choose one of {', '.join(names)}")
        base.mujoco_renderer.camera_id = cam

    def render_frame(self) -> np.ndarray:
        """The current camera image as uint8 (3, H, W)."""
        try:
            frame = self.env.render()
        except Exception as err:
            if self._egl_checked:
                raise
            backend = os.environ.get("MUJOCO_GL", "")
            raise RuntimeError(
                f"MuJoCo could not render with MUJOCO_GL={backend!r} ({type(err).__name__}: "
                f"{err}). EGL needs libEGL and a GPU driver or Mesa; on a machine without EGL, "
                "install OSMesa and set MUJOCO_GL=osmesa."
            ) from err
        self._egl_checked = True
        if not self.cfg.native_render:
            from PIL import Image

            side = self.cfg.image_size
            frame = np.asarray(Image.fromarray(frame).resize((side, side), Image.BILINEAR))
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def observe(self, raw: dict) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.render_pixels:
            out[PIXELS] = self.render_frame()
        state = raw[STATE]
        if self.mode == "full-state":
            out[STATE] = state.astype(np.float32)
        elif self.cfg.proprioception:
            out[PROPRIOCEPTION] = state[self._proprio_idx].astype(np.float32)
        out[ACHIEVED_GOAL] = raw[ACHIEVED_GOAL].astype(np.float32)
        out[DESIRED_GOAL] = raw[DESIRED_GOAL].astype(np.float32)
        return out

    def reset(self, **kwargs):
        raw, info = self.env.reset(**kwargs)
        return self.observe(raw), info

    def step(self, action):
        raw, reward, terminated, truncated, info = self.env.step(action)
        return self.observe(raw), reward, terminated, truncated, info

    # Exact resume: the full simulator state of an env, so that a resumed run continues the
    # very same episode. Fetch's reset does not clear everything (the gripper's mocap target
    # carries over between episodes), hence the whole MuJoCo integration state, not a seed.
    def get_sim_state(self) -> dict:
        import mujoco

        base = self.env.unwrapped
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(base.model, spec))
        mujoco.mj_getState(base.model, base.data, physics, spec)
        return {
            "physics": physics,
            "goal": base.goal.copy(),
            "elapsed_steps": self._time_limit()._elapsed_steps,
            "rng": base.np_random.bit_generator.state,
        }

    def set_sim_state(self, state: dict) -> dict[str, np.ndarray]:
        """Restore `get_sim_state` output (after a reset) and return the observation there."""
        import mujoco

        base = self.env.unwrapped
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        mujoco.mj_setState(base.model, base.data, np.asarray(state["physics"]), spec)
        mujoco.mj_forward(base.model, base.data)
        base.goal = np.asarray(state["goal"]).copy()
        self._time_limit()._elapsed_steps = state["elapsed_steps"]
        base.np_random.bit_generator.state = state["rng"]
        return self.observe(base._get_obs())

    def _time_limit(self) -> gym.wrappers.TimeLimit:
        env = self.env
        while not isinstance(env, gym.wrappers.TimeLimit):
            env = env.env
        return env

    # A larger view for videos (eval.py), rendered in the process that owns the env.
    _view = None

    def render_view(self, size: int = 480) -> np.ndarray:
        """A larger (size, size, 3) uint8 image of the same camera, goal marker drawn (for
        videos, not for the agent)."""
        import mujoco

        base = self.env.unwrapped
        if self._view is None:
            base.model.vis.global_.offwidth = max(base.model.vis.global_.offwidth, size)
            base.model.vis.global_.offheight = max(base.model.vis.global_.offheight, size)
            self._view = mujoco.Renderer(base.model, size, size)
            self._view_camera = mujoco.MjvCamera()
            cfg = self.cfg
            if cfg.camera == "free":
                self._view_camera.type = mujoco.mjtCamera.mjCAMERA_FREE
                self._view_camera.lookat[:] = cfg.camera_lookat
                self._view_camera.distance = cfg.camera_distance
                self._view_camera.azimuth = cfg.camera_azimuth
                self._view_camera.elevation = cfg.camera_elevation
            else:
                self._view_camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
                self._view_camera.fixedcamid = mujoco.mj_name2id(
                    base.model, mujoco.mjtObj.mjOBJ_CAMERA, cfg.camera
                )
        site = mujoco.mj_name2id(base.model, mujoco.mjtObj.mjOBJ_SITE, "target0")
        alpha = base.model.site_rgba[site, 3]
        base._render_callback()  # place the marker at the current goal
        base.model.site_rgba[site, 3] = 1.0
        try:
            self._view.update_scene(base.data, camera=self._view_camera)
            return self._view.render().copy()
        finally:
            base.model.site_rgba[site, 3] = alpha

    def close(self):
        if self._view is not None:
            self._view.close()
            self._view = None
        super().close()


def make_fetch_env(cfg: EnvConfig) -> FetchObservation:
    """Build one env; runs inside a worker process of `pixelrl.vector_env.FetchVectorEnv`.

    MUJOCO_GL defaults to egl. It is read when the first frame is rendered, so setting the
    default here (in the worker, before any render) is enough.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    return FetchObservation(cfg)

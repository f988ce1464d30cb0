import os

# Entry-point setting for the test process and the workers it spawns.
os.environ.setdefault("MUJOCO_GL", "egl")

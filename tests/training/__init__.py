import os

# Idle OpenMP threads spin by default; on a shared 2-core box that makes small torch ops 10-40× slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
